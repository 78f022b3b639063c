"""mexd.cpu.conv: the fast-gradient convolutions vs XLA's and NumPy's."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mexd.cpu import conv


def np_conv3x3(x, k):
  """Direct float64 cross-correlation, zero padding 1 (independent ref)."""
  x = np.asarray(x, np.float64)
  k = np.asarray(k, np.float64)
  b, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((b, h, w, k.shape[-1]))
  for i in range(3):
    for j in range(3):
      out += np.einsum("bhwc,cd->bhwd", xp[:, i:i + h, j:j + w], k[i, j])
  return out


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 9, 7, 4), (2, 1, 2, 2)])
def test_im2col_stride2_matches_direct_convolution(shape):
  rng = np.random.default_rng(2)
  x = rng.normal(size=shape).astype(np.float32)
  k = rng.normal(size=(3, 3, shape[-1], 5)).astype(np.float32)
  y = conv.im2col_conv3x3_s2(jnp.asarray(x), jnp.asarray(k))
  full = np_conv3x3(x, k)  # Stride 2 = every other output of stride 1.
  chex.assert_shape(y, (shape[0], (shape[1] + 1) // 2, (shape[2] + 1) // 2,
                        5))
  np.testing.assert_allclose(y, full[:, ::2, ::2], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride,shape", [(1, (2, 6, 6, 8)), (1, (1, 5, 7, 3)),
                                          (2, (2, 8, 8, 4)), (2, (1, 7, 5, 3))])
def test_fast_grad_values_and_gradients_match_xla(stride, shape):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, shape[-1], 4)), jnp.float32)
  xla = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (stride, stride), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  fast = lambda x, k: conv.conv3x3_fast_grad(x, k, stride)
  np.testing.assert_array_equal(fast(x, k), xla(x, k))  # Same forward op.
  r = jnp.asarray(rng.normal(size=xla(x, k).shape), jnp.float32)
  grads = {}
  for name, f in (("xla", xla), ("fast", fast)):
    grads[name] = jax.grad(lambda x, k: jnp.sum(f(x, k) * r),
                           argnums=(0, 1))(x, k)
  for a, b in zip(grads["fast"], grads["xla"]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  # And against float64 finite differences of the NumPy reference.
  r64 = np.asarray(r, np.float64)
  ref = lambda k: np.sum(np_conv3x3(x, k)[:, ::stride, ::stride] * r64)
  eps, k64 = 1e-3, np.asarray(k, np.float64)
  for idx in [(0, 0, 0, 0), (1, 2, shape[-1] - 1, 3), (2, 1, 0, 2)]:
    kp, km = k64.copy(), k64.copy()
    kp[idx] += eps
    km[idx] -= eps
    fd = (ref(kp) - ref(km)) / (2 * eps)
    np.testing.assert_allclose(grads["fast"][1][idx], fd, rtol=1e-5,
                               atol=1e-4)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_conv1x1_matmul_matches_xla_values_and_gradients(stride):
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(2, 7, 6, 5)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, 5, 3)), jnp.float32)
  xla = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (stride, stride), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  mm = lambda x, k: conv.conv1x1(x, k, stride)
  y = mm(x, k)
  chex.assert_shape(y, (2, -(-7 // stride), -(-6 // stride), 3))
  np.testing.assert_allclose(y, np.einsum(
      "bhwc,cd->bhwd", np.asarray(x)[:, ::stride, ::stride], k[0, 0]),
      rtol=1e-5, atol=1e-5)
  r = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  ga = jax.grad(lambda x, k: jnp.sum(mm(x, k) * r), argnums=(0, 1))(x, k)
  gb = jax.grad(lambda x, k: jnp.sum(xla(x, k) * r), argnums=(0, 1))(x, k)
  for a, b in zip(ga, gb):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,padding,groups", [
    (3, 1, ((1, 1), (1, 1)), 1), (3, 1, "SAME", 1), (3, 2, 1, 1),
    (3, 2, "SAME", 1), (1, 2, "VALID", 1), (1, 1, ((0, 0), (0, 0)), 1),
    (3, 1, 1, 3), (5, 1, 2, 1)])
def test_conv_module_equals_flax_conv(kernel, stride, padding, groups):
  """Same "kernel" and the same outputs and gradients as nn.Conv."""
  x = jax.random.normal(jax.random.key(0), (2, 8, 7, 6))
  kw = dict(features=6, kernel_size=(kernel, kernel), strides=(stride, stride),
            padding=padding, feature_group_count=groups)
  ours, ref = conv.Conv(**kw), nn.Conv(use_bias=False, **kw)
  params = ref.init(jax.random.key(1), x)
  chex.assert_trees_all_equal_shapes(ours.init(jax.random.key(1), x), params)
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x),
                             rtol=1e-5, atol=1e-5)
  r = jax.random.normal(jax.random.key(2), ref.apply(params, x).shape)
  grad = lambda m: jax.grad(lambda p, x: jnp.sum(m.apply(p, x) * r),
                            argnums=(0, 1))(params, x)
  chex.assert_trees_all_close(grad(ours), grad(ref), rtol=1e-4, atol=1e-4)


def test_path_choice():
  kw = dict(kernel_size=(3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
            groups=1, dtype=jnp.float32)
  assert conv.path(**kw) == "fast_grad"
  assert conv.path(**{**kw, "padding": "SAME"}) == "fast_grad"
  assert conv.path(**{**kw, "padding": 1}) == "fast_grad"
  assert conv.path(**{**kw, "strides": (2, 2)}) == "fast_grad"
  # "SAME" at stride 2 pads (0, 1) on even maps: not the padding-1 kernel.
  assert conv.path(**{**kw, "strides": (2, 2), "padding": "SAME"}) == "xla"
  one = {**kw, "kernel_size": (1, 1), "padding": ((0, 0), (0, 0))}
  assert conv.path(**one) == "matmul"
  assert conv.path(**{**one, "strides": (2, 2), "padding": "VALID"}) == (
      "matmul")
  assert conv.path(**{**one, "groups": 2}) == "xla"
  assert conv.path(**{**one, "strides": (1, 2)}) == "xla"
  assert conv.path(**{**kw, "groups": 4}) == "xla"
  assert conv.path(**{**kw, "dtype": jnp.bfloat16}) == "xla"
  assert conv.path(**{**kw, "strides": (3, 3)}) == "xla"
  assert conv.path(**{**kw, "kernel_size": (5, 5)}) == "xla"
