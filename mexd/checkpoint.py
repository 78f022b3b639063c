"""A thin orbax `CheckpointManager` wrapper: save, restore-or-init, wait.

Checkpoints live in `<workdir>/checkpoints/<step>/` with two items: "state"
(the TrainState) and "integrity" (the SHA-256 of the state's bytes, computed
on the host at save time). Restoring checks the digest, so a truncated or
corrupted checkpoint is detected and an older one is used instead. Restoring
uses an abstract state that carries the target shardings, so a checkpoint
written on 8 devices restores on 1 device and back.
"""

import hashlib
import time
from typing import (Any, Callable, Dict, NamedTuple, Optional, Sequence,
                    Tuple, Union)

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from mexd import errors
from mexd import paths


def make_manager(workdir: str, *, max_to_keep: int = 3,
                 save_interval_steps: int = 1,
                 data: bool = False) -> ocp.CheckpointManager:
  """The run's checkpoint manager (async saves, keeps the last k).

  `workdir` is a local folder or a bucket URI (gs://BUCKET/PATH), which
  orbax reaches through etils.epath and tensorstore. `data`: checkpoints
  also hold the streaming input pipeline's position (item "data").
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
      create=True, enable_async_checkpointing=True)
  return ocp.CheckpointManager(paths.path(workdir) / "checkpoints",
                               options=options,
                               item_handlers=item_handlers(data))


def item_handlers(data: bool = False):
  """The handlers of a checkpoint's items. Naming them lets
  `item_metadata(step)` describe the saved arrays before restoring.

  "data" (streamed runs): the input pipeline's position, one JSON file per
  process written by grain's orbax handler (`mexd.data.stream.Position`).
  """
  handlers = {"state": ocp.StandardCheckpointHandler(),
              "integrity": ocp.JsonCheckpointHandler()}
  if data:
    from mexd.data import stream  # pylint: disable=g-import-not-at-top
    handlers["data"] = stream.import_grain().checkpoint.CheckpointHandler()
  return handlers


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


class StructureMismatchError(errors.InputError, RuntimeError):
  """A checkpoint holds arrays of other names, shapes or dtypes than the
  state this code builds (a code or config change since it was written).

  An InputError (the work directory holds checkpoints of another structure,
  a user situation) and a RuntimeError, for callers that catch that."""


# Top-level state fields that older checkpoints hold and restoring drops:
# "teacher" (the frozen ERDE/KD teacher, now read from its own run).
DROPPED_FIELDS = ("teacher",)


def _named_leaves(tree) -> Dict[str, Any]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(_key_name(k) for k in path): leaf for path, leaf in leaves}


def _spec(x) -> str:
  return f"{np.dtype(x.dtype).name}{list(x.shape)}"


def saved_metadata(manager: ocp.CheckpointManager, step: int):
  """The saved state's tree of array metadata (.shape, .dtype), or None
  when the checkpoint cannot describe itself."""
  try:
    return manager.item_metadata(step)["state"]
  except Exception:  # pylint: disable=broad-except
    return None


def match_structure(step: int, saved, abstract_state) -> Dict[str, Any]:
  """Checks the saved arrays against the restore target.

  Args:
    step: the checkpoint's step (for the message).
    saved: `saved_metadata(...)` of that step.
    abstract_state: the restore target (ShapeDtypeStructs).

  Returns:
    name -> metadata of the saved arrays under DROPPED_FIELDS (restored, so
    that the digest can be checked, then dropped); {} for a current
    checkpoint.

  Raises:
    StructureMismatchError naming the arrays that are missing, unexpected or
    of another shape or dtype.
  """
  have, want = _named_leaves(saved), _named_leaves(abstract_state)
  dropped = {n: m for n, m in have.items()
             if n.split("/")[0] in DROPPED_FIELDS and n not in want}
  missing = sorted(set(want) - set(have))
  extra = sorted(set(have) - set(want) - set(dropped))
  differ = sorted(f"{n} ({_spec(have[n])} saved, {_spec(want[n])} expected)"
                  for n in set(have) & set(want)
                  if _spec(have[n]) != _spec(want[n]))
  if not (missing or extra or differ):
    return dropped
  show = lambda names: ", ".join(names[:4]) + (
      f" and {len(names) - 4} more" if len(names) > 4 else "")
  parts = ([f"missing {show(missing)}"] if missing else []) + (
      [f"unexpected {show(extra)}"] if extra else []) + (
          [f"of another shape or dtype: {show(differ)}"] if differ else [])
  raise StructureMismatchError(
      f"checkpoint {step} holds a state of another structure than this code "
      f"and config build ({'; '.join(parts)})")


def restore_step(manager: ocp.CheckpointManager, step: int, abstract_state):
  """Restores and verifies checkpoint `step`; raises if it is damaged.

  The saved arrays are first checked against `abstract_state`
  (`match_structure`); fields of older checkpoints that the state no longer
  has (DROPPED_FIELDS) are read, verified with the rest and dropped.
  """
  saved = saved_metadata(manager, step)
  dropped = {} if saved is None else match_structure(step, saved,
                                                     abstract_state)
  target = abstract_state
  if dropped:  # Restore as the nested dict the checkpoint holds.
    host = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=host),
        saved)
    want = _named_leaves(abstract_state)
    target = jax.tree_util.tree_map_with_path(
        lambda path, t: want.get("/".join(_key_name(k) for k in path), t),
        target)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target),
      integrity=ocp.args.JsonRestore()))
  expected = restored["integrity"]["sha256"]
  if digest(restored["state"]) != expected:
    raise CorruptCheckpointError(
        f"checkpoint {step} does not match its saved SHA-256 digest")
  state = restored["state"]
  if dropped:
    got = _named_leaves(state)
    treedef = jax.tree.structure(abstract_state)
    names = list(_named_leaves(abstract_state))
    state = jax.tree.unflatten(treedef, [got[n] for n in names])
  return state


class Restored(NamedTuple):
  """What `restore_latest` found.

  step: the restored checkpoint's step. state: the restored pytree.
  unreadable: (step, reason) of every newer checkpoint that failed to read
  or verify (the run is not at its newest step when this is non-empty).
  data: this process's saved input-pipeline position (`restore_latest(...,
  data=True)`), None when the checkpoint holds none for this process.
  """
  step: int
  state: Any
  unreadable: Tuple[Tuple[int, str], ...]
  data: Optional[Dict[str, Any]] = None


AbstractFn = Callable[[int], Any]


def restore_latest(manager: ocp.CheckpointManager,
                   abstract_state: Union[Any, AbstractFn],
                   data: bool = False) -> Optional[Restored]:
  """Restores the newest checkpoint that reads and verifies, or None if none.

  The one restore rule of mexd: training (resume), evaluation and an ERDE
  teacher all read a run through this. Checkpoints are tried newest first;
  one that fails (a missing or damaged file, bytes that do not match the
  saved SHA-256) is skipped with a warning and recorded in `unreadable`.
  Only finished checkpoints are seen (orbax lists no step whose write is in
  flight), so a run that is still training can be read.

  Args:
    manager: the run's checkpoint manager.
    abstract_state: the restore target, a pytree of ShapeDtypeStructs with
      shardings, or a function step -> that pytree (e.g. read from the
      step's own metadata).

  Returns:
    Restored(step, state, unreadable), or None when there is no checkpoint.

  Raises:
    StructureMismatchError: every checkpoint is intact but holds a state of
      another structure (names the arrays that differ).
    RuntimeError: checkpoints exist but none can be read (refusing to train
      from scratch over them).
  """
  steps = sorted(manager.all_steps(), reverse=True)
  failed, mismatch = [], []
  for step in steps:
    try:
      target = (abstract_state(step) if callable(abstract_state)
                else abstract_state)
      state = restore_step(manager, step, target)
      position = restore_position(manager, step) if data else None
      if failed:
        logging.warning("Fell back to checkpoint %d; unreadable: %s", step,
                        "; ".join(f"step {s}: {m}" for s, m in failed))
      return Restored(step, state, tuple(failed), position)
    except StructureMismatchError as e:  # The same for every step.
      mismatch.append(str(e))
      failed.append((step, f"{type(e).__name__}: {str(e)[:200]}"))
    except Exception as e:  # pylint: disable=broad-except
      msg = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
      logging.warning("Checkpoint %d unreadable, trying an older one (%s)",
                      step, msg)
      failed.append((step, msg))
  if mismatch and len(mismatch) == len(failed):
    raise StructureMismatchError(
        f"{manager.directory}: {mismatch[0]}. The files are intact; they "
        "were written by another version of mexd or another model. Restore "
        "them with the code that wrote them, or start afresh in a new work "
        "directory (or with --overwrite, which moves them aside).")
  if failed:
    raise RuntimeError(
        f"no readable checkpoint in {manager.directory} ("
        f"{'; '.join(f'step {s}: {m}' for s, m in failed)}); refusing to "
        "train from scratch over it. Move the directory away to start "
        "afresh.")
  return None


def set_aside(manager: ocp.CheckpointManager, steps: Sequence[int]
              ) -> Optional[epath.Path]:
  """Moves the checkpoints `steps` to <workdir>/damaged-checkpoints/.

  Training calls this for the unreadable checkpoints newer than the one it
  resumes from, so that it writes those steps again (orbax never replaces
  a step that exists) and evaluation cannot meet them. Returns the folder
  they went to (None if `steps` is empty). Process 0 moves; every process
  reloads the manager's step list.
  """
  if not steps:
    return None
  root = epath.Path(manager.directory)
  aside = root.parent / "damaged-checkpoints"
  if jax.process_index() == 0:
    aside.mkdir(parents=True, exist_ok=True)
    stamp = int(time.time())
    for step in steps:
      src = root / str(step)
      if src.exists():
        src.rename(aside / f"{step}-{stamp}")
  if jax.process_count() > 1:  # Every process sees the moved steps.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("mexd_set_aside")
  manager.reload()
  logging.warning("Moved the unreadable checkpoints %s to %s; they are "
                  "written again.", list(steps), aside)
  return aside


def restore_position(manager: ocp.CheckpointManager, step: int
                     ) -> Optional[Dict[str, Any]]:
  """This process's input-pipeline position saved at `step`, or None when
  there is none for it (e.g. written by another number of processes; the
  position is then recomputed from the step, of which it is a function)."""
  from mexd.data import stream  # pylint: disable=g-import-not-at-top
  grain = stream.import_grain()
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        data=grain.checkpoint.CheckpointRestore(stream.Position())))
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("No input position for this process in checkpoint %d "
                    "(%s); it is recomputed from the step.", step,
                    " ".join(str(e).split())[:200])
    return None
  return restored["data"].state


def save(manager: ocp.CheckpointManager, step: int, state,
         force: bool = False, data: Optional[Dict[str, Any]] = None
         ) -> bool:
  """Saves `state` and its digest at `step` (the write is async).

  Args:
    manager: the run's manager (`make_manager(..., data=True)` for `data`).
    step: the global step.
    state: the TrainState.
    force: save even off the save interval.
    data: the input pipeline's position to save with it (JSON-able dict,
      `mexd.data.stream.TrainStream.position`), or None.

  Returns whether a save was started.
  """
  items = dict(state=ocp.args.StandardSave(state),
               integrity=ocp.args.JsonSave({"sha256": digest(state)}))
  if data is not None:
    from mexd.data import stream  # pylint: disable=g-import-not-at-top
    grain = stream.import_grain()
    items["data"] = grain.checkpoint.CheckpointSave(stream.Position(data))
  return manager.save(step, force=force, args=ocp.args.Composite(**items))
