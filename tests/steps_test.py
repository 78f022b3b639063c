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
