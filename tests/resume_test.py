"""An interrupted run resumed from its workdir ends where an uninterrupted one does."""

import jax
import pytest
import numpy as np

import helpers
from mexd import train
from mexd import workdir as workdir_lib


def _config():
  return helpers.digits_config(num_epochs=2, ckpt_every_steps=1000,
                               eval_every_epochs=100)


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path):
  full, part = tmp_path / "full", tmp_path / "part"
  train.train_and_evaluate(_config(), str(full))
  stopped = train.train_and_evaluate(_config(), str(part), stop_after=7)
  assert stopped == {"stopped": 7, "checkpoint_step": 7,
                     "steps": 2 * ((1438 - 180) // 64)}
  res = train.train_and_evaluate(_config(), str(part))
  a = workdir_lib.load_variables(str(full))
  b = workdir_lib.load_variables(str(part))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert res["steps"] == 2 * ((1438 - 180) // 64)
