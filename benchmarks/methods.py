"""Method comparison: per-exit test accuracy of every training objective.

  python benchmarks/methods.py --data=digits --settings=full,limited \
      --methods=ce,sdn,byot,pl,pl_semisup,eed,mate,erde --seeds=0,1,2 \
      --epochs=full=10,limited=100

For every (setting, method, seed) it trains one run in
`<workroot>/<data>/<setting>/<method>/seed<k>` with
`mexd.train.train_and_evaluate`, then writes

* `<out>/methods_<data>.json`: every run's per-exit val/test accuracy, step
  count and wall-clock, the mean +- std over seeds per exit, the anytime and
  budgeted-batch curves of one seed, the exact command, git commit and date;
* `docs/results_<data>.md`: one Markdown table per setting (rows = methods,
  columns = exits, "mean ± std" test accuracy in %);
* `<out>/methods_<data>_<setting>_{exits,anytime,budget}.png`.

Settings: "full" is the data set's default config; "limited" its data-limited
variant (digits: 10 labeled images per class; Fashion-MNIST: 100). Methods
are `mexd.losses` names plus:

* pl_semisup: P&L that also distils on the unlabeled pool (limited only;
  plain "pl" in the limited setting sees the labeled images only);
* erde, kd: a student (digits: widths (16, 32, 64); Fashion-MNIST: the
  width-halved student) taught by the "ce" run of the same setting and seed
  (the full-size CE model is the teacher; it is trained first if "ce" was
  not asked for); "ce_student" (the student trained with CE) is added as
  their baseline.

The data split is fixed (config.data.split_seed = 0); a seed changes the
initialisation and the batch order. Resumable: a run whose workdir holds a
results.json for the same config is read back, not retrained; an unfinished
one resumes from its checkpoint.
"""

import concurrent.futures
import datetime
import json
import multiprocessing
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIGS = os.path.join(_ROOT, "configs")
_DATA = {"digits": "digits", "fashion_mnist": "fashion_mnist"}
_STUDENT_METHODS = ("ce_student", "kd", "erde")
_ORDER = ("ce", "sdn", "byot", "pl", "pl_semisup", "pl_const", "eed", "mate",
          "ce_student", "kd", "erde")

FLAGS = flags.FLAGS
flags.DEFINE_enum("data", "digits", list(_DATA), "Data set.")
flags.DEFINE_list("settings", ["full", "limited"], "full and/or limited.")
flags.DEFINE_list("methods", ["ce", "sdn", "byot", "pl", "pl_semisup", "eed",
                              "mate", "erde"],
                  "Methods (mexd.losses names, pl_semisup, ce_student).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
flags.DEFINE_string("epochs", "", "Epoch override: N for every setting, or "
                    "'full=N,limited=M' (empty: the config's default).")
flags.DEFINE_string("out", os.path.join(_ROOT, "benchmarks", "results"),
                    "Folder of the JSON and PNG outputs.")
flags.DEFINE_string("docs", os.path.join(_ROOT, "docs"),
                    "Folder of results_<data>.md.")
flags.DEFINE_string("workroot", "/tmp/mexd-methods", "Run directories.")
flags.DEFINE_integer("jobs", 1, "Runs trained in parallel processes.")
flags.DEFINE_bool("kd", True, "With erde, also run plain KD (kd).")
flags.DEFINE_bool("curves", True, "Anytime and budgeted-batch curves.")
flags.DEFINE_bool("report_only", False, "Train nothing: report the finished "
                  "runs of the sweep and list the others as missing.")
flags.DEFINE_integer("curve_seed", None, "Seed of the curves (default: the "
                     "first of --seeds).")


# ----------------------------------------------------------------------------
# Configs and runs.


def parse_epochs(spec: str) -> Dict[str, int]:
  """'10' -> {"*": 10}; 'full=10,limited=100' -> {"full": 10, ...}."""
  if not spec:
    return {}
  if "=" not in spec:
    return {"*": int(spec)}
  out = {}
  for item in spec.split(","):
    key, _, value = item.partition("=")
    if key not in ("full", "limited"):
      raise ValueError(f"--epochs: unknown setting {key!r}")
    out[key] = int(value)
  return out


def expand_methods(methods: Sequence[str], setting: str,
                   with_kd: bool = True) -> List[str]:
  """The rows of one setting, in table order (teacher-student extras added).

  pl_semisup is dropped in the full setting (there is no unlabeled pool).
  """
  rows = [m for m in methods if not (m == "pl_semisup" and setting == "full")]
  if "erde" in rows or "kd" in rows:
    rows += ["ce_student"] + (["kd"] if with_kd else [])
  rows = list(dict.fromkeys(rows))
  return sorted(rows, key=lambda m: (_ORDER.index(m) if m in _ORDER
                                     else len(_ORDER), m))


def make_config(data: str, setting: str, method: str, seed: int,
                epochs: Optional[int] = None,
                teacher_workdir: Optional[str] = None):
  """The run config of one benchmark row (see the module docstring)."""
  from mexd import config_lib  # pylint: disable=g-import-not-at-top
  limited = setting == "limited"
  student = method in _STUDENT_METHODS
  mexd_method = {"pl_semisup": "pl", "ce_student": "ce"}.get(method, method)
  semisup = method == "pl_semisup"
  if semisup and not limited:
    raise ValueError("pl_semisup needs the limited setting")
  module = config_lib.load_sibling(os.path.join(_CONFIGS, "x.py"),
                                   _DATA[data])
  if data == "digits":
    c = module.get_config(f"limited={limited}")
    c.method = mexd_method
    if limited and not semisup:  # Labeled images only.
      c.data.unlabeled_pool = False
      c.data.unlabeled_batch = 0
    if student:
      c.model.kwargs.widths = (16, 32, 64)
  else:
    c = module.get_config(f"method={mexd_method},limited={limited},"
                          f"semisup={semisup},student={student}")
  if epochs:
    c.num_epochs = int(epochs)
  c.eval_every_epochs = max(c.num_epochs, 1)  # Only the final evaluation.
  c.seed = int(seed)
  c.progress_bar = False
  c.num_devices = 1
  if mexd_method in ("erde", "kd"):
    c.teacher_workdir = teacher_workdir
  return c


def run_dir(workroot: str, data: str, setting: str, method: str,
            seed: int) -> str:
  return os.path.join(workroot, data, setting, method, f"seed{seed}")


def _same_config(workdir: str, config) -> bool:
  from mexd import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    old = json.load(f)
  return not workdir_lib.config_diff(old, workdir_lib.config_to_dict(config))


def _save_logits(workdir: str, config) -> Dict[str, Any]:
  """Writes workdir/logits.npz (val/test logits) and returns per-exit MACs."""
  from mexd import data as data_lib  # pylint: disable=g-import-not-at-top
  from mexd import sharding  # pylint: disable=g-import-not-at-top
  from mexd import train  # pylint: disable=g-import-not-at-top
  from mexd import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from mexd.models import costs  # pylint: disable=g-import-not-at-top
  splits, _ = data_lib.load_splits(config.data)
  tr = splits["train"]
  model = train.build_model(config, tr.num_classes)
  variables = workdir_lib.load_variables(workdir)
  predictor = train.Predictor(model, tr.mean, tr.std, sharding.make_mesh(1),
                              500, train.compute_dtype(config),
                              tr.image_shape)
  np.savez_compressed(
      os.path.join(workdir, "logits.npz"),
      val=predictor.logits(variables, splits["val"]),
      val_labels=splits["val"].labels,
      test=predictor.logits(variables, splits["test"]),
      test_labels=splits["test"].labels)
  try:
    rows = costs.exit_costs(model, variables, tr.image_shape, cascade=True)
  except TypeError:  # Older costs.exit_costs without `cascade`.
    rows = costs.exit_costs(model, variables, tr.image_shape)
  return {"exit_macs": [float(r["macs"]) for r in rows],
          "params": int(sum(np.prod(np.shape(a)) for a in
                            _leaves(variables.get("params", variables))))}


def _leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.leaves(tree)


def run_one(task: Dict[str, Any]) -> Dict[str, Any]:
  """Trains (or reads back) one (setting, method, seed); returns its record.

  `task` holds data, setting, method, seed, epochs, workroot, teacher_workdir
  and want_logits. Errors are recorded, not raised, so a sweep goes on.
  """
  rec = {k: task[k] for k in ("setting", "method", "seed")}
  rec["table_row"] = task.get("table_row", True)
  workdir = run_dir(task["workroot"], task["data"], task["setting"],
                    task["method"], task["seed"])
  rec["workdir"] = workdir
  try:
    config = make_config(task["data"], task["setting"], task["method"],
                         task["seed"], task["epochs"],
                         task.get("teacher_workdir"))
    bench_path = os.path.join(workdir, "bench.json")
    results_path = os.path.join(workdir, "results.json")
    done = (os.path.exists(results_path) and os.path.exists(bench_path)
            and _same_config(workdir, config))
    if done:
      with open(bench_path) as f:
        bench = json.load(f)
      rec["reused"] = True
    elif task.get("report_only"):
      raise RuntimeError("not run (--report_only; out of time budget)")
    else:
      from mexd import train  # pylint: disable=g-import-not-at-top
      t0 = time.time()
      train.train_and_evaluate(config, workdir, overwrite=True)
      bench = {"wall_seconds": time.time() - t0}
      rec["reused"] = False
    if task.get("want_logits") and "exit_macs" not in bench:
      bench.update(_save_logits(workdir, config))
    with open(bench_path, "w") as f:
      json.dump(bench, f, indent=2)
    with open(results_path) as f:
      res = json.load(f)
    rec.update(
        mexd_method=config.method, epochs=config.num_epochs,
        model_widths=list(config.model.kwargs.get("widths", ())) or None,
        test_acc=res["test"]["acc"], val_acc=res["val"]["acc"],
        test_ens_acc=res["test"]["ens_acc"], steps=res["steps"],
        train_seconds=res["train_seconds"],
        wall_seconds=bench["wall_seconds"],
        skipped_steps=res.get("skipped_steps", 0),
        exit_macs=bench.get("exit_macs"), params=bench.get("params"))
  except Exception as e:  # pylint: disable=broad-except
    rec["error"] = f"{type(e).__name__}: {e}"
    print(f"[methods] {rec['setting']}/{rec['method']}/seed{rec['seed']} "
          f"failed: {rec['error']}", flush=True)
  return rec


def plan(data: str, settings: Sequence[str], methods: Sequence[str],
         seeds: Sequence[int], epochs: Dict[str, int], workroot: str,
         curve_seed: int, with_kd: bool = True) -> List[Dict]:
  """Every task of the sweep, seed-major (all rows of seed 0 come first).

  A task with a teacher (erde, kd) names it in "teacher_workdir"; `run_tasks`
  starts it once the teacher run (ce of the same setting and seed) is done.
  """
  tasks = []
  for seed in seeds:
    for setting in settings:
      rows = expand_methods(methods, setting, with_kd)
      runs = list(rows)
      if any(m in ("erde", "kd") for m in rows) and "ce" not in runs:
        runs.insert(0, "ce")  # The teacher (not a table row then).
      for method in runs:
        task = dict(data=data, setting=setting, method=method, seed=seed,
                    epochs=epochs.get(setting, epochs.get("*")),
                    workroot=workroot, want_logits=seed == curve_seed,
                    teacher_workdir=None, table_row=method in rows)
        if method in ("erde", "kd"):
          task["teacher_workdir"] = run_dir(workroot, data, setting, "ce",
                                            seed)
        tasks.append(task)
  return tasks


def run_tasks(tasks: List[Dict], jobs: int, on_done) -> List[Dict]:
  """Runs tasks in order, `jobs` at a time (spawned processes if jobs > 1).

  A task with a teacher_workdir waits until the task that trains that
  workdir has finished (tasks of other teachers go ahead meanwhile).
  """
  def workdir(t):
    return run_dir(t["workroot"], t["data"], t["setting"], t["method"],
                   t["seed"])
  trained_here = {workdir(t) for t in tasks}
  done_dirs, records = set(), []

  def ready(t):
    w = t.get("teacher_workdir")
    return not w or w not in trained_here or w in done_dirs

  pending = list(tasks)
  if jobs <= 1:
    while pending:
      t = next((t for t in pending if ready(t)), pending[0])
      pending.remove(t)
      records.append(run_one(t))
      done_dirs.add(workdir(t))
      on_done(records[-1])
    return records
  ctx = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
    running = {}
    while pending or running:
      while len(running) < jobs:
        t = next((t for t in pending if ready(t)), None)
        if t is None:
          break
        pending.remove(t)
        running[pool.submit(run_one, t)] = t
      finished, _ = concurrent.futures.wait(
          running, return_when=concurrent.futures.FIRST_COMPLETED)
      for fut in finished:
        t = running.pop(fut)
        records.append(fut.result())
        done_dirs.add(workdir(t))
        on_done(records[-1])
  return records


# ----------------------------------------------------------------------------
# Aggregation and reports.


def aggregate(values: Sequence[Sequence[float]]) -> Dict[str, Any]:
  """Per-exit mean and sample std (ddof=1; 0 for one seed) over seeds.

  Args:
    values: [S][E] accuracies of S seeds.

  Returns:
    {"mean": [E], "std": [E], "n": S}.
  """
  a = np.asarray(values, np.float64)
  if a.ndim != 2 or a.shape[0] == 0:
    raise ValueError(f"values must be [seeds, exits], got shape {a.shape}")
  std = a.std(0, ddof=1) if a.shape[0] > 1 else np.zeros(a.shape[1])
  return {"mean": a.mean(0).tolist(), "std": std.tolist(), "n": a.shape[0]}


def format_cell(mean: float, std: float, n: int, digits: int = 1) -> str:
  """'97.3 ± 0.4' in percent (no ± part for a single seed)."""
  if n <= 1:
    return f"{100 * mean:.{digits}f}"
  return f"{100 * mean:.{digits}f} ± {100 * std:.{digits}f}"


def aggregate_records(records: Sequence[Dict]) -> Dict[str, Dict]:
  """{setting: {method: {test_acc, val_acc: aggregate(), steps, ...}}}."""
  out: Dict[str, Dict] = {}
  for r in records:
    if "error" in r or not r.get("table_row", True):
      continue
    out.setdefault(r["setting"], {}).setdefault(r["method"], []).append(r)
  agg = {}
  for setting, by_method in out.items():
    agg[setting] = {}
    for method in sorted(by_method, key=lambda m: (
        _ORDER.index(m) if m in _ORDER else len(_ORDER), m)):
      rs = sorted(by_method[method], key=lambda r: r["seed"])
      agg[setting][method] = {
          "seeds": [r["seed"] for r in rs],
          "test_acc": aggregate([r["test_acc"] for r in rs]),
          "val_acc": aggregate([r["val_acc"] for r in rs]),
          "steps": rs[0]["steps"], "epochs": rs[0].get("epochs"),
          "train_seconds_mean": float(np.mean([r["train_seconds"]
                                               for r in rs])),
          "wall_seconds_mean": float(np.mean([r["wall_seconds"]
                                              for r in rs])),
          "student": method in _STUDENT_METHODS}
  return agg


def markdown_table(agg_setting: Dict[str, Dict], digits: int = 1) -> str:
  """Rows = methods, columns = exits ("mean ± std" test accuracy, %)."""
  num_exits = max(len(a["test_acc"]["mean"]) for a in agg_setting.values())
  head = (["method"] + [f"exit {k}" for k in range(num_exits)]
          + ["seeds", "steps", "train s / run"])
  lines = ["| " + " | ".join(head) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
  for method, a in agg_setting.items():
    t = a["test_acc"]
    cells = [format_cell(m, s, t["n"], digits)
             for m, s in zip(t["mean"], t["std"])]
    cells += [""] * (num_exits - len(cells))
    name = f"{method} (student)" if a.get("student") else method
    lines.append("| " + " | ".join(
        [name] + cells + [str(t["n"]), str(a["steps"]),
                          f"{a['train_seconds_mean']:.0f}"]) + " |")
  return "\n".join(lines)


def curves_for(records: Sequence[Dict], curve_seed: int) -> Dict[str, Dict]:
  """Anytime and budgeted-batch (MSDNet, max-prob) curves of one seed."""
  from mexd import early_exit as ee  # pylint: disable=g-import-not-at-top
  out: Dict[str, Dict] = {}
  for r in records:
    if ("error" in r or r["seed"] != curve_seed or not r.get("exit_macs")
        or not r.get("table_row", True)):
      continue
    path = os.path.join(r["workdir"], "logits.npz")
    if not os.path.exists(path):
      continue
    z = np.load(path)
    macs = np.asarray(r["exit_macs"], np.float64)
    ps, th = ee.msdnet_sweep(z["val"], policy="max_prob")
    c = ee.evaluate_curve(z["test"], z["test_labels"], th, "max_prob", macs)
    out.setdefault(r["setting"], {})[r["method"]] = {
        "seed": curve_seed, "exit_macs": macs.tolist(),
        "anytime_test_acc": list(map(float, r["test_acc"])),
        "budgeted": {"p": np.asarray(ps).tolist(),
                     "avg_macs": np.asarray(c["avg_cost"]).tolist(),
                     "test_acc": np.asarray(c["accuracy"]).tolist()}}
  return out


def write_plots(data: str, agg: Dict, curves: Dict, out: str) -> List[str]:
  from mexd import early_exit as ee  # pylint: disable=g-import-not-at-top
  paths = []
  for setting, by_method in agg.items():
    stem = os.path.join(out, f"methods_{data}_{setting}")
    paths.append(ee.plot_exit_accuracy(
        {m: a["test_acc"]["mean"] for m, a in by_method.items()},
        f"{stem}_exits.png",
        title=f"{data} ({setting}): per-exit test accuracy, mean of "
        "seeds", ylabel="test accuracy"))
    cs = curves.get(setting, {})
    if cs:
      paths.append(ee.plot_accuracy_cost(
          {m: (c["exit_macs"], c["anytime_test_acc"]) for m, c in cs.items()},
          f"{stem}_anytime.png", xlabel="MACs per image (up to the exit)",
          ylabel="test accuracy",
          title=f"{data} ({setting}): anytime, seed "
          f"{next(iter(cs.values()))['seed']}"))
      paths.append(ee.plot_accuracy_cost(
          {m: (c["budgeted"]["avg_macs"], c["budgeted"]["test_acc"])
           for m, c in cs.items()},
          f"{stem}_budget.png", xlabel="average MACs per image",
          ylabel="test accuracy",
          title=f"{data} ({setting}): budgeted batch (max-prob), seed "
          f"{next(iter(cs.values()))['seed']}"))
  return paths


def git_commit() -> Dict[str, Any]:
  def git(*args):
    return subprocess.run(["git", *args], cwd=_ROOT, capture_output=True,
                          text=True, check=False).stdout.strip()
  return {"commit": git("rev-parse", "HEAD"),
          "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def hardware() -> Dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f
                 if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {"cpu": cpu, "cpu_count": os.cpu_count(),
          "jax_devices": [str(d) for d in jax.devices()],
          "jax": jax.__version__, "python": platform.python_version()}


_NOTES_MARK = "<!-- notes: kept when the file is regenerated -->"


def write_markdown(path: str, report: Dict[str, Any]) -> str:
  """docs/results_<data>.md; text after the notes marker is kept."""
  notes = ""
  if os.path.exists(path):
    with open(path) as f:
      text = f.read()
    if _NOTES_MARK in text:
      notes = text.split(_NOTES_MARK, 1)[1].strip("\n")
  data, hw = report["data"], report["hardware"]
  lines = [
      f"# Method comparison on {data}", "",
      "Per-exit **test** accuracy (%), mean ± sample std (ddof=1) over "
      "seeds; exit 0 is the shallowest. Generated by "
      "`benchmarks/methods.py`; raw numbers in "
      f"`benchmarks/results/methods_{data}.json`.", "",
      "Regenerate (finished runs in the workroot are reused):", "",
      "```bash", report["command"], "```", "",
      f"- git commit: `{report['git']['commit']}`"
      + (" (with uncommitted changes)" if report["git"]["dirty"] else ""),
      f"- date: {report['date']}",
      f"- hardware: {hw['cpu']}, {hw['cpu_count']} CPU cores (shared with "
      f"other jobs), jax {hw['jax']} on {', '.join(hw['jax_devices'])}",
      f"- wall-clock: {report['sum_run_wall_seconds'] / 60:.1f} min summed "
      "over the runs (each run's own wall-clock incl. compilation; runs went "
      f"{report['flags'].get('jobs', 1)} at a time)"
      + ("" if report["flags"].get("report_only") else
         f"; this invocation {report['sweep_wall_seconds'] / 60:.1f} min"),
      "- the data split is fixed (split_seed 0); seeds change the "
      "initialisation and batch order", ""]
  for setting, by_method in report["aggregates"].items():
    ep = sorted({a["epochs"] for a in by_method.values()})
    lines += [f"## Setting: {setting}", "",
              f"Epochs: {', '.join(map(str, ep))}. {_SETTING_TEXT[data].get(setting, '')}",
              "", markdown_table(by_method), ""]
    for kind, what in (("exits", "per-exit accuracy"),
                       ("anytime", "anytime accuracy vs MACs"),
                       ("budget", "budgeted batch")):
      png = f"methods_{data}_{setting}_{kind}.png"
      if os.path.exists(os.path.join(report["out"], png)):
        rel = os.path.relpath(os.path.join(report["out"], png),
                              os.path.dirname(path))
        lines.append(f"![{what}]({rel})")
    lines.append("")
  missing = report.get("missing", [])
  if missing:
    lines += ["## Missing / failed runs", ""]
    lines += [f"- {m}" for m in missing] + [""]
  lines += [_NOTES_MARK, notes, ""] if notes else [_NOTES_MARK, ""]
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


_SETTING_TEXT = {
    "digits": {
        "full": "All 1,258 labeled training images (val 180, test 359 of "
                "sklearn's 1,797 8x8 digits); full model widths "
                "(32, 64, 128), students (16, 32, 64).",
        "limited": "10 labeled images per class (100 in all); pl_semisup "
                   "also distils on the unlabeled rest (32 of every 64-image "
                   "batch), every other method sees the 100 labeled images "
                   "only."},
    "fashion_mnist": {
        "full": "55,000 training images (val 5,000, test 10,000); 4-exit "
                "small_cnn widths (16, 32, 64, 128), students "
                "(8, 16, 32, 64).",
        "limited": "100 labeled images per class; pl_semisup also distils "
                   "on 64 unlabeled images of every 128-image batch."}}


def build_report(records, args: Dict[str, Any], wall: float,
                 curve_seed: int, want_curves: bool) -> Dict[str, Any]:
  agg = aggregate_records(records)
  curves = {}
  if want_curves:
    try:
      curves = curves_for(records, curve_seed)
    except Exception as e:  # pylint: disable=broad-except
      print(f"[methods] curves skipped: {type(e).__name__}: {e}")
  missing = [f"{r['setting']}/{r['method']}/seed{r['seed']}: {r['error']}"
             for r in records if "error" in r]
  return {
      "data": args["data"], "command": args["command"],
      "git": git_commit(), "hardware": hardware(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "flags": args["flags"], "out": args["out"],
      "sweep_wall_seconds": wall,
      "sum_run_wall_seconds": float(sum(r.get("wall_seconds", 0.0)
                                        for r in records)),
      "runs": sorted(records, key=lambda r: (r["setting"], r["method"],
                                             r["seed"])),
      "aggregates": agg, "curves": curves, "missing": missing}


def write_outputs(report: Dict[str, Any], docs: str,
                  plots: bool = True) -> None:
  out, data = report["out"], report["data"]
  os.makedirs(out, exist_ok=True)
  if plots:
    try:
      report["plots"] = [os.path.basename(p) for p in write_plots(
          data, report["aggregates"], report["curves"], out)]
    except Exception as e:  # pylint: disable=broad-except
      print(f"[methods] plots skipped: {type(e).__name__}: {e}")
  with open(os.path.join(out, f"methods_{data}.json"), "w") as f:
    json.dump(report, f, indent=1)
  write_markdown(os.path.join(docs, f"results_{data}.md"), report)


def main(argv):
  del argv
  seeds = [int(s) for s in FLAGS.seeds]
  curve_seed = seeds[0] if FLAGS.curve_seed is None else FLAGS.curve_seed
  epochs = parse_epochs(FLAGS.epochs)
  for s in FLAGS.settings:
    if s not in ("full", "limited"):
      raise app.UsageError(f"unknown setting {s!r}")
  tasks = plan(FLAGS.data, FLAGS.settings, FLAGS.methods, seeds, epochs,
               FLAGS.workroot, curve_seed, FLAGS.kd)
  for t in tasks:
    t["report_only"] = FLAGS.report_only
  args = {"data": FLAGS.data, "out": FLAGS.out,
          "command": "python " + " ".join(
              shlex.quote(a) for a in sys.argv
              if a not in ("--report_only", "--report_only=true")),
          "flags": {f: FLAGS[f].value for f in (
              "data", "settings", "methods", "seeds", "epochs", "workroot",
              "jobs", "kd", "report_only")}}
  t0 = time.time()
  records: List[Dict] = []
  total = len(tasks)

  def on_done(rec):
    records.append(rec)
    state = ("error" if "error" in rec else
             "reused" if rec.get("reused") else
             f"{rec['wall_seconds']:.0f}s")
    acc = " ".join(f"{100 * a:.1f}" for a in rec.get("test_acc", []))
    print(f"[methods] {len(records)}/{total} {rec['setting']}/"
          f"{rec['method']}/seed{rec['seed']}: {state} test acc {acc} "
          f"(sweep {time.time() - t0:.0f}s)", flush=True)
    # Partial results survive an interrupted sweep (no curves/plots yet).
    write_outputs(build_report(records, args, time.time() - t0, curve_seed,
                               False), FLAGS.docs, plots=False)

  run_tasks(tasks, FLAGS.jobs, on_done)
  report = build_report(records, args, time.time() - t0, curve_seed,
                        FLAGS.curves)
  write_outputs(report, FLAGS.docs)
  print(f"[methods] wrote {FLAGS.out}/methods_{FLAGS.data}.json and "
        f"{FLAGS.docs}/results_{FLAGS.data}.md in {time.time() - t0:.0f}s")


if __name__ == "__main__":
  app.run(main)
