"""Method comparison: per-exit accuracy of every training objective, with
paired confidence intervals and the seed papers' claims.

  python benchmarks/methods.py --protocol=fashion_mnist_limited   # 5 seeds
  python benchmarks/methods.py --protocol=fashion_mnist_full      # 3 seeds
  python benchmarks/methods.py --protocol=digits                  # 5 seeds

A protocol fixes the data set, settings, methods, seeds and budget (see
PROTOCOLS); any flag given explicitly overrides it. For every (setting,
method, seed) one run is trained in
`<workroot>/<name>/<setting>/<method>/seed<k>` with
`mexd.train.train_and_evaluate`, then the script writes

* `<out>/methods_<name>.json`: every run's per-exit val/test accuracy, steps
  and wall-clock; per method the mean +- std over seeds and the paired
  difference to its reference (CE; students: the CE-trained student) with a
  95 % Student-t interval; the claims table (benchmarks/claims.py); the
  anytime and budgeted-batch curves of every seed with their mean and
  spread; the exact command, git commit, date and hardware;
* `docs/results_<name>.md`: the tables and the claims;
* `<out>/methods_<name>_<setting>_{exits,diff,anytime,budget}.png`.

Settings: "full" is the recipe's default data; "limited" its data-limited
variant (digits: 10 labeled images per class; Fashion-MNIST: 100; the rest
of train is the unlabeled pool). In the limited setting the labeled subset
is drawn per seed (config.data.split_seed = seed), so which images are
labeled is part of the seed-to-seed spread and of the pairing. Rows are
`mexd.losses` names plus:

* pl_semisup: P&L that also distils on the unlabeled pool, at the recipe's
  epochs counted over labeled images (twice the optimizer steps of the
  labeled-only runs, as half of every batch is unlabeled);
* pl_semisup_eqsteps: the same with the epochs scaled so that it takes as
  many optimizer steps as the labeled-only runs;
* erde, kd: the student network (digits: widths (16, 32, 64); Fashion-MNIST:
  half width) taught by a converged CE teacher of the same setting and seed
  ("ce_teacher", trained first; `--teacher_epochs`, default the recipe's
  full budget), whose own accuracy is a row of the table; "ce_student" (the
  student trained with CE) is added as their baseline.

Resumable: a run whose workdir holds a results.json of the same config is
read back, not retrained; an unfinished one resumes from its checkpoint. A
study can therefore span several sittings: rerun the same command.
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import claims as claims_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

_DATA = ("digits", "fashion_mnist")
_STUDENT_METHODS = ("ce_student", "kd", "erde")
_TEACHER = "ce_teacher"
_ORDER = ("ce", "sdn", "byot", "pl", "pl_semisup", "pl_semisup_eqsteps",
          "pl_const", "eed", "mate", _TEACHER, "ce_student", "kd", "erde")
_ALL = ("ce", "sdn", "byot", "pl", "pl_semisup", "pl_semisup_eqsteps", "eed",
        "mate", "erde", "kd")

# Named studies. Flags given on the command line override these fields.
PROTOCOLS = {
    # The data-limited setting at the recipe's full budget (100 epochs over
    # the 1,000 labeled images, cosine schedule: validation accuracy rises
    # until the schedule ends, so the full budget is the converged one).
    "fashion_mnist_limited": dict(
        data="fashion_mnist", settings=["limited"], methods=list(_ALL),
        seeds=["0", "1", "2", "3", "4"], epochs=""),
    # Full data at 5 of the recipe's 20 epochs (on 2 CPU cores one epoch is
    # ~2 min per run); the teacher of erde / kd at the full 20.
    "fashion_mnist_full": dict(
        data="fashion_mnist", settings=["full"], methods=list(_ALL),
        seeds=["0", "1", "2"], epochs="5", teacher_epochs=20,
        teacher_seed=0),
    # Both digits settings at the recipe's budgets (40 / 200 epochs).
    "digits": dict(data="digits", settings=["full", "limited"],
                   methods=list(_ALL), seeds=["0", "1", "2", "3", "4"],
                   epochs=""),
    # CI: every row and code path at a tiny budget.
    "smoke": dict(data="digits", settings=["full", "limited"],
                  methods=list(_ALL), seeds=["0", "1"], epochs="1",
                  teacher_epochs=1),
}

FLAGS = flags.FLAGS
flags.DEFINE_enum("protocol", None, list(PROTOCOLS), "A named study (sets "
                  "data, settings, methods, seeds, epochs, teacher_epochs; "
                  "explicit flags override it).")
flags.DEFINE_enum("data", "digits", list(_DATA), "Data set.")
flags.DEFINE_list("settings", ["full", "limited"], "full and/or limited.")
flags.DEFINE_list("methods", list(_ALL), "Methods (mexd.losses names, "
                  "pl_semisup, pl_semisup_eqsteps, ce_student).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
flags.DEFINE_string("epochs", "", "Epoch override: N for every setting, or "
                    "'full=N,limited=M' (empty: the config's default).")
flags.DEFINE_integer("teacher_epochs", None, "Epochs of the erde/kd teacher "
                     "(default: the recipe's full budget).")
flags.DEFINE_integer("teacher_seed", None, "One teacher of this seed for "
                     "every seed (default: each seed its own teacher).")
flags.DEFINE_string("model", "", "Model overrides for every run, e.g. "
                    "'head=conv,downsample=maxpool' (keys of the recipe's "
                    "model.kwargs; values are Python literals or strings).")
flags.DEFINE_list("set", [], "Config overrides for every run, e.g. "
                  "'loss.pl.global_scale=2' (dotted field=Python literal).")
flags.DEFINE_string("name", None, "Name of the study's outputs and workroot "
                    "folder (default: the protocol, else the data set).")
flags.DEFINE_string("ledger", os.path.join(_ROOT, "benchmarks", "results",
                                           "runs"),
                    "Folder of the per-run JSON records (<ledger>/<name>/...),"
                    " committed so that a study resumes on a fresh machine; "
                    "empty: none.")
flags.DEFINE_bool("split_per_seed", True, "Limited setting: draw the labeled "
                  "subset with the run's seed (else split_seed 0).")
flags.DEFINE_string("out", os.path.join(_ROOT, "benchmarks", "results"),
                    "Folder of the JSON and PNG outputs.")
flags.DEFINE_string("docs", os.path.join(_ROOT, "docs"),
                    "Folder of results_<name>.md.")
flags.DEFINE_string("workroot", "/tmp/mexd-methods", "Root of the run "
                    "directories (a study's runs go to <workroot>/<name>).")
flags.DEFINE_integer("jobs", 1, "Runs trained in parallel processes.")
flags.DEFINE_bool("kd", True, "With erde, also run plain KD (kd).")
flags.DEFINE_bool("curves", True, "Anytime and budgeted-batch curves.")
flags.DEFINE_bool("report_only", False, "Train nothing: report the finished "
                  "runs of the sweep and list the others as missing.")
flags.DEFINE_list("curve_seeds", None, "Seeds whose logits feed the curves "
                  "(default: every seed).")


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

  pl_semisup(_eqsteps) is dropped in the full setting (no unlabeled pool).
  """
  rows = [m for m in methods
          if not (m.startswith("pl_semisup") and setting == "full")]
  if "erde" in rows or "kd" in rows:
    rows += ["ce_student"] + (["kd"] if with_kd else [])
  rows = list(dict.fromkeys(rows))
  return sorted(rows, key=lambda m: (_ORDER.index(m) if m in _ORDER
                                     else len(_ORDER), m))


def parse_model(spec: str) -> Dict[str, Any]:
  """'head=conv,widths=(8, 16)' -> {"head": "conv", "widths": (8, 16)}."""
  import ast  # pylint: disable=g-import-not-at-top
  out = {}
  if not spec:
    return out
  # Split on commas outside brackets.
  depth, item, items = 0, "", []
  for ch in spec:
    depth += ch in "([" and 1 or ch in ")]" and -1 or 0
    if ch == "," and depth == 0:
      items.append(item)
      item = ""
    else:
      item += ch
  items.append(item)
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--model: expected key=value, got {item!r}")
    try:
      out[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      out[key.strip()] = value.strip()
  return out


def _steps_per_epoch(c) -> int:
  """Optimizer steps per epoch of a limited-setting config (10 classes)."""
  labeled = c.data.labeled_per_class * 10
  return labeled // (c.batch_size - c.data.unlabeled_batch)


def make_config(data: str, setting: str, method: str, seed: int,
                epochs: Optional[int] = None,
                teacher_workdir: Optional[str] = None,
                model: Optional[Dict[str, Any]] = None,
                split_per_seed: bool = True,
                overrides: Optional[Dict[str, Any]] = None):
  """The run config of one benchmark row (see the module docstring)."""
  from mexd import configs  # pylint: disable=g-import-not-at-top
  limited = setting == "limited"
  student = method in _STUDENT_METHODS
  mexd_method = {"pl_semisup": "pl", "pl_semisup_eqsteps": "pl",
                 "ce_student": "ce", _TEACHER: "ce"}.get(method, method)
  semisup = method.startswith("pl_semisup")
  if semisup and not limited:
    raise ValueError(f"{method} needs the limited setting")
  c = configs.load(data, f"method={mexd_method},setting={setting},"
                   f"semisup={semisup},student={student}")
  for k, v in (model or {}).items():
    if k == "widths" and student:
      continue  # The student keeps its own (halved) widths.
    c.model.kwargs[k] = v
  if epochs:
    c.num_epochs = int(epochs)
  if method == "pl_semisup_eqsteps":
    plain = configs.load(data, f"method=pl,setting={setting},semisup=False")
    plain_steps = _steps_per_epoch(plain) * c.num_epochs
    c.num_epochs = max(1, round(plain_steps / _steps_per_epoch(c)))
  for key, value in (overrides or {}).items():
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise ValueError(f"--set: unknown config field {key!r}")
    node[leaf] = value
  if limited and split_per_seed:
    c.data.split_seed = int(seed)
  c.eval_every_epochs = max(c.num_epochs, 1)  # Only the final evaluation.
  c.seed = int(seed)
  c.progress_bar = False
  c.num_devices = 1
  if mexd_method in ("erde", "kd"):
    c.teacher_workdir = teacher_workdir
  return c


def run_dir(workroot: str, setting: str, method: str, seed: int) -> str:
  """`<workroot>/<setting>/<method>/seed<k>` (workroot names the study)."""
  return os.path.join(workroot, setting, method, f"seed{seed}")


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
  from mexd import predict  # pylint: disable=g-import-not-at-top
  from mexd import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from mexd.models import costs  # pylint: disable=g-import-not-at-top
  splits, _ = data_lib.load_splits(config.data)
  tr = splits["train"]
  model = predict.build_model(config, tr.num_classes)
  variables = workdir_lib.load_variables(workdir)
  predictor = predict.Predictor(model, tr.mean, tr.std,
                                sharding.make_mesh(1), 500,
                                predict.compute_dtype(config), tr.image_shape)
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


def ledger_path(task: Dict[str, Any]) -> Optional[str]:
  """`<ledger>/<setting>/<method>/seed<k>.json`, or None without a ledger."""
  if not task.get("ledger"):
    return None
  return os.path.join(task["ledger"], task["setting"], task["method"],
                      f"seed{task['seed']}.json")


def ledger_config_diff(old: Any, new: Any, prefix: str = "") -> List[str]:
  """Dotted fields of the recorded config `old` whose value `new` changes.

  Fields of `new` that `old` lacks (config fields added after the run was
  recorded, which by convention default to the earlier behaviour) and unset
  (None) values are ignored; so are the fields a resumed run may change
  (mexd.workdir's resumable fields, e.g. the progress bar) and the teacher's
  work-directory path (machine-specific; the teacher is itself a ledger run
  of a fixed config).
  """
  from mexd import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for k, v in old.items():
      if v is None or (not prefix and (k in workdir_lib.RESUMABLE_FIELDS
                                       or k == "teacher_workdir")):
        continue
      out += ledger_config_diff(v, new.get(k), f"{prefix}{k}.")
    return out
  if isinstance(old, list) and isinstance(new, (list, tuple)):
    return [] if list(old) == list(new) else [prefix.rstrip(".")]
  return [] if old == new else [prefix.rstrip(".")]


def _read_ledger(task, config) -> Optional[Dict[str, Any]]:
  """The committed record of this run, if its config is the same."""
  from mexd import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  path = ledger_path(task)
  if not path or not os.path.exists(path):
    return None
  with open(path) as f:
    entry = json.load(f)
  if ledger_config_diff(entry["config"], workdir_lib.config_to_dict(config)):
    return None
  return entry["record"]


def _write_ledger(task, config, rec) -> None:
  from mexd import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  path = ledger_path(task)
  if not path:
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  keep = {k: v for k, v in rec.items() if k not in ("workdir", "reused")}
  with open(path, "w") as f:
    json.dump({"config": workdir_lib.config_to_dict(config), "record": keep},
              f, indent=1, sort_keys=True)


def run_one(task: Dict[str, Any], need_workdir: bool = False
            ) -> Dict[str, Any]:
  """Trains (or reads back) one (setting, method, seed); returns its record.

  `task` holds data, setting, method, seed, epochs, workroot, teacher_workdir,
  model, split_per_seed, want_logits and ledger. A run is reused, in this
  order, from the ledger (a committed JSON record of the same config, so a
  study spans sittings on fresh machines; skipped when `need_workdir`, for a
  teacher whose checkpoint a student needs), from a finished workdir of the
  same config, else trained. Errors are recorded, not raised, so a sweep
  goes on.
  """
  rec = {k: task[k] for k in ("setting", "method", "seed")}
  rec["table_row"] = task.get("table_row", True)
  workdir = run_dir(task["workroot"], task["setting"], task["method"],
                    task["seed"])
  rec["workdir"] = workdir
  try:
    config = make_config(task["data"], task["setting"], task["method"],
                         task["seed"], task["epochs"],
                         task.get("teacher_workdir"), task.get("model"),
                         task.get("split_per_seed", True),
                         task.get("overrides"))
    if not need_workdir:
      old = _read_ledger(task, config)
      if old is not None:
        return dict(old, workdir=workdir, reused="ledger")
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
    curves = _curves_of_run(rec)
    if curves is not None:
      rec["curves"] = curves
    _write_ledger(task, config, rec)
  except Exception as e:  # pylint: disable=broad-except
    rec["error"] = f"{type(e).__name__}: {e}"
    print(f"[methods] {rec['setting']}/{rec['method']}/seed{rec['seed']} "
          f"failed: {rec['error']}", flush=True)
  return rec


def plan(data: str, settings: Sequence[str], methods: Sequence[str],
         seeds: Sequence[int], epochs: Dict[str, int], workroot: str,
         curve_seeds: Optional[Sequence[int]] = None, with_kd: bool = True,
         teacher_epochs: Optional[int] = None,
         model: Optional[Dict[str, Any]] = None,
         split_per_seed: bool = True,
         ledger: Optional[str] = None,
         teacher_seed: Optional[int] = None,
         overrides: Optional[Dict[str, Any]] = None) -> List[Dict]:
  """Every task of the sweep, seed-major (all rows of seed 0 come first).

  A task with a teacher (erde, kd) names it in "teacher_workdir"; `run_tasks`
  starts it once the teacher run is done. The teacher is the "ce" run of the
  same setting and seed when `teacher_epochs` equals the CE budget, else a
  "ce_teacher" run at `teacher_epochs` (a table row of its own); with
  `teacher_seed` one ce_teacher run of that seed teaches every seed.
  `curve_seeds` (default: all) save their logits for the curves.
  """
  tasks = []
  for seed in seeds:
    for setting in settings:
      rows = expand_methods(methods, setting, with_kd)
      ep = epochs.get(setting, epochs.get("*"))
      runs = list(rows)
      teacher = None
      if any(m in ("erde", "kd") for m in rows):
        if teacher_epochs is None and ep is None or teacher_epochs == ep:
          teacher = "ce"
          if "ce" not in runs:
            runs.insert(0, "ce")  # The teacher (not a table row then).
        else:
          teacher = _TEACHER
          first = seed == seeds[0]
          if teacher_seed is None or first:
            rows.insert(0, _TEACHER)
            runs.insert(0, _TEACHER)
      for method in runs:
        run_seed = seed
        if method == _TEACHER and teacher_seed is not None:
          run_seed = teacher_seed
        task = dict(data=data, setting=setting, method=method, seed=run_seed,
                    epochs=teacher_epochs if method == _TEACHER else ep,
                    workroot=workroot, model=model or {}, ledger=ledger,
                    overrides=overrides or {},
                    split_per_seed=split_per_seed,
                    want_logits=curve_seeds is None or seed in curve_seeds,
                    teacher_workdir=None, table_row=method in rows)
        if method in ("erde", "kd"):
          t_seed = seed if teacher_seed is None or teacher == "ce" else (
              teacher_seed)
          task["teacher_workdir"] = run_dir(workroot, setting, teacher, t_seed)
        tasks.append(task)
  return tasks


def run_tasks(tasks: List[Dict], jobs: int, on_done) -> List[Dict]:
  """Runs tasks in order, `jobs` at a time (spawned processes if jobs > 1).

  A task with a teacher_workdir waits until the task that trains that
  workdir has finished (tasks of other teachers go ahead meanwhile).
  """
  def workdir(t):
    return run_dir(t["workroot"], t["setting"], t["method"], t["seed"])
  by_dir = {workdir(t): t for t in tasks}
  trained_here = set(by_dir)
  done_dirs, records, from_ledger = set(), [], set()

  def ensure_teacher(t):
    """Retrains a teacher known only from the ledger (its checkpoint is
    needed); deterministic, so the record is unchanged."""
    w = t.get("teacher_workdir")
    if w in from_ledger and not os.path.exists(
        os.path.join(w, "results.json")):
      run_one(by_dir[w], need_workdir=True)
      from_ledger.discard(w)

  def finished(t, rec):
    done_dirs.add(workdir(t))
    if rec.get("reused") == "ledger":
      from_ledger.add(workdir(t))

  def ready(t):
    w = t.get("teacher_workdir")
    return not w or w not in trained_here or w in done_dirs

  pending = list(tasks)
  if jobs <= 1:
    while pending:
      t = next((t for t in pending if ready(t)), pending[0])
      pending.remove(t)
      ensure_teacher(t)
      records.append(run_one(t))
      finished(t, records[-1])
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
        ensure_teacher(t)
        running[pool.submit(run_one, t)] = t
      completed, _ = concurrent.futures.wait(
          running, return_when=concurrent.futures.FIRST_COMPLETED)
      for fut in completed:
        t = running.pop(fut)
        records.append(fut.result())
        finished(t, records[-1])
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


def reference_of(method: str) -> Optional[str]:
  """The row a method is compared with: CE (students: the CE student)."""
  if method in ("ce", "ce_student"):
    return None
  if method == _TEACHER:
    return "ce"
  return "ce_student" if method in _STUDENT_METHODS else "ce"


def _order_key(m):
  return (_ORDER.index(m) if m in _ORDER else len(_ORDER), m)


def aggregate_records(records: Sequence[Dict]) -> Dict[str, Dict]:
  """{setting: {method: {test_acc, val_acc: aggregate(), diff, ...}}}.

  "diff" is the paired difference of the method's test accuracy to its
  `reference_of` row over their common seeds (claims.paired_diff, plus
  "reference" and "seeds"), "val_diff" the same on validation.
  """
  out: Dict[str, Dict] = {}
  for r in records:
    if "error" in r or not r.get("table_row", True):
      continue
    out.setdefault(r["setting"], {}).setdefault(r["method"], []).append(r)
  agg = {}
  for setting, by_method in out.items():
    agg[setting] = {}
    acc = {split: {m: {r["seed"]: r[f"{split}_acc"] for r in rs}
                   for m, rs in by_method.items()}
           for split in ("test", "val")}
    for method in sorted(by_method, key=_order_key):
      rs = sorted(by_method[method], key=lambda r: r["seed"])
      a = {
          "seeds": [r["seed"] for r in rs],
          "test_acc": aggregate([r["test_acc"] for r in rs]),
          "val_acc": aggregate([r["val_acc"] for r in rs]),
          "steps": rs[0]["steps"], "epochs": rs[0].get("epochs"),
          "train_seconds_mean": float(np.mean([r["train_seconds"]
                                               for r in rs])),
          "wall_seconds_mean": float(np.mean([r["wall_seconds"]
                                              for r in rs])),
          "student": method in _STUDENT_METHODS}
      ref = reference_of(method)
      if ref is not None:
        for split, key in (("test", "diff"), ("val", "val_diff")):
          d = claims_lib.paired_by_seed(acc[split], method, ref)
          if d is not None:
            a[key] = dict(d, reference=ref)
      agg[setting][method] = a
  return agg


def per_setting_accuracy(records: Sequence[Dict], split: str = "test"
                         ) -> Dict[str, Dict[str, Dict[int, List[float]]]]:
  """setting -> method -> {seed: [E] accuracies} of the finished rows."""
  out: Dict[str, Dict] = {}
  for r in records:
    if "error" in r or not r.get("table_row", True):
      continue
    out.setdefault(r["setting"], {}).setdefault(r["method"], {})[
        r["seed"]] = r[f"{split}_acc"]
  return out


def markdown_table(agg_setting: Dict[str, Dict], digits: int = 1,
                   split: str = "test") -> str:
  """Rows = methods, columns = exits ("mean ± std" accuracy, %)."""
  key = f"{split}_acc"
  num_exits = max(len(a[key]["mean"]) for a in agg_setting.values())
  head = (["method"] + [f"exit {k}" for k in range(num_exits)]
          + ["seeds", "steps", "train s / run"])
  lines = ["| " + " | ".join(head) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
  for method, a in agg_setting.items():
    t = a[key]
    cells = [format_cell(m, s, t["n"], digits)
             for m, s in zip(t["mean"], t["std"])]
    cells += [""] * (num_exits - len(cells))
    name = f"{method} (student)" if a.get("student") else method
    lines.append("| " + " | ".join(
        [name] + cells + [str(t["n"]), str(a["steps"]),
                          f"{a['train_seconds_mean']:.0f}"]) + " |")
  return "\n".join(lines)


def diff_table(agg_setting: Dict[str, Dict], key: str = "diff") -> str:
  """Rows = methods, columns = exits: paired Δ vs the reference [95 % CI]."""
  rows = {m: a[key] for m, a in agg_setting.items() if key in a}
  if not rows:
    return ""
  num_exits = max(len(d["mean"]) for d in rows.values())
  head = (["method", "vs"] + [f"exit {k}" for k in range(num_exits)]
          + ["seeds"])
  lines = ["| " + " | ".join(head) + " |",
           "|" + "|".join(["---", "---"] + ["---:"] * (num_exits + 1)) + "|"]
  for method, d in rows.items():
    cells = []
    for m, lo, hi in zip(d["mean"], d["lo"], d["hi"]):
      c = claims_lib.format_ci(m, lo, hi)
      cells.append(f"**{c}**" if lo > 0 or hi < 0 else c)
    lines.append("| " + " | ".join([method, d["reference"]] + cells
                                   + [str(d["n"])]) + " |")
  return "\n".join(lines)


def _curves_of_run(r: Dict) -> Optional[Dict[str, Any]]:
  """Anytime and budgeted-batch (MSDNet, max-prob) curves of one run."""
  from mexd import early_exit as ee  # pylint: disable=g-import-not-at-top
  path = os.path.join(r["workdir"], "logits.npz")
  if not r.get("exit_macs") or not os.path.exists(path):
    return None
  z = np.load(path)
  macs = np.asarray(r["exit_macs"], np.float64)
  ps, th = ee.msdnet_sweep(z["val"], policy="max_prob")
  c = ee.evaluate_curve(z["test"], z["test_labels"], th, "max_prob", macs)
  return {"p": np.asarray(ps).tolist(),
          "avg_macs": np.asarray(c["avg_cost"]).tolist(),
          "test_acc": np.asarray(c["accuracy"]).tolist()}


def curves_for(records: Sequence[Dict]) -> Dict[str, Dict]:
  """Per setting and method: the curves of every seed and their mean / std.

  Anytime: exit MACs vs per-exit test accuracy. Budgeted batch: for each
  MSDNet p (thresholds from that seed's validation logits) the average
  MACs and test accuracy; the band is the spread over seeds at equal p.
  """
  out: Dict[str, Dict] = {}
  groups: Dict[Tuple[str, str], List[Dict]] = {}
  for r in records:
    if "error" in r or not r.get("table_row", True):
      continue
    c = r.get("curves") or _curves_of_run(r)
    if c is None:
      continue
    groups.setdefault((r["setting"], r["method"]), []).append(
        dict(c, seed=r["seed"], exit_macs=r["exit_macs"],
             anytime_test_acc=list(map(float, r["test_acc"]))))
  for (setting, method), runs in groups.items():
    runs.sort(key=lambda c: c["seed"])
    cost = np.asarray([c["avg_macs"] for c in runs])
    acc = np.asarray([c["test_acc"] for c in runs])
    anytime = np.asarray([c["anytime_test_acc"] for c in runs])
    ddof = 1 if len(runs) > 1 else 0
    out.setdefault(setting, {})[method] = {
        "seeds": [c["seed"] for c in runs],
        "exit_macs": runs[0]["exit_macs"],
        "anytime_mean": anytime.mean(0).tolist(),
        "anytime_std": anytime.std(0, ddof=ddof).tolist(),
        "budgeted": {"p": runs[0]["p"],
                     "avg_macs_mean": cost.mean(0).tolist(),
                     "test_acc_mean": acc.mean(0).tolist(),
                     "test_acc_std": acc.std(0, ddof=ddof).tolist()},
        "per_seed": runs}
  return out


def _save_fig(fig, path: str) -> str:
  from mexd.early_exit import plots  # pylint: disable=g-import-not-at-top
  return plots._save(fig, path)  # pylint: disable=protected-access


def plot_bands(curves: Dict[str, Tuple], path: str, *, title: str,
               xlabel: str, ylabel: str) -> str:
  """Mean curves with a ± std band: name -> (x [P], mean [P], std [P])."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(6, 4.2))
  ax = fig.add_subplot()
  for name, (x, m, sd) in curves.items():
    x, m, sd = (np.asarray(v, float) for v in (x, m, sd))
    o = np.argsort(x, kind="stable")
    line, = ax.plot(x[o], m[o], marker=".", label=name)
    ax.fill_between(x[o], (m - sd)[o], (m + sd)[o], alpha=0.15,
                    color=line.get_color(), linewidth=0)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="lower right", ncol=2)
  return _save_fig(fig, path)


def plot_diffs(diffs: Dict[str, Dict], path: str, *, title: str) -> str:
  """Paired Δ vs the reference per exit, 95 % CI error bars (points)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(6.5, 4.2))
  ax = fig.add_subplot()
  n = max(len(d["mean"]) for d in diffs.values())
  width = 0.8 / max(len(diffs), 1)
  for i, (name, d) in enumerate(diffs.items()):
    m = 100 * np.asarray(d["mean"])
    lo, hi = 100 * np.asarray(d["lo"]), 100 * np.asarray(d["hi"])
    lo, hi = np.where(np.isfinite(lo), lo, m), np.where(np.isfinite(hi), hi, m)
    x = np.arange(m.size) + (i - (len(diffs) - 1) / 2) * width
    ax.errorbar(x, m, yerr=[m - lo, hi - m], fmt="o", capsize=3,
                label=f"{name} − {d['reference']}")
  ax.axhline(0, color="k", linewidth=0.8)
  ax.set_xticks(np.arange(n))
  ax.set_xticklabels([f"exit {k}" for k in range(n)])
  ax.set_ylabel("paired Δ test accuracy (points), 95 % CI")
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3, axis="y")
  ax.legend(fontsize=7, ncol=2)
  return _save_fig(fig, path)


def write_plots(name: str, agg: Dict, curves: Dict, out: str) -> List[str]:
  from mexd import early_exit as ee  # pylint: disable=g-import-not-at-top
  paths = []
  for setting, by_method in agg.items():
    stem = os.path.join(out, f"methods_{name}_{setting}")
    paths.append(ee.plot_exit_accuracy(
        {m: a["test_acc"]["mean"] for m, a in by_method.items()},
        f"{stem}_exits.png",
        title=f"{name} ({setting}): per-exit test accuracy, mean of "
        "seeds", ylabel="test accuracy"))
    diffs = {m: a["diff"] for m, a in by_method.items() if "diff" in a}
    if diffs:
      paths.append(plot_diffs(diffs, f"{stem}_diff.png", title=(
          f"{name} ({setting}): paired difference to CE per exit")))
    cs = curves.get(setting, {})
    if cs:
      n = max(len(c["seeds"]) for c in cs.values())
      paths.append(plot_bands(
          {m: (c["exit_macs"], c["anytime_mean"], c["anytime_std"])
           for m, c in cs.items()}, f"{stem}_anytime.png",
          xlabel="MACs per image (up to the exit)", ylabel="test accuracy",
          title=f"{name} ({setting}): anytime, mean ± std of {n} seeds"))
      paths.append(plot_bands(
          {m: (c["budgeted"]["avg_macs_mean"], c["budgeted"]["test_acc_mean"],
               c["budgeted"]["test_acc_std"]) for m, c in cs.items()},
          f"{stem}_budget.png", xlabel="average MACs per image",
          ylabel="test accuracy",
          title=f"{name} ({setting}): budgeted batch (max-prob), mean ± "
          f"std of {n} seeds"))
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
  """docs/results_<name>.md; text after the notes marker is kept."""
  notes = ""
  if os.path.exists(path):
    with open(path) as f:
      text = f.read()
    if _NOTES_MARK in text:
      notes = text.split(_NOTES_MARK, 1)[1].strip("\n")
  data, hw, name = report["data"], report["hardware"], report["name"]
  fl = report["flags"]
  split = ("the labeled subset is drawn per seed (split_seed = seed); "
           if fl.get("split_per_seed", True) and "limited" in
           report["aggregates"] else "the data split is fixed (split_seed "
           "0); ")
  model = f" Model overrides: `{fl['model']}`." if fl.get("model") else ""
  if fl.get("set"):
    model += f" Config overrides: `{','.join(fl['set'])}`."
  lines = [
      f"# Method comparison: {name} ({data})", "",
      "Per-exit **test** accuracy (%), mean ± sample std (ddof=1) over "
      "seeds; exit 0 is the shallowest. Δ tables: the paired difference to "
      "the reference row (same seed), mean and 95 % Student-t interval in "
      "percentage points; bold where the interval excludes 0. Generated by "
      "`benchmarks/methods.py` (statistics: `benchmarks/claims.py`); raw "
      f"numbers in `benchmarks/results/methods_{name}.json`.{model}", "",
      "Regenerate (finished runs in the workroot are reused, so the "
      "command resumes an interrupted study):", "",
      "```bash", report["command"], "```", "",
      f"- git commit: `{report['git']['commit']}`"
      + (" (with uncommitted changes)" if report["git"]["dirty"] else ""),
      f"- date: {report['date']}",
      f"- hardware: {hw['cpu']}, {hw['cpu_count']} CPU cores, jax "
      f"{hw['jax']} on {', '.join(hw['jax_devices'])}",
      f"- wall-clock: {report['sum_run_wall_seconds'] / 60:.1f} min summed "
      "over the runs (each run's own wall-clock incl. compilation; runs went "
      f"{fl.get('jobs', 1)} at a time)",
      f"- {split}seeds change the initialisation and batch order", ""]
  claims = report.get("claims") or []
  if claims:
    lines += ["## Claims of the seed papers", "",
              "Verdicts from the paired 95 % intervals (benchmarks/claims.py):"
              " *reproduced* when the interval lies on the claimed side "
              "(for 'not hurt': above −0.5 points), *not reproduced* when it "
              "lies on the other side, *inconclusive* otherwise.", "",
              claims_lib.claims_markdown(claims), ""]
  for setting, by_method in report["aggregates"].items():
    ep = sorted({a["epochs"] for a in by_method.values()})
    lines += [f"## Setting: {setting}", "",
              f"Epochs: {', '.join(map(str, ep))}. "
              f"{_SETTING_TEXT[data].get(setting, '')}", "",
              markdown_table(by_method), ""]
    dt = diff_table(by_method)
    if dt:
      lines += ["Paired Δ test accuracy vs the reference (points, 95 % CI):",
                "", dt, ""]
    dv = diff_table(by_method, "val_diff")
    if dv:
      lines += ["<details><summary>Validation accuracy (the split any "
                "choice of the study is made on)</summary>", "",
                markdown_table(by_method, split="val"), "", dv, "",
                "</details>", ""]
    for kind, what in (("exits", "per-exit accuracy"),
                       ("diff", "paired difference to CE"),
                       ("anytime", "anytime accuracy vs MACs"),
                       ("budget", "budgeted batch")):
      png = f"methods_{name}_{setting}_{kind}.png"
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
                "sklearn's 1,797 8x8 digits); model widths (32, 64, 128), "
                "students (16, 32, 64).",
        "limited": "10 labeled images per class (100 in all); pl_semisup "
                   "also distils on the unlabeled rest (32 of every 64-image "
                   "batch), every other method sees the 100 labeled images "
                   "only."},
    "fashion_mnist": {
        "full": "55,000 training images (val 5,000, test 10,000); 4-exit "
                "small_cnn widths (16, 32, 64, 128), students "
                "(8, 16, 32, 64).",
        "limited": "100 labeled images per class (val 5,000, test 10,000); "
                   "pl_semisup also distils on 64 unlabeled images of every "
                   "128-image batch; every other method sees the 1,000 "
                   "labeled images only."}}


def build_report(records, args: Dict[str, Any], wall: float,
                 want_curves: bool) -> Dict[str, Any]:
  agg = aggregate_records(records)
  curves = {}
  if want_curves:
    try:
      curves = curves_for(records)
    except Exception as e:  # pylint: disable=broad-except
      print(f"[methods] curves skipped: {type(e).__name__}: {e}")
  missing = [f"{r['setting']}/{r['method']}/seed{r['seed']}: {r['error']}"
             for r in records if "error" in r]
  return {
      "data": args["data"], "name": args.get("name", args["data"]),
      "command": args["command"],
      "git": git_commit(), "hardware": hardware(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "flags": args["flags"], "out": args["out"],
      "sweep_wall_seconds": wall,
      "sum_run_wall_seconds": float(sum(r.get("wall_seconds", 0.0)
                                        for r in records)),
      "runs": sorted(records, key=lambda r: (r["setting"], r["method"],
                                             r["seed"])),
      "aggregates": agg,
      "claims": claims_lib.evaluate_claims(per_setting_accuracy(records)),
      "curves": curves, "missing": missing}


def write_outputs(report: Dict[str, Any], docs: str,
                  plots: bool = True) -> None:
  out, name = report["out"], report["name"]
  os.makedirs(out, exist_ok=True)
  if plots:
    try:
      report["plots"] = [os.path.basename(p) for p in write_plots(
          name, report["aggregates"], report["curves"], out)]
    except Exception as e:  # pylint: disable=broad-except
      print(f"[methods] plots skipped: {type(e).__name__}: {e}")
  with open(os.path.join(out, f"methods_{name}.json"), "w") as f:
    json.dump(report, f, indent=1)
  write_markdown(os.path.join(docs, f"results_{name}.md"), report)


def apply_protocol() -> str:
  """Fills the flags not given on the command line from --protocol.

  Returns the study name (--name, else the protocol, else the data set).
  """
  if FLAGS.protocol:
    for field, value in PROTOCOLS[FLAGS.protocol].items():
      if not FLAGS[field].present:
        FLAGS[field].value = value
  return FLAGS.name or FLAGS.protocol or FLAGS.data


def main(argv):
  del argv
  name = apply_protocol()
  seeds = [int(s) for s in FLAGS.seeds]
  curve_seeds = (None if FLAGS.curve_seeds is None
                 else [int(s) for s in FLAGS.curve_seeds])
  epochs = parse_epochs(FLAGS.epochs)
  for s in FLAGS.settings:
    if s not in ("full", "limited"):
      raise app.UsageError(f"unknown setting {s!r}")
  workroot = os.path.join(FLAGS.workroot, name)
  tasks = plan(FLAGS.data, FLAGS.settings, FLAGS.methods, seeds, epochs,
               workroot, curve_seeds, FLAGS.kd, FLAGS.teacher_epochs,
               parse_model(FLAGS.model), FLAGS.split_per_seed,
               os.path.join(FLAGS.ledger, name) if FLAGS.ledger else None,
               FLAGS.teacher_seed, parse_model(",".join(FLAGS.set)))
  for t in tasks:
    t["report_only"] = FLAGS.report_only
  args = {"data": FLAGS.data, "out": FLAGS.out, "name": name,
          "command": "python " + " ".join(
              shlex.quote(a) for a in sys.argv
              if a not in ("--report_only", "--report_only=true")),
          "flags": {f: FLAGS[f].value for f in (
              "protocol", "data", "settings", "methods", "seeds", "epochs",
              "teacher_epochs", "teacher_seed", "model", "set",
              "split_per_seed",
              "workroot",
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
    write_outputs(build_report(records, args, time.time() - t0, False),
                  FLAGS.docs, plots=False)

  run_tasks(tasks, FLAGS.jobs, on_done)
  report = build_report(records, args, time.time() - t0, FLAGS.curves)
  write_outputs(report, FLAGS.docs)
  print(f"[methods] wrote {FLAGS.out}/methods_{name}.json and "
        f"{FLAGS.docs}/results_{name}.md in {time.time() - t0:.0f}s")


if __name__ == "__main__":
  app.run(main)
