"""The work directory of a run: its config, splits, and loading a finished run.

`prepare` writes config.json and splits.npz, and refuses a directory that
holds a run of a different config (so a typo cannot train over results).
`load_config` / `load_variables` read a run back (evaluation, ERDE teacher).
The work directory is a local folder or a bucket URI (gs://BUCKET/PATH); all
of its I/O goes through etils.epath (mexd/paths.py).
"""

import json
import time
from typing import Dict, List

from etils import epath
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from mexd import checkpoint
from mexd import paths

# Fields that may differ between a run and its resumption (they change how a
# run is watched or laid out over devices, not what it computes).
RESUMABLE_FIELDS = ("progress_bar", "log_every_steps", "eval_every_epochs",
                    "ckpt_every_steps", "keep_checkpoints", "eval_batch_size",
                    "num_devices")


class WorkdirError(ValueError):
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
  return sorted(k for k in set(old) | set(new)
                if k not in RESUMABLE_FIELDS and old.get(k) != new.get(k))


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
    old = paths.read_json(path)
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
  """Moves all of `wd` but earlier replaced-* folders to wd/replaced-<time>/.

  config.json goes first, copied then deleted: on an object store a folder
  exists only once it holds a file, and epath renames only into a folder
  that exists.
  """
  aside = wd / f"replaced-{int(time.time())}"
  aside.mkdir()
  (wd / "config.json").copy(aside / "config.json")
  (wd / "config.json").unlink()
  for child in sorted(wd.iterdir()):
    if not child.name.startswith("replaced-"):
      child.rename(aside / child.name)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The ConfigDict saved in `workdir/config.json`."""
  path = paths.path(workdir) / "config.json"
  if not path.exists():
    raise WorkdirError(f"{workdir} is not a mexd run (no config.json); "
                       "pass the --workdir of a training run")
  return ml_collections.ConfigDict(paths.read_json(path))


def load_variables(workdir: str):
  """{"params", "batch_stats"} of the newest checkpoint in `workdir`.

  Restored as host numpy arrays (the layout of the saving run does not
  matter), so any device count can use them.
  """
  ckpt_dir = paths.path(workdir) / "checkpoints"
  if not ckpt_dir.is_dir():
    raise WorkdirError(f"{workdir} has no checkpoint (no {ckpt_dir}); train "
                       "it first with python -m mexd.train "
                       f"--workdir={workdir}")
  # With the handler named, item_metadata() describes the arrays (else it
  # is None and orbax restores onto the saving run's devices).
  with ocp.CheckpointManager(ckpt_dir, item_handlers={
      "state": ocp.StandardCheckpointHandler(),
      "integrity": ocp.JsonCheckpointHandler()}) as mngr:
    steps = mngr.all_steps()
    if not steps:
      raise WorkdirError(f"{ckpt_dir} holds no finished checkpoint")
    meta = None
    for step in sorted(steps, reverse=True):  # The newest readable metadata.
      try:
        meta = mngr.item_metadata(step)["state"]
        break
      except Exception:  # pylint: disable=broad-except
        continue
    if meta is None:
      raise RuntimeError(f"no readable checkpoint in {ckpt_dir}")
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), meta)
    restored = checkpoint.restore_latest(mngr, abstract)
  return jax.device_get({"params": restored["params"]["model"],
                         "batch_stats": restored["batch_stats"]})
