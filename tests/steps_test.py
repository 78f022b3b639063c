"""The train step: non-finite guard semantics and its compiled size."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mexd import losses
from mexd import optim
from mexd import state as state_lib
from mexd import steps


class _ManyLeaves(nn.Module):
  """A multi-exit toy with `n` Dense layers (2n parameter leaves), 1 exit."""

  n: int

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    h = images.mean((1, 2))  # [B, 3]
    logits = sum(nn.Dense(4, name=f"d{i}")(h) for i in range(self.n))
    return logits[None], {"features": h[None]}  # [1, B, 4], [1, B, 3]


def _compiled_lines(n: int) -> int:
  """Lines of the optimized HLO of the train step of `_ManyLeaves(n)`."""
  model, method = _ManyLeaves(n), losses.get_method("ce")
  cfg = ml_collections.ConfigDict(dict(
      name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
      schedule="constant"))
  tx, _ = optim.make_optimizer(cfg, 10, 2)
  state = jax.eval_shape(
      lambda r: state_lib.create(r, model=model, method=method, tx=tx,
                                 image_shape=(8, 8, 3)),
      jax.random.PRNGKey(0))
  step = steps.make_train_step(
      model=model, method=method, tx=tx, mean=(0.5,) * 3, std=(0.25,) * 3,
      crop_pad=0, flip=False, steps_per_epoch=10, num_epochs=2)
  batch = {"image": jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.uint8),
           "label": jax.ShapeDtypeStruct((2,), jnp.int32)}
  return jax.jit(step).lower(state, batch).compile().as_text().count("\n")


def test_train_step_size_grows_linearly_with_the_leaves():
  # Every parameter, momentum and batch-stat leaf is kept or replaced by one
  # select on the step's `ok` flag. If `ok` (N per-leaf flags) is fused into
  # each select, the step has O(N^2) instructions: MSDNet (~2100 leaves) then
  # did not compile in 25 min / 22 GB. 4x the leaves must give ~4x the HLO.
  small, large = _compiled_lines(10), _compiled_lines(40)
  assert large < 5 * small, (small, large)


def test_all_finite():
  f = jax.jit(steps._all_finite)  # pylint: disable=protected-access
  tree = {"a": jnp.ones((3, 2)), "b": [jnp.zeros(5), jnp.float32(2.0)]}
  assert bool(f(tree))
  for bad in (np.inf, -np.inf, np.nan):
    broken = {**tree, "b": [jnp.zeros(5).at[3].set(bad), jnp.float32(2.0)]}
    assert not bool(f(broken)), bad
  assert not bool(f({**tree, "c": jnp.float32(np.nan)}))
  assert bool(f({}))


def test_gradient_equilibrium_changes_the_backbone_update_only():
  """Same loss; the exit heads' updates are GE-invariant, the blocks' not."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from mexd import models  # pylint: disable=g-import-not-at-top
  from mexd import trainer  # pylint: disable=g-import-not-at-top
  from mexd.configs import digits  # pylint: disable=g-import-not-at-top
  model = models.get_model("digits_cnn", num_classes=10)
  cfg = ml_collections.ConfigDict(dict(
      name="sgd", lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0,
      schedule="constant"))
  tx, _ = optim.make_optimizer(cfg, 10, 2)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 255, (8, 8, 8, 1), dtype=np.uint8),
           "label": rng.integers(0, 10, (8,)).astype(np.int32)}
  ce = losses.get_method("ce")
  out = {}
  for ge in (False, True):
    method = dataclasses.replace(ce, gradient_equilibrium=ge)
    state = state_lib.create(jax.random.PRNGKey(0), model=model,
                             method=method, tx=tx, image_shape=(8, 8, 1))
    step = jax.jit(steps.make_train_step(
        model=model, method=method, tx=tx, mean=(0.5,), std=(0.25,),
        crop_pad=0, flip=False, steps_per_epoch=10, num_epochs=2))
    out[ge] = step(state, batch)
  (s0, m0), (s1, m1) = out[False], out[True]
  np.testing.assert_allclose(m0["loss"], m1["loss"], rtol=1e-6)
  p0, p1 = s0.params["model"], s1.params["model"]
  for k in range(3):
    for a, b in zip(jax.tree.leaves(p0[f"heads_{k}"]),
                    jax.tree.leaves(p1[f"heads_{k}"])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  diff = [float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(p0["blocks_0"]), jax.tree.leaves(p1["blocks_0"]))]
  assert max(diff) > 1e-4, diff
  # The config switch overrides the method's default, both ways.
  config = digits.get_config("method=imta")
  assert trainer.build_method(config).gradient_equilibrium
  config.gradient_equilibrium = False
  assert not trainer.build_method(config).gradient_equilibrium
  config.method, config.gradient_equilibrium = "ce", True
  assert trainer.build_method(config).gradient_equilibrium
