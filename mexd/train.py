"""Trains a multi-exit network: `python -m mexd.train [--config=...] [--workdir=...]`.

With no flags it trains the 3-exit digits CNN with Phuong & Lampert
distillation on scikit-learn's bundled digits (configs/digits.py) and prints
the per-exit accuracy. The same command scales from a CPU laptop to a TPU pod
slice: the global batch is sharded over every device of every host.
Re-running the same command resumes from the newest checkpoint.

This module is the command line: the recipe flag and its overrides, the
process set-up (host malloc, jax.distributed) and one-line errors. The
training itself is `mexd.trainer.train_and_evaluate` (re-exported here),
which also documents the work directory.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from mexd import configs
from mexd import errors
from mexd import models
from mexd import preemption
from mexd import trainer
from mexd.cpu import hostmem

_DEFAULT_CONFIG = configs.path("digits")


# The library entry point (`from mexd import train; train.train_and_evaluate`).
train_and_evaluate = trainer.train_and_evaluate
build_method = trainer.build_method


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
  hostmem.tune_malloc()  # Before XLA's threads allocate; see mexd.cpu.hostmem.
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
          f"from its last checkpoint: {preemption.resume_command()}",
          file=sys.stderr, flush=True)
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
  # An error of get_config(arg) reaches here as absl's flag error, whose
  # __context__ is ml_collections' re-raise of it (same type, its traceback
  # in the text), or (KeyError, AttributeError) as it is. A bad input
  # (errors.InputError, e.g. a bad recipe argument) is one line, the last
  # line of that traceback; any other error is a bug in the recipe and keeps
  # its traceback.
  inner = e.__context__
  if (isinstance(inner, (TypeError, ValueError))
      and "Error whilst parsing config file" in str(inner)
      and not isinstance(inner, errors.InputError)):
    raise inner
  if isinstance(e, (AttributeError, KeyError)):
    raise e
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
