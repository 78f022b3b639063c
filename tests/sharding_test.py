"""Data parallelism: 8 fake devices compute what 1 device computes."""

import functools

import jax
import numpy as np
import pytest

import helpers

from mexd.configs import digits
from mexd import losses
from mexd import models
from mexd import optim
from mexd import sharding
from mexd import state as state_lib
from mexd import steps
from mexd.data import pipeline
from mexd import data as data_lib


def _one_step(num_devices, method_name):
  config = digits.get_config()
  splits, _ = data_lib.load_splits(config.data)
  ds = splits["train"]
  model = models.get_model("digits_cnn", num_classes=10)
  method = losses.get_method(method_name)
  tx, _ = optim.make_optimizer(config.optimizer, 10, 2)
  mesh = sharding.make_mesh(num_devices)
  repl, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  init = functools.partial(state_lib.create, model=model, method=method,
                           tx=tx, image_shape=ds.image_shape)
  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  state_sh = jax.tree.map(lambda _: repl, abstract)
  state = jax.jit(init, out_shardings=state_sh)(jax.random.PRNGKey(0))
  step = jax.jit(steps.make_train_step(
      model=model, method=method, tx=tx, mean=ds.mean, std=ds.std,
      crop_pad=1, flip=False, steps_per_epoch=10, num_epochs=2),
      in_shardings=(state_sh, bsh), out_shardings=(state_sh, repl))
  batches = pipeline.TrainBatches(ds, 64, seed=0)
  batch = pipeline.make_global(batches.host_batch(3), bsh)
  assert len(batch["image"].sharding.device_set) == num_devices
  new_state, metrics = step(state, batch)
  return jax.device_get(new_state), jax.device_get(metrics)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pl", "imta"])
def test_eight_devices_equal_one_device(method):
  s1, m1 = _one_step(1, method)
  s8, m8 = _one_step(8, method)
  np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
  # Parameters, batch-norm statistics (global-batch statistics), momentum.
  for a, b in zip(jax.tree.leaves((s1.params, s1.batch_stats, s1.opt_state)),
                  jax.tree.leaves((s8.params, s8.batch_stats, s8.opt_state))):
    helpers.assert_close_norm(a, b)
  # The step really updated something (non-zero gradients, finite).
  assert m1["grad_norm"] > 1e-3 and m1["nonfinite"] == 0


def test_batch_not_divisible_by_devices_is_a_clear_error():
  mesh = sharding.make_mesh(8)
  try:
    sharding.check_batch_size(60, mesh)
  except ValueError as e:
    assert "not divisible by the 8 devices" in str(e) and "56" in str(e)
  else:
    raise AssertionError("expected a ValueError")
