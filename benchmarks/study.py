"""The runs of the method comparison: configs, the plan, training, resume.

Every (setting, method, seed) is one `mexd.trainer.train_and_evaluate` run in
`<workroot>/<setting>/<method>/seed<k>`. `plan` lists a sweep's runs
(seed-major; teachers before their students), `run_tasks` runs them one or
`jobs` at a time, and `run_one` trains a run or reads it back: from the
ledger (benchmarks/ledger.py) or from a finished work directory of the same
config. See benchmarks/methods.py for the study itself.
"""

import ast
import concurrent.futures
import json
import multiprocessing
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import jax
import numpy as np

from benchmarks import curves
from benchmarks import ledger as ledger_lib
from benchmarks import rows as rows_lib
from mexd import configs
from mexd import data as data_lib
from mexd import predict
from mexd import sharding
from mexd import trainer
from mexd import workdir as workdir_lib
from mexd.losses import imta
from mexd.models import costs


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


def parse_model(spec: str) -> Dict[str, Any]:
  """'head=conv,widths=(8, 16)' -> {"head": "conv", "widths": (8, 16)}."""
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
  """The run config of one row of the study (benchmarks/methods.py)."""
  limited = setting == "limited"
  student = method in rows_lib.STUDENT_METHODS
  mexd_method = {"pl_semisup": "pl", "pl_semisup_eqsteps": "pl",
                 "ce_student": "ce", "ce_ge": "ce", "imta2": "imta",
                 rows_lib.TEACHER: "ce"}.get(method, method)
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
  if method == "ce_ge":
    c.gradient_equilibrium = True
  if method == "imta2":  # Classifiers on the frozen first-stage network.
    c.loss.imta.target = "teacher"
    c.teacher_workdir = c.init_workdir = teacher_workdir
    c.optimizer.trainable = imta.CLASSIFIERS
  return c


def run_dir(workroot: str, setting: str, method: str, seed: int) -> str:
  """`<workroot>/<setting>/<method>/seed<k>` (workroot names the study)."""
  return os.path.join(workroot, setting, method, f"seed{seed}")


def _same_config(workdir: str, config) -> bool:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    old = json.load(f)
  return not workdir_lib.config_diff(old, workdir_lib.config_to_dict(config))


def _save_logits(workdir: str, config) -> Dict[str, Any]:
  """Writes workdir/logits.npz (val/test logits) and returns per-exit MACs."""
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
                            jax.tree.leaves(variables.get("params",
                                                          variables))))}


def task_config(task: Dict[str, Any]):
  """The run's config (see `make_config`) from a task of `plan`."""
  return make_config(task["data"], task["setting"], task["method"],
                     task["seed"], task["epochs"],
                     task.get("teacher_workdir"), task.get("model"),
                     task.get("split_per_seed", True), task.get("overrides"))


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
    config = task_config(task)
    if not need_workdir:
      old = ledger_lib.read(task, config)
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
      t0 = time.time()
      trainer.train_and_evaluate(config, workdir, overwrite=True)
      # How many runs shared the machine: the wall-clock depends on it.
      bench = {"wall_seconds": time.time() - t0,
               "jobs": task.get("jobs", 1)}
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
        wall_seconds=bench["wall_seconds"], jobs=bench.get("jobs"),
        skipped_steps=res.get("skipped_steps", 0),
        exit_macs=bench.get("exit_macs"), params=bench.get("params"))
    run_curves = curves.of_run(rec)
    if run_curves is not None:
      rec["curves"] = run_curves
    if not (need_workdir and ledger_lib.read(task, config) is not None):
      # A teacher retrained for its weights keeps its committed record: the
      # table's other rows were paired with it, and a retrain on another
      # machine or jax version is close to it, not bit-identical.
      ledger_lib.write(task, config, rec)
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
      rows = rows_lib.expand_methods(methods, setting, with_kd)
      ep = epochs.get(setting, epochs.get("*"))
      runs = list(rows)
      teacher = None
      if any(m in ("erde", "kd") for m in rows):
        if teacher_epochs is None and ep is None or teacher_epochs == ep:
          teacher = "ce"
          if "ce" not in runs:
            runs.insert(0, "ce")  # The teacher (not a table row then).
        else:
          teacher = rows_lib.TEACHER
          first = seed == seeds[0]
          if teacher_seed is None or first:
            rows.insert(0, rows_lib.TEACHER)
            runs.insert(0, rows_lib.TEACHER)
      for method in runs:
        run_seed = seed
        if method == rows_lib.TEACHER and teacher_seed is not None:
          run_seed = teacher_seed
        task = dict(data=data, setting=setting, method=method, seed=run_seed,
                    epochs=(teacher_epochs if method == rows_lib.TEACHER
                            else ep),
                    workroot=workroot, model=model or {}, ledger=ledger,
                    overrides=overrides or {},
                    split_per_seed=split_per_seed,
                    want_logits=curve_seeds is None or seed in curve_seeds,
                    teacher_workdir=None, table_row=method in rows)
        if method in ("erde", "kd"):
          t_seed = seed if teacher_seed is None or teacher == "ce" else (
              teacher_seed)
          task["teacher_workdir"] = run_dir(workroot, setting, teacher, t_seed)
        if method in rows_lib.STAGE_OF:
          task["teacher_workdir"] = run_dir(
              workroot, setting, rows_lib.STAGE_OF[method], seed)
        tasks.append(task)
  return tasks


def in_ledger(task: Dict[str, Any]) -> bool:
  """Whether the ledger holds a record of this task's exact config."""
  return ledger_lib.read(task, task_config(task)) is not None


def run_tasks(tasks: List[Dict], jobs: int, on_done) -> List[Dict]:
  """Runs tasks in order, `jobs` at a time (spawned processes if jobs > 1).

  A task with a teacher_workdir waits until the task that trains that
  workdir has finished (tasks of other teachers go ahead meanwhile).
  """
  def workdir(t):
    return run_dir(t["workroot"], t["setting"], t["method"], t["seed"])
  for t in tasks:
    t["jobs"] = jobs
  by_dir = {workdir(t): t for t in tasks}
  trained_here = set(by_dir)
  done_dirs, records, from_ledger = set(), [], set()

  def ensure_teacher(t):
    """Retrains a teacher known only from the ledger when its student must
    train (the student needs the checkpoint); the ledger keeps the teacher's
    committed record. A student that is itself in the ledger needs no
    teacher."""
    w = t.get("teacher_workdir")
    if w in from_ledger and not os.path.exists(
        os.path.join(w, "results.json")) and not in_ledger(t):
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
