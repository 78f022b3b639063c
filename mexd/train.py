"""Trains a multi-exit network: `python -m mexd.train [--config=...] [--workdir=...]`.

With no flags it trains the 3-exit digits CNN with Phuong & Lampert
distillation on scikit-learn's bundled digits (configs/digits.py) and prints
the per-exit accuracy. The same command scales from a CPU laptop to a TPU pod
slice: the global batch is sharded over every device of every host.

The work directory (a local folder or gs://BUCKET/PATH; all its I/O goes
through etils.epath, see mexd/paths.py) holds: config.json, splits.npz (the
seeded split indices), checkpoints/ (orbax), metrics.jsonl (+ tb/ TensorBoard
events) and results.json (final per-exit accuracy). Re-running the same
command resumes from the newest checkpoint.
"""

import contextlib
import functools
import os
import signal
import sys
import time
from typing import Any, Dict

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from mexd import checkpoint
from mexd import config_lib
from mexd import configs
from mexd import data as data_lib
from mexd import errors
from mexd import hostmem
from mexd import lock as lock_lib
from mexd import losses
from mexd import metrics as metrics_lib
from mexd import models
from mexd import optim
from mexd import paths
from mexd import predict
from mexd import sharding
from mexd import state as state_lib
from mexd import steps
from mexd import workdir as workdir_lib
from mexd import xla_options
from mexd.data import pipeline

_DEFAULT_CONFIG = configs.path("digits")


def build_method(config) -> losses.Method:
  """The training objective named by `config.method`."""
  hparams = dict(config.loss.get(config.method, {})) if config.get(
      "loss") else {}
  return losses.get_method(config.method, **hparams)


def load_teacher(config, num_classes):
  """(model, host variables) of the frozen teacher run in
  config.teacher_workdir (read once at start, never checkpointed)."""
  tdir = config.get("teacher_workdir")
  if not tdir:
    raise ValueError(f"method {config.method!r} learns from a teacher: set "
                     "--config.teacher_workdir to a finished run's workdir")
  tconfig = workdir_lib.load_config(tdir)
  tmodel = predict.build_model(tconfig, num_classes)
  variables = workdir_lib.load_variables(tdir)
  return tmodel, variables


class _Preempted:
  """Records SIGTERM and SIGINT (Ctrl-C) so the loop can checkpoint and exit
  cleanly (status 143 after SIGTERM, 130 after SIGINT)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.flag = False
    self.signum = None
    self._old = {}

  def __enter__(self):
    for sig in self.SIGNALS:
      try:
        self._old[sig] = signal.signal(sig, self._handler)
      except ValueError:  # Not the main thread.
        pass
    return self

  def _handler(self, signum, frame):
    del frame
    logging.warning("%s: saving a checkpoint and exiting.",
                    signal.Signals(signum).name)
    self.flag = True
    self.signum = self.signum or signum

  @property
  def name(self) -> str:
    return signal.Signals(self.signum or signal.SIGTERM).name

  @property
  def exit_status(self) -> int:
    return 128 + int(self.signum or signal.SIGTERM)

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _resume_command() -> str:
  import shlex  # pylint: disable=g-import-not-at-top
  return "python -m mexd.train " + " ".join(shlex.quote(a)
                                              for a in sys.argv[1:])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       *, overwrite: bool = False,
                       stop_after: int | None = None) -> Dict[str, Any]:
  """Trains, checkpoints and evaluates; returns the final results dict.

  Args:
    config: the run's ConfigDict (see mexd/config_lib.py base_config).
    workdir: where everything is written; resumes from it if it holds a
      checkpoint of the same config.
    overwrite: allow a workdir that holds a run of a different config
      (its checkpoints are moved aside first).
    stop_after: stop after this global step with a checkpoint, as a
      preemption would (resume drills and tests); returns {"stopped": step}.

  Returns:
    {"val": {"acc": [E], "ens_acc": [E]}, "test": {...}, "steps": int,
     "train_seconds": float}.
  """
  # Everything that can be validated is validated before writing anything.
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
  batches = pipeline.TrainBatches(
      train_ds, config.batch_size, seed=config.seed,
      unlabeled=splits.get("unlabeled"),
      unlabeled_batch=config.data.get("unlabeled_batch", 0))
  teacher_model, teacher_vars = None, None
  if method.needs_teacher:
    teacher_model, teacher_vars = load_teacher(config, num_classes)
  steps_per_epoch = batches.steps_per_epoch
  total_steps = steps_per_epoch * config.num_epochs
  tx, lr_fn = optim.make_optimizer(config.optimizer, steps_per_epoch,
                                   config.num_epochs)
  dtype = predict.compute_dtype(config)
  repl = sharding.replicated(mesh)
  bsh = sharding.batch_sharding(mesh)

  init_fn = functools.partial(state_lib.create, model=model, method=method,
                              tx=tx, image_shape=image_shape)
  rng = jax.random.PRNGKey(config.seed)
  abstract = jax.eval_shape(init_fn, rng)  # Also validates the model.
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
                 teacher_vars)
  # One writer per work directory (released on return, error, SIGTERM); a
  # failed write (full disk, read-only folder) is one message naming the
  # path, the cause and the last good checkpoint.
  held = {}
  with lock_lib.WorkdirLock(workdir, prog="mexd.train") as lock, \
      _write_errors(workdir, held):
    workdir_lib.prepare(workdir, config, split_idx, overwrite=overwrite)
    state_sh = jax.tree.map(lambda _: repl, abstract)
    manager = checkpoint.make_manager(
        workdir, max_to_keep=config.keep_checkpoints,
        save_interval_steps=1)
    held["manager"] = manager
    restored = checkpoint.restore_latest(
        manager, checkpoint.abstract_like(abstract, state_sh))
    if restored is None:
      state = jax.jit(init_fn, out_shardings=state_sh)(rng)
    else:
      state = restored.state
      if restored.unreadable:  # Written again from the older step.
        bad = [s for s, _ in restored.unreadable]
        aside = checkpoint.set_aside(manager, bad)
        if jax.process_index() == 0:
          print(f"mexd.train: warning: checkpoint(s) {bad} could not be read "
                f"({restored.unreadable[0][1][:120]}); resuming from step "
                f"{restored.step} and writing them again (the damaged ones "
                f"are in {aside})", file=sys.stderr, flush=True)
    start = int(jax.device_get(state.step))
    if start and jax.process_index() == 0:
      print(f"Resuming from step {start} in {workdir}", flush=True)
    state_bytes = sum(x.size * x.dtype.itemsize
                      for x in jax.tree.leaves(abstract))

    def save(step, force=False):
      """Checks the work directory can take a checkpoint, then saves."""
      if jax.process_index() == 0:
        paths.check_writable(manager.directory, state_bytes, workdir,
                             last_step=manager.latest_step())
      try:
        checkpoint.save(manager, step, state, force=force)
      except OSError as e:
        raise paths.write_error(workdir, e, manager.latest_step()) from e

    # The teacher is an argument of every step: replicated, never donated.
    teacher = sharding.put_replicated(teacher_vars or {}, mesh)
    train_step = xla_options.jit(
        step_fn, in_shardings=(state_sh, bsh, repl),
        out_shardings=(state_sh, repl), donate_argnums=(0,))
    predictor = predict.Predictor(model, train_ds.mean, train_ds.std, mesh,
                          config.eval_batch_size, dtype, image_shape)
    writer = metrics_lib.MetricWriter(workdir)
    variables = lambda s: {"params": s.params["model"],
                           "batch_stats": s.batch_stats}

    def evaluate(s, split):
      ds = splits[split]
      res = predict.accuracy_table(predictor.logits(variables(s), ds), ds.labels)
      writer.write_scalars(int(jax.device_get(s.step)), {
          **{f"acc/exit{k}": a for k, a in enumerate(res["acc"])},
          **{f"ens_acc/exit{k}": a for k, a in enumerate(res["ens_acc"])}},
          split=split)
      return res

    is_main = jax.process_index() == 0
    bar = None
    if is_main and config.get("progress_bar", True) and start < total_steps:
      from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
      bar = tqdm.tqdm(total=total_steps, initial=start, unit="step",
                      dynamic_ncols=True, file=sys.stdout,
                      desc=f"{config.data.name}/{config.method}")
    pending = []
    t0, t_log, step = time.time(), time.time(), start
    eval_every = max(1, int(config.eval_every_epochs * steps_per_epoch))
    with _Preempted() as preempted:
      for step, batch in pipeline.prefetch(batches, start, total_steps, bsh):
        state, m = train_step(state, batch, teacher)
        pending.append(m)
        if len(pending) > 2:  # At most 2 steps in flight: an honest ETA.
          jax.block_until_ready(pending[-3]["loss"])
        done = step + 1
        if done % config.log_every_steps == 0 or done == total_steps:
          rows = jax.device_get(pending)
          avg = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
          _check_finite(rows, done - len(rows), config)
          avg["lr"] = float(lr_fn(done - 1))
          now = time.time()
          avg["images_per_sec"] = (len(rows) * config.batch_size
                                   / max(now - t_log, 1e-9))
          t_log = now
          writer.write_scalars(done, avg)
          lock.refresh()
          if bar is not None:
            bar.set_postfix(loss=f"{avg['loss']:.3f}", refresh=False)
          pending = []
        if bar is not None:
          bar.update(1)
        if done % eval_every == 0 and done != total_steps:
          evaluate(state, "val")
        stop_now = stop_after is not None and done >= stop_after
        if jax.process_count() == 1:
          sigterm = preempted.flag
        else:  # Every process must stop (and save, a collective) at the same
          # step: they agree at logging steps.
          sigterm = (done % config.log_every_steps == 0
                     and _any_process(preempted.flag))
        if done % config.ckpt_every_steps == 0 or sigterm or stop_now:
          save(done)
        if stop_now:
          manager.wait_until_finished()
          if bar is not None:
            bar.close()
          writer.close()
          manager.close()
          return {"stopped": done}
        if sigterm:
          manager.wait_until_finished()
          if bar is not None:
            bar.close()
          writer.close()  # On a bucket, uploads the rows still in memory.
          manager.close()
          logging.warning("Stopped at step %d after %s.", done, preempted.name)
          if is_main:
            print(f"mexd.train: stopped at step {done} after {preempted.name} "
                  f"(checkpoint saved); resume with the same command: "
                  f"{_resume_command()}", file=sys.stderr, flush=True)
          raise SystemExit(preempted.exit_status)
    if bar is not None:
      bar.close()
    train_seconds = time.time() - t0
    if total_steps not in manager.all_steps():
      save(total_steps, force=True)
    manager.wait_until_finished()

    results = {split: evaluate(state, split) for split in ("val", "test")}
    results["steps"] = total_steps
    results["checkpoint_step"] = total_steps  # The step evaluated here.
    results["train_seconds"] = train_seconds
    results["method_state"] = jax.tree.map(
        lambda x: np.asarray(x).tolist(), jax.device_get(state.method_state))
    results["skipped_steps"] = int(jax.device_get(state.skipped))
    if is_main:
      paths.write_json(paths.path(workdir) / "results.json", results, indent=2)
      print(f"\nPer-exit top-1 accuracy ({config.data.name}, method "
            f"{config.method}, {total_steps} steps, {train_seconds:.1f}s):")
      print(predict.format_table({"val": results["val"], "test": results["test"]}))
    writer.close()
    manager.close()
    return results


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


def _any_process(flag: bool) -> bool:
  """Whether `flag` is set on any process (a collective: all must call)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def _check_finite(rows, first_step: int, config):
  """Stops the run at the first non-finite step (config.nonfinite="stop")."""
  for i, r in enumerate(rows):
    if r["nonfinite"] > 0 and config.get("nonfinite", "stop") == "stop":
      bad = sorted(k for k, v in r.items()
                   if k.startswith("loss") and not np.isfinite(v))
      what = (f"non-finite loss term(s) {', '.join(bad)}" if bad
              else "non-finite gradients")
      raise FloatingPointError(
          f"step {first_step + i + 1}: {what}; the update was not applied. "
          "Lower the learning rate, or set --config.nonfinite=skip to skip "
          "such steps.")


FLAGS = flags.FLAGS


def define_flags():
  # Without a --config=... in sys.argv, ml_collections loads the default
  # recipe and applies the --config.KEY overrides of sys.argv here already
  # (a misspelled key fails now); `__main__` below names the recipe so that
  # parse_flags sees every override.
  try:
    config_flags.DEFINE_config_file(
        "config", _DEFAULT_CONFIG, "Recipe: an installed name "
        f"({', '.join(configs.names())}) or a config file defining "
        "get_config(arg); 'NAME:arg' or 'path.py:arg' selects a variant.",
        lock_config=True)
  except (AttributeError, KeyError, flags.Error) as e:
    _override_error(configs.resolve_argv(sys.argv), e)
  flags.DEFINE_string("workdir", None, "Work directory: a local folder or "
                      "gs://BUCKET/PATH (default: runs/<data>-<method>).")
  flags.DEFINE_bool("overwrite", False, "Start afresh in a workdir that "
                    "holds a run of another config (old checkpoints are "
                    "moved aside).")
  flags.DEFINE_bool("multiprocess", False, "Call jax.distributed.initialize()"
                    " (set automatically on TPU pods / SLURM / with "
                    "JAX_COORDINATOR_ADDRESS).")


def _process_env():
  """num_processes / process_id from JAX_NUM_PROCESSES / JAX_PROCESS_ID.

  jax reads JAX_COORDINATOR_ADDRESS and detects SLURM, Cloud TPU, Open MPI
  and k8s by itself; elsewhere (launch/local_multiprocess.py) the process
  count and id come from these variables.
  """
  names = {"num_processes": "JAX_NUM_PROCESSES",
           "process_id": "JAX_PROCESS_ID"}
  return {k: int(os.environ[v]) for k, v in names.items()
          if os.environ.get(v)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  hostmem.tune_malloc()  # Before XLA's threads allocate; see mexd.hostmem.
  if FLAGS.multiprocess or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(**_process_env())
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO.
  config = FLAGS.config
  workdir = FLAGS.workdir or os.path.join(
      "runs", f"{config.data.name}-{config.method}")
  logging.info("Config:\n%s", config)
  try:
    with errors.one_line_errors("mexd.train"):
      train_and_evaluate(config, workdir, overwrite=FLAGS.overwrite)
  except KeyboardInterrupt:  # Ctrl-C outside the training loop (which saves
    # and exits by itself): before the first step, or in the final eval.
    print("mexd.train: interrupted (Ctrl-C) outside the training loop; "
          "nothing is lost: the same command starts the run or resumes it "
          f"from its last checkpoint: {_resume_command()}", file=sys.stderr,
          flush=True)
    raise SystemExit(130) from None


def _usage_error(msg: str):
  """`mexd.train: error: msg` on stderr and exit status 2 (a usage error)."""
  print(f"mexd.train: error: {' '.join(msg.split())}", file=sys.stderr)
  raise SystemExit(2)


def _join_config(argv):
  """argv with `--config V` written as `--config=V` (one form to parse)."""
  out, i = [], 0
  while i < len(argv):
    if i and argv[i] == "--config" and i + 1 < len(argv):
      out.append(f"--config={argv[i + 1]}")
      i += 2
      continue
    out.append(argv[i])
    i += 1
  return out


def _config_file(argv):
  """The file part of the last --config=FILE[:arg] of argv, or None."""
  value = None
  for a in argv[1:]:
    if a.startswith("--config="):
      value = a[len("--config="):]
  if value is None:
    return None
  return value.split(":", 1)[0] if ".py:" in value else value


def _config_keys(config, prefix=""):
  """Every dotted key of a ConfigDict (the valid --config.KEY overrides)."""
  out = []
  for k, v in config.items():
    out.append(prefix + k)
    if isinstance(v, ml_collections.ConfigDict):
      out += _config_keys(v, prefix + k + ".")
  return out


def _bad_override(argv, config_file):
  """(flag, closest valid keys) of the first --config.KEY not in the config."""
  import difflib  # pylint: disable=g-import-not-at-top
  try:
    keys = _config_keys(_recipe(argv, config_file))
  except Exception:  # pylint: disable=broad-except
    return None
  for a in argv[1:]:
    if a.startswith("--config.") and "=" in a:
      key = a[len("--config."):].split("=", 1)[0]
      if key not in keys:
        return key, difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
  return None


def _override_error(argv, e):
  """Exits with one line for a flag error `e` (a misspelled --config.KEY:
  the closest valid keys)."""
  if os.environ.get("MEXD_TRACEBACK"):
    raise e
  config_file = _config_file(argv) or _DEFAULT_CONFIG
  bad = _bad_override(argv, config_file)
  if bad is not None:
    key, close = bad
    hint = (f"did you mean {' or '.join('--config.' + c for c in close)}?"
            if close else "see the recipe for its keys")
    _usage_error(f"--config.{key}: no such config key in {config_file}; "
                 f"{hint}")
  # An error raised by get_config(arg) (e.g. a bad recipe argument) reaches
  # here wrapped with its traceback text: keep its last line.
  import re  # pylint: disable=g-import-not-at-top
  raised = re.findall(r"^\s*(?:\w+\.)*\w*Error: (.+)$", str(e), re.M)
  if "Traceback" in str(e) and raised:
    _usage_error(f"--config: {raised[-1]}")
  _usage_error(f"--config: {' '.join(str(e).split())[:300]}")


def _recipe(argv, config_file):
  """The recipe's ConfigDict for the last --config=FILE[:arg] of argv."""
  import runpy  # pylint: disable=g-import-not-at-top
  arg = None
  for a in argv[1:]:
    if a.startswith("--config=") and ".py:" in a:
      arg = a.split(".py:", 1)[1]
  fn = runpy.run_path(config_file)["get_config"]
  return fn(arg) if arg else fn()


def _lookup(config, dotted):
  """(found, value) of a dotted key in a ConfigDict."""
  node = config
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False, None
    node = node[part]
  return True, node


def _split_late_overrides(argv, config_file):
  """Takes out the --config.KEY=VALUE that config_flags cannot apply.

  Two kinds: KEY's value in the recipe is None (an optional hyperparameter
  left unset, e.g. loss.sdn.tau_max, whose type config_flags cannot infer),
  and model.kwargs.NAME that the recipe does not set (any keyword of the
  model, `mexd.models.model_keywords`). Returns (argv without them,
  [(KEY, VALUE text)]); `_apply_late_overrides` sets them after parsing.
  """
  items = [(i, a[len("--config."):].split("=", 1)) for i, a in
           enumerate(argv) if i and a.startswith("--config.") and "=" in a]
  if not items:
    return argv, []
  try:
    recipe = _recipe(argv, config_file)
  except Exception:  # pylint: disable=broad-except  # Reported by FLAGS().
    return argv, []
  late, drop = [], set()
  for i, (key, text) in items:
    found, value = _lookup(recipe, key)
    if (found and value is None) or (
        not found and key.startswith("model.kwargs.")
        and key.count(".") == 2):
      late.append((key, text))
      drop.add(i)
  return [a for i, a in enumerate(argv) if i not in drop], late


def _literal(text: str):
  """A Python literal of a flag value ('(0.1, 0.2)', '3', 'true'), else the
  text itself (a string)."""
  import ast  # pylint: disable=g-import-not-at-top
  low = text.strip().lower()
  if low in ("true", "false"):
    return low == "true"
  if low in ("none", "null"):
    return None
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text
  return tuple(value) if isinstance(value, list) else value


def _apply_late_overrides(config, late):
  """Sets the overrides taken out by `_split_late_overrides` on `config`."""
  for key, text in late:
    *path, last = key.split(".")
    node = config
    for part in path:
      node = node[part]
    if path == ["model", "kwargs"]:
      valid = models.model_keywords(config.model.name)
      if last not in valid:
        _usage_error(f"--config.{key}: model {config.model.name} has no "
                     f"keyword {last!r}; its keywords: "
                     f"{', '.join(sorted(valid))}")
    with node.unlocked():
      node[last] = _literal(text)


def parse_flags(argv):
  """absl's flag parsing, with `--config=NAME` resolved (mexd.configs).

  A bad --config (missing file, syntax error, get_config not returning a
  ConfigDict, a misspelled --config.KEY) is one `mexd.train: error:` line
  and exit status 2, before anything is written. `--config.KEY=VALUE` also
  sets a hyperparameter whose default is None (e.g. loss.sdn.tau_max) and
  any keyword of the model (`mexd.models.model_keywords`) the recipe does
  not set; VALUE is read as a Python literal ('(0.1, 0.2)', '3', 'conv').
  """
  argv = _join_config(configs.resolve_argv(argv))
  config_file = _config_file(argv) or _DEFAULT_CONFIG
  if not os.path.isfile(config_file):
    _usage_error(f"--config: no such file {config_file}; pass an installed "
                 f"recipe name ({', '.join(configs.names())}) or the path "
                 "of a .py file that defines get_config()")
  if _config_file(argv) is None:  # Name it: config_flags then defines the
    argv = argv[:1] + [f"--config={config_file}"] + argv[1:]  # KEY flags
    # from the argv it parses, not from sys.argv at declaration.
  argv, late = _split_late_overrides(argv, config_file)
  saved_argv = sys.argv
  try:
    # config_flags defines the --config.KEY flags from sys.argv: show it
    # argv without the late overrides (sys.argv keeps them for the resume
    # command).
    sys.argv = argv
    rest = FLAGS(argv)
    config = FLAGS.config
  except SyntaxError as e:
    _usage_error(f"--config: syntax error in {config_file} line {e.lineno}: "
                 f"{e.msg}; fix the file")
  except (AttributeError, KeyError, flags.Error, OSError) as e:
    _override_error(argv, e)
  finally:
    sys.argv = saved_argv
  if not isinstance(config, ml_collections.ConfigDict):
    _usage_error(f"--config: get_config() of {config_file} returned a "
                 f"{type(config).__name__}, not an ml_collections.ConfigDict;"
                 " make it return one (e.g. start from "
                 "mexd.config_lib.base_config())")
  _apply_late_overrides(config, late)
  return rest


if __name__ == "__main__":
  _argv = sys.argv  # Kept whole for the resume command.
  sys.argv = _join_config(sys.argv)
  if _config_file(sys.argv) is None:
    sys.argv = sys.argv[:1] + [f"--config={_DEFAULT_CONFIG}"] + sys.argv[1:]
  define_flags()
  sys.argv = _argv
  app.run(main, flags_parser=parse_flags)
