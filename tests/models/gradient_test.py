"""Gradient equilibrium and IMTA's inline subnetwork collaboration (ISC).

GE is checked on a scalar linear 3-exit chain whose gradients are derived by
hand (docs/methods.md §9): h_0 = a x, h_1 = b h_0, h_2 = c h_1, exit k gives
z_k = w_k h_k, and the loss is sum_k sum_batch z_k.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mexd import errors
from mexd import models
from mexd.models import base
from mexd.models import gradient


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
  """Compile time dominates these small programs: skip most XLA passes."""
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


class _Scalar(nn.Module):
  """x -> x * weight, one weight (a block or a one-class exit head)."""

  head: bool = False

  @nn.compact
  def __call__(self, h, *, train=False):
    del train
    w = self.param("w", nn.initializers.ones, ())
    return (w * h, h) if self.head else w * h


class _Chain(base.MultiExitModel):
  num_classes: int = 1
  dtype: object = jnp.float32

  def setup(self):
    self.blocks = [_Scalar() for _ in range(3)]
    self.heads = [_Scalar(head=True) for _ in range(3)]


def _params(a, b, c, w):
  return {"params": {
      **{f"blocks_{k}": {"w": jnp.float32(v)} for k, v in enumerate((a, b, c))},
      **{f"heads_{k}": {"w": jnp.float32(v)} for k, v in enumerate(w)}}}


@pytest.mark.parametrize("a,b,c,w", [
    (1.0, 1.0, 1.0, (1.0, 1.0, 1.0)), (0.5, -2.0, 3.0, (1.5, -0.5, 2.0))])
def test_ge_gradients_equal_the_hand_derived_rescaled_sums(a, b, c, w):
  model = _Chain()
  x = jnp.asarray([[2.0], [-1.0], [0.5]])             # [B, 1]
  v = _params(a, b, c, w)

  def loss(p, ge):
    z, _ = model.apply(p, x, gradient_equilibrium=ge)
    return jnp.sum(z)

  sx = float(jnp.sum(x))
  h0, h1, h2 = a * sx, a * b * sx, a * b * c * sx     # batch sums of h_k
  # Plain autodiff: dL/dh_k = w_k + (later exits through the chain).
  plain = jax.grad(loss)(v, False)["params"]
  g_h1 = w[1] + c * w[2]
  g_h0 = w[0] + b * g_h1
  np.testing.assert_allclose(plain["blocks_0"]["w"], sx * g_h0, rtol=1e-6)
  np.testing.assert_allclose(plain["blocks_1"]["w"], h0 * g_h1, rtol=1e-6)
  # GE: dL/dh_2 = w_2; dL/dh_1 = (w_1 + 1 * c dL/dh_2) / 2;
  # dL/dh_0 = (w_0 + 2 * b dL/dh_1) / 3.
  ge = jax.grad(loss)(v, True)["params"]
  ge_h2 = w[2]
  ge_h1 = (w[1] + c * ge_h2) / 2
  ge_h0 = (w[0] + 2 * b * ge_h1) / 3
  np.testing.assert_allclose(ge["blocks_0"]["w"], sx * ge_h0, rtol=1e-6)
  np.testing.assert_allclose(ge["blocks_1"]["w"], h0 * ge_h1, rtol=1e-6)
  np.testing.assert_allclose(ge["blocks_2"]["w"], h1 * ge_h2, rtol=1e-6)
  # The heads' own gradients and the forward values are unchanged.
  for k, h in enumerate((h0, h1, h2)):
    np.testing.assert_allclose(ge[f"heads_{k}"]["w"], h, rtol=1e-6)
  np.testing.assert_allclose(loss(v, True), loss(v, False), rtol=1e-6)
  assert not np.isclose(ge["blocks_0"]["w"], plain["blocks_0"]["w"])


def test_scale_gradient_is_identity_forward_and_scales_backward():
  tree = {"a": jnp.arange(3.0), "b": (jnp.ones((2, 2)), None)}
  out = gradient.scale_gradient(tree, 0.25)
  chex.assert_trees_all_equal(out, tree)
  g = jax.grad(lambda t: jnp.sum(gradient.scale_gradient(t, 0.25)["a"] ** 2)
               + jnp.sum(gradient.scale_gradient(t, 0.25)["b"][0]))(tree)
  np.testing.assert_allclose(g["a"], 0.25 * 2 * np.arange(3.0))
  np.testing.assert_allclose(g["b"][0], 0.25)
  assert gradient.equilibrium_scales(0, 4) == (0.25, 3.0)
  assert gradient.equilibrium_scales(3, 4) == (1.0, 0.0)
  with pytest.raises(ValueError, match="outside"):
    gradient.equilibrium_scales(4, 4)


def _msdnet(**kw):
  return models.get_model("msdnet_cifar", num_classes=10, n_exits=3,
                          nlayers_to_exit=1, nlayers_between_exits=1,
                          nplanes_mulv=(2, 4, 8), exit_width=8, **kw)


def test_msdnet_isc_reads_the_previous_exit_and_runs_stage_by_stage():
  model = _msdnet(isc=True)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  v = jax.jit(model.init)(jax.random.PRNGKey(1), x)
  p = v["params"]
  # Exit k > 0: a projection C -> width of z_{k-1}; its classifier reads
  # [f_k, projection] (2 * width); exit 0 has neither.
  assert "proj" not in p["heads_0"]
  chex.assert_shape(p["heads_0"]["head"]["out"]["kernel"], (8, 10))
  chex.assert_shape(p["heads_1"]["proj"]["kernel"], (10, 8))
  chex.assert_shape(p["heads_2"]["head"]["out"]["kernel"], (16, 10))
  logits, aux = jax.jit(model.apply)(v, x)
  chex.assert_shape(logits, (3, 2, 10))
  chex.assert_shape(aux["features"], (3, 2, 8))

  @jax.jit
  def staged(v, x):
    h, out = x, []
    for k in range(3):
      h, z, _ = model.apply(v, k, h, method="stage")
      out.append(z)
    return jnp.stack(out)

  np.testing.assert_allclose(staged(v, x), logits, rtol=1e-5, atol=1e-5)

  # Exit 1's logits depend on exit 0's classifier (through z_0): a gradient
  # that plain MSDNet heads do not have.
  def exit1_grad(m, variables):
    return jax.jit(jax.grad(lambda p: jnp.sum(
        m.apply({**variables, "params": p}, x)[0][1])))(variables["params"])

  g = exit1_grad(model, v)
  assert float(jnp.abs(g["heads_0"]["head"]["out"]["kernel"]).sum()) > 0
  plain = _msdnet()
  g0 = exit1_grad(plain, jax.jit(plain.init)(jax.random.PRNGKey(1), x))
  np.testing.assert_array_equal(g0["heads_0"]["head"]["out"]["kernel"], 0.0)


def test_msdnet_ge_scales_the_coarsest_scale_only():
  model = _msdnet()
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  v = jax.jit(model.init)(jax.random.PRNGKey(1), x)
  h = jax.jit(lambda v, x: model.apply(v, 0, x, method="stage")[0])(v, x)
  scaled = model.scale_exit_gradient(h, 0.5)
  g = jax.grad(lambda h: sum(jnp.sum(s) for s in
                             model.scale_exit_gradient(h, 0.5)))(h)
  chex.assert_trees_all_equal(scaled, h)
  for s, gs in enumerate(g):
    np.testing.assert_allclose(gs, 0.5 if s == len(g) - 1 else 1.0)
  z_plain = jax.jit(model.apply)(v, x)[0]
  z_ge = jax.jit(lambda v, x: model.apply(v, x, gradient_equilibrium=True))(
      v, x)[0]
  np.testing.assert_array_equal(z_plain, z_ge)


def test_isc_needs_msdnet_heads():
  model = _msdnet(isc=True, head="sdn")
  with pytest.raises(errors.InputError, match="isc .* needs head 'msdnet'"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
