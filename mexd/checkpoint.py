"""A thin orbax `CheckpointManager` wrapper: save, restore-or-init, wait.

Checkpoints live in `<workdir>/checkpoints/<step>/`. Restoring uses an
abstract state that carries the target shardings, so a checkpoint written on
8 devices restores on 1 device and back.
"""

import os
from typing import Any, Optional

from absl import logging
import jax
import orbax.checkpoint as ocp


def make_manager(workdir: str, *, max_to_keep: int = 3,
                 save_interval_steps: int = 1) -> ocp.CheckpointManager:
  """The run's checkpoint manager (async saves, keeps the last k)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
      create=True, enable_async_checkpointing=True)
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def abstract_like(state, shardings) -> Any:
  """ShapeDtypeStructs of `state` (a pytree of arrays or shape structs)."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state, shardings)


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
      state = manager.restore(step, args=ocp.args.StandardRestore(
          abstract_state))
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
  """Saves `state` at `step` (async); returns whether a save was started."""
  return manager.save(step, args=ocp.args.StandardSave(state), force=force)
