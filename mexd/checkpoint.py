"""A thin orbax `CheckpointManager` wrapper: save, restore-or-init, wait.

Checkpoints live in `<workdir>/checkpoints/<step>/` with two items: "state"
(the TrainState) and "integrity" (the SHA-256 of the state's bytes, computed
on the host at save time). Restoring checks the digest, so a truncated or
corrupted checkpoint is detected and an older one is used instead. Restoring
uses an abstract state that carries the target shardings, so a checkpoint
written on 8 devices restores on 1 device and back.
"""

import hashlib
from typing import Any, Optional

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from mexd import paths


def make_manager(workdir: str, *, max_to_keep: int = 3,
                 save_interval_steps: int = 1) -> ocp.CheckpointManager:
  """The run's checkpoint manager (async saves, keeps the last k).

  `workdir` is a local folder or a bucket URI (gs://BUCKET/PATH), which
  orbax reaches through etils.epath and tensorstore.
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
      create=True, enable_async_checkpointing=True)
  return ocp.CheckpointManager(paths.path(workdir) / "checkpoints",
                               options=options)


def abstract_like(state, shardings) -> Any:
  """ShapeDtypeStructs of `state` (a pytree of arrays or shape structs)."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state, shardings)


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def digest(state) -> str:
  """SHA-256 over the path, dtype, shape and bytes of every leaf.

  Leaves are taken in the order of their paths (field and key names), so a
  state restored as nested dicts has the digest of the dataclass it was.
  """
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
  named = sorted(("/".join(_key_name(k) for k in path), leaf)
                 for path, leaf in leaves)
  h = hashlib.sha256()
  for name, leaf in named:
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{name}:{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


class CorruptCheckpointError(RuntimeError):
  """A checkpoint's bytes do not match the digest saved with it."""


def restore_step(manager: ocp.CheckpointManager, step: int, abstract_state):
  """Restores and verifies checkpoint `step`; raises if it is damaged."""
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      integrity=ocp.args.JsonRestore()))
  expected = restored["integrity"]["sha256"]
  if digest(restored["state"]) != expected:
    raise CorruptCheckpointError(
        f"checkpoint {step} does not match its saved SHA-256 digest")
  return restored["state"]


def restore_latest(manager: ocp.CheckpointManager, abstract_state
                   ) -> Optional[Any]:
  """Restores the newest readable checkpoint, or returns None if there is none.

  A checkpoint that fails to load (truncated, corrupted) is skipped with a
  warning and the previous one is tried; if checkpoints exist but none can be
  read, this raises instead of silently starting from scratch.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  errors = []
  for step in steps:
    try:
      state = restore_step(manager, step, abstract_state)
      if errors:
        logging.warning("Fell back to checkpoint %d; unreadable: %s", step,
                        "; ".join(errors))
      return state
    except Exception as e:  # pylint: disable=broad-except
      msg = f"step {step}: {type(e).__name__}: {str(e)[:200]}"
      logging.warning("Checkpoint unreadable, trying an older one (%s)", msg)
      errors.append(msg)
  if errors:
    raise RuntimeError(
        f"no readable checkpoint in {manager.directory} "
        f"({'; '.join(errors)}); refusing to train from scratch over it. "
        "Move the directory away to start afresh.")
  return None


def save(manager: ocp.CheckpointManager, step: int, state,
         force: bool = False) -> bool:
  """Saves `state` and its digest at `step` (the write is async).

  Returns whether a save was started.
  """
  return manager.save(step, force=force, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      integrity=ocp.args.JsonSave({"sha256": digest(state)})))
