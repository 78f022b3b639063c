"""mexd.cpu.norm.BatchNorm vs flax.linen.BatchNorm and a NumPy reference."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mexd.cpu import norm

EPS = 1e-5


def np_batch_norm_grads(x, scale, g):
  """Closed-form float64 gradients of y = xhat * scale + bias (batch stats).

  Derived by hand: with N values per channel, xhat = (x - m) / s,
  s = sqrt(v + eps), dL/dx = scale / s * (g - mean(g) - xhat mean(g xhat)).
  """
  x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
  g = np.asarray(g, np.float64).reshape(-1, x.shape[-1])
  m = x.mean(0)
  s = np.sqrt(x.var(0) + EPS)
  xhat = (x - m) / s
  dbias = g.sum(0)
  dscale = (g * xhat).sum(0)
  dx = scale / s * (g - g.mean(0) - xhat * (g * xhat).mean(0))
  return dx, dscale, dbias


def _data(shape, seed=0):
  rng = np.random.default_rng(seed)
  # Offset and spread per channel, so mean and variance matter.
  x = rng.normal(size=shape) * rng.uniform(0.5, 3, shape[-1]) + rng.normal(
      size=shape[-1]) * 2
  return jnp.asarray(x, jnp.float32), rng


@pytest.mark.parametrize("shape", [(4, 5, 3, 6), (16, 7), (2, 1, 1, 3)])
def test_matches_flax_batch_norm_train_and_eval(shape):
  x, rng = _data(shape)
  ours, ref = norm.BatchNorm(), nn.BatchNorm(use_running_average=False,
                                             momentum=0.9, epsilon=EPS)
  v_ours = ours.init(jax.random.PRNGKey(0), x)
  v_ref = ref.init(jax.random.PRNGKey(0), x)
  # Same variables, so checkpoints do not depend on the implementation.
  chex.assert_trees_all_equal_shapes_and_dtypes(v_ours, v_ref)
  chex.assert_trees_all_close(v_ours, v_ref)
  params = {"scale": jnp.asarray(rng.uniform(0.5, 2, shape[-1]), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=shape[-1]), jnp.float32)}
  stats = {"mean": jnp.asarray(rng.normal(size=shape[-1]), jnp.float32),
           "var": jnp.asarray(rng.uniform(0.5, 2, shape[-1]), jnp.float32)}
  variables = {"params": params, "batch_stats": stats}
  y, new = ours.apply(variables, x, mutable=["batch_stats"])
  y_ref, new_ref = ref.apply(variables, x, mutable=["batch_stats"])
  chex.assert_shape(y, shape)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(new, new_ref, rtol=1e-6, atol=1e-6)
  # The running averages by hand: 0.9 old + 0.1 batch (biased variance).
  xf = np.asarray(x, np.float64).reshape(-1, shape[-1])
  np.testing.assert_allclose(new["batch_stats"]["mean"],
                             0.9 * stats["mean"] + 0.1 * xf.mean(0), rtol=1e-5)
  np.testing.assert_allclose(new["batch_stats"]["var"],
                             0.9 * stats["var"] + 0.1 * xf.var(0), rtol=1e-5)
  # Eval mode: the running averages, no state change.
  y_eval = norm.BatchNorm(use_running_average=True).apply(variables, x)
  y_eval_ref = nn.BatchNorm(use_running_average=True, epsilon=EPS).apply(
      variables, x)
  np.testing.assert_allclose(y_eval, y_eval_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(4, 5, 3, 6), (16, 7)])
def test_gradients_match_numpy_reference_and_flax(shape):
  x, rng = _data(shape, seed=1)
  scale = jnp.asarray(rng.uniform(0.5, 2, shape[-1]), jnp.float32)
  bias = jnp.asarray(rng.normal(size=shape[-1]), jnp.float32)
  g = jnp.asarray(rng.normal(size=shape), jnp.float32)

  def ours(x, scale, bias):
    return jnp.sum(norm.batch_norm_train(x, scale, bias, EPS)[0] * g)

  def flax_ref(x, scale, bias):
    y = nn.BatchNorm(use_running_average=False, epsilon=EPS).apply(
        {"params": {"scale": scale, "bias": bias},
         "batch_stats": {"mean": jnp.zeros_like(scale),
                         "var": jnp.ones_like(scale)}},
        x, mutable=["batch_stats"])[0]
    return jnp.sum(y * g)

  grads = jax.jit(jax.grad(ours, (0, 1, 2)))(x, scale, bias)
  grads_flax = jax.grad(flax_ref, (0, 1, 2))(x, scale, bias)
  dx, dscale, dbias = np_batch_norm_grads(x, np.asarray(scale), g)
  np.testing.assert_allclose(grads[0].reshape(dx.shape), dx, rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(grads[1], dscale, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(grads[2], dbias, rtol=1e-5, atol=1e-4)
  chex.assert_trees_all_close(grads, grads_flax, rtol=1e-4, atol=1e-5)


def test_cotangents_of_the_statistics_outputs():
  """Nonzero cotangents on (mean, var) match autodiff of the forward."""
  x, rng = _data((6, 4, 5), seed=2)
  scale = jnp.asarray(rng.uniform(0.5, 2, 5), jnp.float32)
  bias = jnp.zeros(5, jnp.float32)
  cts = tuple(jnp.asarray(rng.normal(size=s), jnp.float32)
              for s in ((6, 4, 5), (5,), (5,)))
  _, vjp = jax.vjp(lambda *a: norm.batch_norm_train(*a, EPS), x, scale, bias)
  _, vjp_ref = jax.vjp(lambda *a: norm._forward(*a, EPS)[:3], x, scale, bias)  # pylint: disable=protected-access
  chex.assert_trees_all_close(vjp(cts), vjp_ref(cts), rtol=1e-4, atol=1e-5)


def test_bfloat16_inputs_keep_dtype_and_float32_statistics():
  x, _ = _data((8, 3, 3, 4), seed=3)
  m = norm.BatchNorm(dtype=jnp.bfloat16)
  v = m.init(jax.random.PRNGKey(0), x)
  y, new = m.apply(v, x.astype(jnp.bfloat16), mutable=["batch_stats"])
  y32, new32 = norm.BatchNorm().apply(v, x, mutable=["batch_stats"])
  assert y.dtype == jnp.bfloat16
  chex.assert_trees_all_equal_dtypes(new, new32)
  np.testing.assert_allclose(np.asarray(y, np.float32), y32, atol=0.05)

  def loss(x):
    return jnp.sum(m.apply(v, x, mutable=["batch_stats"])[0].astype(
        jnp.float32) ** 2)

  dx = jax.grad(loss)(x.astype(jnp.bfloat16))
  assert dx.dtype == jnp.bfloat16
  assert bool(jnp.all(jnp.isfinite(dx.astype(jnp.float32))))
