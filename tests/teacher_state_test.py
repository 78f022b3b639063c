"""The frozen teacher of ERDE/KD is a step argument, not checkpointed state;
checkpoints written with the teacher inside the state still resume; a state
of another structure is reported by name."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from mexd import checkpoint
from mexd import train
from mexd import workdir as workdir_lib


def _config(method, **overrides):
  c = helpers.digits_config(num_epochs=1, ckpt_every_steps=1000,
                            eval_every_epochs=100, method=method)
  for k, v in overrides.items():
    c[k] = v
  return c


def _student(teacher_dir):
  c = _config("erde")
  c.model.kwargs.widths = (8, 16, 32)
  c.teacher_workdir = str(teacher_dir)
  return c


def _saved_names(workdir, step):
  with checkpoint.make_manager(str(workdir)) as mngr:
    meta = checkpoint.saved_metadata(mngr, step)
  assert meta is not None
  return set(checkpoint._named_leaves(meta))  # pylint: disable=protected-access


@pytest.mark.slow
def test_teacher_outside_state_and_legacy_checkpoint_resumes(tmp_path):
  teacher_dir = tmp_path / "teacher"
  train.train_and_evaluate(_config("ce"), str(teacher_dir))
  teacher_vars = workdir_lib.load_variables(str(teacher_dir))
  n_teacher = len(jax.tree.leaves(teacher_vars))

  full, part = tmp_path / "full", tmp_path / "part"
  res_full = train.train_and_evaluate(_student(teacher_dir), str(full))
  assert train.train_and_evaluate(_student(teacher_dir), str(part),
                                  stop_after=5)["stopped"] == 5
  names = _saved_names(part, 5)
  assert not any(n.startswith("teacher") for n in names), sorted(names)
  assert {"step", "skipped", "rng"} <= names

  # The same checkpoint as older versions wrote it: the teacher inside.
  legacy = tmp_path / "legacy"
  shutil.copytree(part, legacy)
  with checkpoint.make_manager(str(part)) as mngr:
    restored = checkpoint.restore_latest(mngr, lambda s: jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
        checkpoint.saved_metadata(mngr, s)))
  old_state = dict(jax.device_get(restored.state))
  old_state["teacher"] = teacher_vars
  shutil.rmtree(legacy / "checkpoints")
  with checkpoint.make_manager(str(legacy)) as mngr:
    checkpoint.save(mngr, 5, old_state)
    mngr.wait_until_finished()
  legacy_names = _saved_names(legacy, 5)
  assert len([n for n in legacy_names if n.startswith("teacher/")]
             ) == n_teacher

  res_legacy = train.train_and_evaluate(_student(teacher_dir), str(legacy))
  assert res_legacy["test"]["acc"] == res_full["test"]["acc"]
  a = workdir_lib.load_variables(str(full))
  b = workdir_lib.load_variables(str(legacy))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def _tiny_state(**fields):
  state = {"step": jnp.int32(3), "params": {"w": jnp.ones((2, 3))},
           "skipped": jnp.int32(0)}
  state.update(fields)
  return {k: v for k, v in state.items() if v is not None}


def _restore_against(tmp_path, saved, target):
  with checkpoint.make_manager(str(tmp_path)) as mngr:
    checkpoint.save(mngr, 3, saved)
    mngr.wait_until_finished()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                            target)
    return checkpoint.restore_latest(mngr, abstract)


@pytest.mark.parametrize("saved, target, words", [
    # A field the code has and the checkpoint lacks.
    (_tiny_state(skipped=None), _tiny_state(), ["missing skipped"]),
    # A field the checkpoint has and the code lacks.
    (_tiny_state(extra=jnp.zeros(4)), _tiny_state(), ["unexpected extra"]),
    # Another width.
    (_tiny_state(), _tiny_state(params={"w": jnp.ones((2, 4))}),
     ["params/w (float32[2, 3] saved, float32[2, 4] expected)"]),
])
def test_structure_mismatch_names_what_differs(tmp_path, saved, target,
                                               words):
  with pytest.raises(checkpoint.StructureMismatchError) as e:
    _restore_against(tmp_path, saved, target)
  msg = str(e.value)
  for w in words:
    assert w in msg, msg
  assert "checkpoint 3 holds a state of another structure" in msg
  assert "The files are intact" in msg


def test_dropped_field_is_verified_then_dropped(tmp_path):
  saved = _tiny_state(teacher={"params": {"k": jnp.arange(3.0)}})
  got = _restore_against(tmp_path, saved, _tiny_state())
  assert got.step == 3 and not got.unreadable
  assert set(got.state) == {"step", "params", "skipped"}
  np.testing.assert_array_equal(got.state["params"]["w"], np.ones((2, 3)))


def test_current_checkpoint_restores_unchanged(tmp_path):
  got = _restore_against(tmp_path, _tiny_state(), _tiny_state())
  assert int(got.state["step"]) == 3
