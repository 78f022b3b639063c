"""The work directory of a run: its config, splits, and loading a finished run.

`prepare` writes config.json and splits.npz, and refuses a directory that
holds a run of a different config (so a typo cannot train over results).
`load_config` / `load_variables` read a run back (evaluation, ERDE teacher).
"""

import json
import os
import shutil
import time
from typing import Dict, List

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from mexd import checkpoint

# Fields that may differ between a run and its resumption (they change how a
# run is watched or laid out over devices, not what it computes).
_RESUMABLE = ("progress_bar", "log_every_steps", "eval_every_epochs",
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

  Fields of `_RESUMABLE` are ignored, and so are unset (None) values, so a
  run saved before a new optional field existed still resumes.
  """
  old, new = _drop_none(old), _drop_none(new)
  return sorted(k for k in set(old) | set(new)
                if k not in _RESUMABLE and old.get(k) != new.get(k))


def config_to_dict(config) -> Dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def prepare(workdir: str, config, split_indices: Dict[str, np.ndarray], *,
            overwrite: bool = False):
  """Creates or checks `workdir` for `config` (process 0 writes).

  Raises:
    WorkdirError: the directory holds a run of a different config and
      `overwrite` is False.
  """
  path = os.path.join(workdir, "config.json")
  new = config_to_dict(config)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    diff = config_diff(old, new)
    if diff:
      if not overwrite:
        raise WorkdirError(
            f"{workdir} holds a run of a different config (fields differ: "
            f"{', '.join(diff)}). Use another --workdir, or pass --overwrite "
            "to move the old run aside and start afresh.")
      if jax.process_index() == 0:
        aside = os.path.join(workdir, f"replaced-{int(time.time())}")
        os.makedirs(aside)
        for name in os.listdir(workdir):
          if not name.startswith("replaced-"):
            shutil.move(os.path.join(workdir, name), aside)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      json.dump(new, f, indent=2, sort_keys=True)
    np.savez(os.path.join(workdir, "splits.npz"), **split_indices)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The ConfigDict saved in `workdir/config.json`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise WorkdirError(f"{workdir} is not a mexd run (no config.json); "
                       "pass the --workdir of a training run")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_variables(workdir: str):
  """{"params", "batch_stats"} of the newest checkpoint in `workdir`.

  Restored as host numpy arrays (the layout of the saving run does not
  matter), so any device count can use them.
  """
  ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(ckpt_dir):
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
