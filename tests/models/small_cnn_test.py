"""Shape and staged-execution tests of the small multi-exit CNNs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mexd import models


@pytest.mark.parametrize("name,hw,exits", [("digits_cnn", 8, 3),
                                           ("fashion_cnn", 28, 4)])
@pytest.mark.parametrize("batch", [1, 5])
def test_shapes_and_staged_equal_one_pass(name, hw, exits, batch):
  model = models.get_model(name, num_classes=10)
  variables = model.init(jax.random.key(0), jnp.zeros((2, hw, hw, 1)))
  x = jax.random.normal(jax.random.key(1), (batch, hw, hw, 1))
  logits, aux = jax.jit(model.apply)(variables, x)
  chex.assert_shape(logits, (exits, batch, 10))
  assert aux["features"].shape[:2] == (exits, batch)
  h = x
  for k in range(exits):
    h, z, _ = model.apply(variables, k, h, method="stage")
    np.testing.assert_allclose(z, logits[k], atol=1e-5)


def test_batch_stats_update_only_in_train_mode():
  model = models.get_model("digits_cnn", num_classes=10)
  variables = model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)))
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1)) + 3.0
  _, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
  diff = jax.tree.map(lambda a, b: jnp.abs(a - b).max(),
                      upd["batch_stats"], variables["batch_stats"])
  assert max(jax.tree.leaves(diff)) > 1e-3
  # In eval mode nothing is mutable and the output uses running averages.
  z1, _ = model.apply(variables, x, train=False)
  z2, _ = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(z1, z2)


def test_unknown_model_lists_valid_names():
  with pytest.raises(ValueError, match="valid names: .*digits_cnn"):
    models.get_model("resnet999", num_classes=10)
