"""Training a multi-exit network: `train_and_evaluate(config, workdir)`.

The library side of `python -m mexd.train`, in three parts that read top to
bottom:

* `build(config)`: everything that can be validated is built and validated
  before anything is written (data and splits, model, mesh and batch sizes,
  the frozen teacher, optimizer, and the train step traced once).
* `_loop`: the step loop. Its cadences are periodic actions
  (`mexd.periodic.Periodic`): log the averaged metrics, validate, checkpoint.
  A preemption (SIGTERM / Ctrl-C) or `stop_after` ends it with a checkpoint.
* teardown: one `contextlib.ExitStack` closes the progress bar, the metric
  writer, the checkpoint manager (after its last write) and the work
  directory lock on every way out: the end, a stop, an error.

The work directory (a local folder or gs://BUCKET/PATH; all its I/O goes
through etils.epath, see mexd/paths.py) holds: config.json, splits.npz (the
seeded split indices), checkpoints/ (orbax), metrics.jsonl (+ tb/ TensorBoard
events) and results.json (final per-exit accuracy). Training the same config
in it again resumes from the newest checkpoint, bit for bit.
"""

import contextlib
import dataclasses
import functools
import sys
import time
from typing import Any, Callable, Dict, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mexd import checkpoint
from mexd import config_lib
from mexd import data as data_lib
from mexd import errors
from mexd import lock as lock_lib
from mexd import losses
from mexd import metrics as metrics_lib
from mexd import models
from mexd import optim
from mexd import paths
from mexd import periodic
from mexd import predict
from mexd import preemption
from mexd import sharding
from mexd import state as state_lib
from mexd import steps
from mexd import workdir as workdir_lib
from mexd.cpu import xla_options
from mexd.data import pipeline
from mexd.data import stream


def build_method(config) -> losses.Method:
  """The training objective named by `config.method`, with gradient
  equilibrium as `config.gradient_equilibrium` says (None: the method's
  default)."""
  hparams = dict(config.loss.get(config.method, {})) if config.get(
      "loss") else {}
  method = losses.get_method(config.method, **hparams)
  ge = config.get("gradient_equilibrium")
  if ge is not None:
    method = dataclasses.replace(method, gradient_equilibrium=bool(ge))
  return method


def make_batches(config, splits):
  """The train batches of `splits`: in memory (`pipeline.TrainBatches`) or
  streamed (`stream.TrainStream`, with the config.data streaming options).
  """
  train_ds = splits["train"]
  if isinstance(train_ds, data_lib.StreamSplit):
    d = config.data
    return stream.TrainStream(
        train_ds, config.batch_size, seed=config.seed,
        workers=stream.option(d, "workers"),
        read_threads=stream.option(d, "read_threads"),
        scale=stream.option(d, "crop_scale"),
        ratio=stream.option(d, "crop_ratio"))
  return pipeline.TrainBatches(
      train_ds, config.batch_size, seed=config.seed,
      unlabeled=splits.get("unlabeled"),
      unlabeled_batch=config.data.get("unlabeled_batch", 0))


def stream_options(config):
  """workers / read_threads of a streamed run's evaluation passes."""
  return {k: stream.option(config.data, k) for k in ("workers",
                                                     "read_threads")}


def load_teacher(config, num_classes):
  """(model, host variables) of the frozen teacher run in
  config.teacher_workdir (read once at start, never checkpointed)."""
  tdir = config.get("teacher_workdir")
  if not tdir:
    raise errors.InputError(
        f"method {config.method!r} learns from a teacher: set "
        "--config.teacher_workdir to a finished run's workdir")
  tconfig = workdir_lib.load_config(tdir)
  tmodel = predict.build_model(tconfig, num_classes)
  return tmodel, workdir_lib.load_variables(tdir)


@dataclasses.dataclass(frozen=True)
class Setup:
  """A run built and validated before any write (`build`).

  teacher: host {"params", "batch_stats"} of the frozen teacher, or {}.
  abstract: the TrainState as ShapeDtypeStructs (the restore target).
  step_fn: train_step(state, batch, teacher) -> (state, metrics), unjitted.
  """
  config: ml_collections.ConfigDict
  splits: Dict[str, Any]
  split_idx: Dict[str, np.ndarray]
  model: Any
  mesh: jax.sharding.Mesh
  batches: pipeline.TrainBatches
  teacher: Dict[str, Any]
  total_steps: int
  lr_fn: Callable[[int], float]
  dtype: Any
  init_fn: Callable[[jax.Array], state_lib.TrainState]
  abstract: state_lib.TrainState
  step_fn: Callable[..., Any]
  warm: Optional[Dict[str, Any]] = None

  @property
  def streamed(self) -> bool:
    """Whether the train batches are streamed (`stream.TrainStream`)."""
    return isinstance(self.batches, stream.TrainStream)


def build(config: ml_collections.ConfigDict) -> Setup:
  """Builds the run of `config`; raises on a bad config before any write."""
  config_lib.validate(config)
  method = build_method(config)
  splits, split_idx = data_lib.load_splits(config.data)
  train_ds = splits["train"]
  num_classes, image_shape = train_ds.num_classes, train_ds.image_shape
  model = predict.build_model(config, num_classes)
  models.check_input_size(config.model.name, image_shape)
  mesh = sharding.make_mesh(config.get("num_devices"))
  sharding.check_batch_size(config.batch_size, mesh)
  sharding.check_batch_size(config.eval_batch_size, mesh)
  batches = make_batches(config, splits)
  teacher_model, teacher = None, {}
  if method.needs_teacher:
    teacher_model, teacher = load_teacher(config, num_classes)
  steps_per_epoch = batches.steps_per_epoch
  tx, lr_fn = optim.make_optimizer(config.optimizer, steps_per_epoch,
                                   config.num_epochs)
  dtype = predict.compute_dtype(config)
  init_fn = functools.partial(state_lib.create, model=model, method=method,
                              tx=tx, image_shape=image_shape)
  abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(config.seed))
  step_fn = steps.make_train_step(
      model=model, method=method, tx=tx, mean=train_ds.mean,
      std=train_ds.std, crop_pad=config.augment.crop_pad,
      flip=config.augment.flip, steps_per_epoch=steps_per_epoch,
      num_epochs=config.num_epochs, teacher_model=teacher_model, dtype=dtype)
  # Tracing the step once validates the loss against the model's exits
  # (e.g. a per-exit hyperparameter of the wrong length) before any write.
  jax.eval_shape(step_fn, abstract, {
      "image": jax.ShapeDtypeStruct((config.batch_size,) + image_shape,
                                    jnp.uint8),
      "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32)},
                 teacher)
  warm = (workdir_lib.load_variables(config.init_workdir)
          if config.get("init_workdir") else None)
  return Setup(config, splits, split_idx, model, mesh, batches, teacher,
               steps_per_epoch * config.num_epochs, lr_fn, dtype, init_fn,
               abstract, step_fn, warm=warm)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       *, overwrite: bool = False,
                       stop_after: Optional[int] = None) -> Dict[str, Any]:
  """Trains, checkpoints and evaluates; returns the results dict.

  Args:
    config: the run's ConfigDict (see mexd/config_lib.py base_config).
    workdir: where everything is written; resumes from it if it holds a
      checkpoint of the same config.
    overwrite: allow a workdir that holds a run of a different config
      (its checkpoints are moved aside first).
    stop_after: stop after this global step with a checkpoint, as a
      preemption would (resume drills and tests).

  Returns:
    {"stopped": None or the step it stopped at, "steps": total steps,
     "checkpoint_step": the step of the last checkpoint}; a finished run
    also has {"val": {"acc": [E], "ens_acc": [E]}, "test": {...},
    "train_seconds", "method_state", "skipped_steps"} (results.json).

  Raises:
    SystemExit(143 / 130) after SIGTERM / Ctrl-C, with a checkpoint saved.
  """
  setup = build(config)
  held = {}
  with contextlib.ExitStack() as stack:
    lock = stack.enter_context(lock_lib.WorkdirLock(workdir,
                                                    prog="mexd.train"))
    # A failed write (full disk, read-only folder) is one message naming the
    # path, the cause and the last good checkpoint; it also covers teardown.
    stack.enter_context(_write_errors(workdir, held))
    workdir_lib.prepare(workdir, config, setup.split_idx, overwrite=overwrite)
    manager = held["manager"] = checkpoint.make_manager(
        workdir, max_to_keep=config.keep_checkpoints, save_interval_steps=1,
        data=setup.streamed)
    stack.callback(manager.close)
    stack.callback(manager.wait_until_finished)  # Runs before close.
    repl = sharding.replicated(setup.mesh)
    state_sh = jax.tree.map(lambda _: repl, setup.abstract)
    state = _restore_or_init(setup, manager, state_sh)
    start = int(jax.device_get(state.step))
    if start and jax.process_index() == 0:
      print(f"Resuming from step {start} in {workdir}", flush=True)
    save = _Saver(manager, workdir, setup.abstract,
                  setup.batches.position if setup.streamed else None)
    writer = metrics_lib.MetricWriter(workdir)
    stack.callback(writer.close)  # On a bucket, uploads the rows in memory.
    bar = metrics_lib.progress_bar(config, start, setup.total_steps)
    if bar is not None:
      stack.callback(bar.close)
    evaluate = _Evaluator(setup, writer)
    log = metrics_lib.TrainMetrics(config, setup.lr_fn, writer, lock, bar)
    with preemption.Preempted() as preempted:
      state, done, stop = _loop(setup, state, state_sh, start, save,
                                evaluate, log, preempted, stop_after)
    results = {"stopped": done if stop else None,
               "steps": setup.total_steps, "checkpoint_step": done}
    if stop is None:
      results.update(_finish(setup, state, save, manager, evaluate,
                             time.time() - log.t0, workdir))
  if stop == "preempted":
    logging.warning("Stopped at step %d after %s.", done, preempted.name)
    if jax.process_index() == 0:
      print(f"mexd.train: stopped at step {done} after {preempted.name} "
            "(checkpoint saved); resume with the same command: "
            f"{preemption.resume_command()}", file=sys.stderr, flush=True)
    raise SystemExit(preempted.exit_status)
  return results


def _loop(setup: Setup, state, state_sh, start: int, save, evaluate, log,
          preempted, stop_after: Optional[int]):
  """Steps from `start` to the end or a stop; returns (state, steps done,
  None | "stop_after" | "preempted")."""
  config, total = setup.config, setup.total_steps
  mesh = setup.mesh
  repl, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  # The teacher is an argument of every step: replicated, never donated.
  teacher = sharding.put_replicated(setup.teacher, mesh)
  train_step = xla_options.jit(
      setup.step_fn, in_shardings=(state_sh, bsh, repl),
      out_shardings=(state_sh, repl), donate_argnums=(0,))
  steps_per_epoch = setup.batches.steps_per_epoch
  write_metrics = periodic.Periodic(log.write, config.log_every_steps,
                                    on_steps=[total])
  validate = periodic.Periodic(
      lambda step, s: evaluate(s, "val"),
      max(1, int(config.eval_every_epochs * steps_per_epoch)),
      skip_steps=[total])  # The final evaluation follows the loop.
  checkpoint_due = periodic.Periodic(save, config.ckpt_every_steps).due
  done = start
  for step, batch in pipeline.prefetch(setup.batches, start, total, bsh):
    state, m = train_step(state, batch, teacher)
    done = step + 1
    log.add(m)
    write_metrics(done)
    log.advance()
    validate(done, state)
    stop = preemption.stop_reason(done, preempted, stop_after, config.log_every_steps)
    if checkpoint_due(done) or stop:
      save(done, state)
    if stop:
      return state, done, stop
  return state, done, None


def _finish(setup: Setup, state, save, manager, evaluate,
            train_seconds: float, workdir: str) -> Dict[str, Any]:
  """The last checkpoint, the final evaluation, results.json and the table."""
  config, total = setup.config, setup.total_steps
  if total not in manager.all_steps():
    save(total, state, force=True)
  manager.wait_until_finished()
  results = {split: evaluate(state, split) for split in ("val", "test")}
  results["train_seconds"] = train_seconds
  results["method_state"] = jax.tree.map(
      lambda x: np.asarray(x).tolist(), jax.device_get(state.method_state))
  results["skipped_steps"] = int(jax.device_get(state.skipped))
  if jax.process_index() == 0:
    paths.write_json(paths.path(workdir) / "results.json",
                     {"steps": total, "checkpoint_step": total, **results},
                     indent=2)
    print(f"\nPer-exit top-1 accuracy ({config.data.name}, method "
          f"{config.method}, {total} steps, {train_seconds:.1f}s):")
    print(predict.format_table({"val": results["val"],
                                "test": results["test"]}))
  return results


def _restore_or_init(setup: Setup, manager, state_sh):
  """The newest readable checkpoint's state, or a fresh one."""
  restored = checkpoint.restore_latest(
      manager, checkpoint.abstract_like(setup.abstract, state_sh),
      data=setup.streamed)
  if restored is not None and restored.data is not None:
    # The saved input position must be the one this pipeline has at the
    # restored step (the stream then restarts there).
    setup.batches.check_position(restored.data, restored.step)
  if restored is None:
    state = jax.jit(setup.init_fn, out_shardings=state_sh)(
        jax.random.PRNGKey(setup.config.seed))
    return _warm_start(setup, state)
  if restored.unreadable:  # Written again from the older step.
    bad = [s for s, _ in restored.unreadable]
    aside = checkpoint.set_aside(manager, bad)
    if jax.process_index() == 0:
      print(f"mexd.train: warning: checkpoint(s) {bad} could not be read "
            f"({restored.unreadable[0][1][:120]}); resuming from step "
            f"{restored.step} and writing them again (the damaged ones "
            f"are in {aside})", file=sys.stderr, flush=True)
  return restored.state


def _warm_start(setup: Setup, state):
  """A fresh state with config.init_workdir's matching weights, if set."""
  if setup.warm is None:
    return state
  state, copied, kept = state_lib.warm_start(state, setup.warm)
  if not any(c.startswith("params/") for c in copied):
    raise errors.InputError(
        f"config.init_workdir={setup.config.init_workdir!r}: no parameter "
        "of that run matches this model (path and shape)")
  if jax.process_index() == 0:
    print(f"mexd.train: {len(copied)} arrays from "
          f"{setup.config.init_workdir}; {len(kept)} keep their "
          f"initialisation{': ' + ', '.join(kept[:6]) if kept else ''}"
          f"{' ...' if len(kept) > 6 else ''}", file=sys.stderr, flush=True)
  return state


class _Saver:
  """save(step, state, force=False): checks that the work directory can
  take a checkpoint (writable, room for it), then starts an async save."""

  def __init__(self, manager, workdir: str, abstract, position=None):
    self.manager, self.workdir = manager, workdir
    self.position = position  # step -> the input position saved with it.
    self.state_bytes = sum(x.size * x.dtype.itemsize
                           for x in jax.tree.leaves(abstract))

  def __call__(self, step: int, state, force: bool = False):
    m = self.manager
    if jax.process_index() == 0:
      paths.check_writable(m.directory, self.state_bytes, self.workdir,
                           last_step=m.latest_step())
    try:
      checkpoint.save(m, step, state, force=force,
                      data=self.position(step) if self.position else None)
    except OSError as e:
      raise paths.write_error(self.workdir, e, m.latest_step()) from e


class _Evaluator:
  """evaluate(state, split) -> {"acc": [E], "ens_acc": [E]}, also written
  to the metrics at the state's step."""

  def __init__(self, setup: Setup, writer):
    ds = setup.splits["train"]
    self.splits, self.writer = setup.splits, writer
    self.predictor = predict.Predictor(
        setup.model, ds.mean, ds.std, setup.mesh,
        setup.config.eval_batch_size, setup.dtype, ds.image_shape,
        stream_options(setup.config))

  def __call__(self, state, split: str) -> Dict[str, Any]:
    ds = self.splits[split]
    variables = {"params": state.params["model"],
                 "batch_stats": state.batch_stats}
    res = predict.accuracy_table(self.predictor.logits(variables, ds),
                                 ds.labels)
    self.writer.write_scalars(int(jax.device_get(state.step)), {
        **{f"acc/exit{k}": a for k, a in enumerate(res["acc"])},
        **{f"ens_acc/exit{k}": a for k, a in enumerate(res["ens_acc"])}},
                              split=split)
    return res


@contextlib.contextmanager
def _write_errors(workdir: str, held: Dict[str, Any]):
  """Turns an OSError of a work-directory write into a WorkdirWriteError
  (held["manager"], once set, names the last good checkpoint)."""
  try:
    yield
  except paths.WorkdirWriteError:
    raise
  except OSError as e:
    m = held.get("manager")
    raise paths.write_error(workdir, e, m.latest_step() if m else None
                            ) from e
