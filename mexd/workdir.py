"""The work directory of a run: its config, splits, and loading a finished run.

`prepare` writes config.json and splits.npz, and refuses a directory that
holds a run of a different config (so a typo cannot train over results).
`load_config` / `read_checkpoint` read a run back (evaluation, ERDE teacher).
The work directory is a local folder or a bucket URI (gs://BUCKET/PATH); all
of its I/O goes through etils.epath (mexd/paths.py).
"""

import json
import time
from typing import Any, Dict, List, NamedTuple, Tuple

from etils import epath
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from mexd import checkpoint
from mexd import errors
from mexd import paths

# Fields that may differ between a run and its resumption (they change how a
# run is watched or laid out over devices and processes, not what it
# computes: the streamed batches do not depend on the worker count).
RESUMABLE_FIELDS = ("progress_bar", "log_every_steps", "eval_every_epochs",
                    "ckpt_every_steps", "keep_checkpoints", "eval_batch_size",
                    "num_devices", "data.workers", "data.read_threads")


class WorkdirError(errors.InputError):
  """The work directory cannot be used as asked."""


def _drop_none(d):
  """`d` without None values, recursively (unset placeholders)."""
  if isinstance(d, dict):
    return {k: _drop_none(v) for k, v in d.items() if v is not None}
  return d


def config_diff(old: Dict, new: Dict) -> List[str]:
  """Top-level fields in which two config dicts differ for resumption.

  Fields of `RESUMABLE_FIELDS` are ignored, and so are unset (None) values,
  so a run saved before a new optional field existed still resumes.
  """
  old, new = _drop_none(old), _drop_none(new)
  for name in RESUMABLE_FIELDS:  # Nested ones: "data.workers".
    top, _, sub = name.partition(".")
    if sub:
      for d in (old, new):
        if isinstance(d.get(top), dict):
          d[top] = {k: v for k, v in d[top].items() if k != sub}
  return sorted(k for k in set(old) | set(new)
                if k not in RESUMABLE_FIELDS and old.get(k) != new.get(k))


def _read_config_json(workdir: str) -> Dict:
  """config.json of `workdir`, with a message naming the file if it is bad."""
  path = paths.path(workdir) / "config.json"
  try:
    cfg = paths.read_json(path)
  except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
    raise WorkdirError(
        f"{path} is damaged ({' '.join(str(e).split())[:120]}); it is the "
        "run's saved config: restore it from a copy, or pass --overwrite "
        "(mexd.train) to move the old run aside and start afresh") from None
  if not isinstance(cfg, dict):
    raise WorkdirError(f"{path} is damaged (a JSON {type(cfg).__name__}, not "
                       "an object); restore it from a copy, or pass "
                       "--overwrite (mexd.train) to start afresh")
  return cfg


def load_splits(workdir: str) -> Dict[str, np.ndarray]:
  """The split indices saved in `workdir/splits.npz`."""
  path = paths.path(workdir) / "splits.npz"
  try:
    return paths.load_npz(path)
  except FileNotFoundError:
    raise WorkdirError(
        f"{path} is missing: the run's saved split indices are needed to "
        "evaluate it on the same validation images; restore the file, or "
        "rerun python -m mexd.train with the run's config and --workdir, "
        "which writes it again") from None
  except (ValueError, OSError) as e:
    raise WorkdirError(f"{path} is damaged ({e}); restore it, or rerun "
                       "python -m mexd.train on the work directory, which "
                       "writes it again") from None


def config_to_dict(config) -> Dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def prepare(workdir: str, config, split_indices: Dict[str, np.ndarray], *,
            overwrite: bool = False):
  """Creates or checks `workdir` for `config` (process 0 writes).

  Raises:
    WorkdirError: the directory holds a run of a different config and
      `overwrite` is False.
  """
  wd = paths.path(workdir)
  path = wd / "config.json"
  new = config_to_dict(config)
  if path.exists():
    try:
      old = _read_config_json(workdir)
    except WorkdirError:
      if not overwrite:
        raise
      old = {"damaged": True}
    diff = config_diff(old, new)
    if diff:
      if not overwrite:
        raise WorkdirError(
            f"{workdir} holds a run of a different config (fields differ: "
            f"{', '.join(diff)}). Use another --workdir, or pass --overwrite "
            "to move the old run aside and start afresh.")
      if jax.process_index() == 0:
        _move_aside(wd)
  if jax.process_index() == 0:
    wd.mkdir(parents=True, exist_ok=True)
    paths.write_json(path, new, indent=2, sort_keys=True)
    paths.save_npz(wd / "splits.npz", **split_indices)


def _move_aside(wd: epath.Path):
  """Moves all of `wd` but earlier replaced-* folders and the lock to
  wd/replaced-<time>/.

  config.json goes first, copied then deleted: on an object store a folder
  exists only once it holds a file, and epath renames only into a folder
  that exists.
  """
  aside = wd / f"replaced-{int(time.time())}"
  aside.mkdir()
  (wd / "config.json").copy(aside / "config.json")
  (wd / "config.json").unlink()
  for child in sorted(wd.iterdir()):
    # The lock is this run's (mexd.lock), not the old run's.
    if not child.name.startswith("replaced-") and child.name != ".lock":
      child.rename(aside / child.name)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The ConfigDict saved in `workdir/config.json`."""
  path = paths.path(workdir) / "config.json"
  if not path.exists():
    raise WorkdirError(f"{workdir} is not a mexd run (no config.json); "
                       "pass the --workdir of a training run")
  return ml_collections.ConfigDict(_read_config_json(workdir))


class RunCheckpoint(NamedTuple):
  """A run's newest readable checkpoint, read by `read_checkpoint`.

  variables: {"params", "batch_stats"} as host numpy arrays. step: its
  training step. unreadable: (step, reason) of newer checkpoints that could
  not be read.
  """
  variables: Dict[str, Any]
  step: int
  unreadable: Tuple[Tuple[int, str], ...]


def read_checkpoint(workdir: str) -> RunCheckpoint:
  """The model variables of the newest readable checkpoint in `workdir`.

  The same rule as training's resume (`checkpoint.restore_latest`): newest
  first, a checkpoint that fails to read or verify is skipped. Each step is
  restored against its own saved metadata, as host arrays, so the layout of
  the saving run does not matter (any device count can use them). A run
  that is still training can be read: only finished checkpoints are seen.

  Raises:
    WorkdirError: no checkpoint folder, or no finished checkpoint in it.
    RuntimeError: checkpoints exist but none can be read.
  """
  ckpt_dir = paths.path(workdir) / "checkpoints"
  if not ckpt_dir.is_dir():
    raise WorkdirError(f"{workdir} has no checkpoint (no {ckpt_dir}); train "
                       "it first with python -m mexd.train "
                       f"--workdir={workdir}")
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  # With the handlers named, item_metadata() describes the arrays (else it
  # is None and orbax restores onto the saving run's devices). A streamed
  # run's checkpoints also hold its input position (item "data").
  streamed = any(True for _ in ckpt_dir.glob("*/data"))
  with ocp.CheckpointManager(
      ckpt_dir, item_handlers=checkpoint.item_handlers(streamed)) as mngr:
    if not mngr.all_steps():
      raise WorkdirError(f"{ckpt_dir} holds no finished checkpoint")

    def abstract(step):
      meta = checkpoint.saved_metadata(mngr, step)
      if meta is None:
        raise ValueError(f"checkpoint {step} has no readable metadata")
      return jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), meta)

    restored = checkpoint.restore_latest(mngr, abstract)
  state = restored.state
  return RunCheckpoint(
      jax.device_get({"params": state["params"]["model"],
                      "batch_stats": state["batch_stats"]}),
      restored.step, restored.unreadable)


def load_variables(workdir: str) -> Dict[str, Any]:
  """{"params", "batch_stats"} of the newest readable checkpoint in `workdir`
  (`read_checkpoint(workdir).variables`)."""
  return read_checkpoint(workdir).variables
