"""Batch normalization with a hand-written backward pass (the CPU layers).

`BatchNorm` is a drop-in for `flax.linen.BatchNorm(use_running_average=...,
momentum=..., dtype=...)`: the same variables ("params": scale, bias;
"batch_stats": mean, var; [C] each), the same running-average update and the
same numbers, so checkpoints do not depend on which one built them;
`mexd.models.layers` picks it on the CPU backend. What differs is the
training-mode gradient: `batch_norm_train` is a `jax.custom_vjp` whose
backward is the closed form

  xhat = (x - mean) * rstd,            rstd = 1 / sqrt(var + eps)
  dbias = sum(g),  dscale = sum(g * xhat)
  dx = scale * rstd * (g - dbias / N - xhat * dscale / N)

(sums over all axes but the last, N their size): one fused two-output
reduction over (g, x) and one elementwise pass. Autodiff of the forward
instead differentiates through mean, E[x^2] and the variance clip and
leaves XLA several reductions and elementwise passes per layer. The 20
backbone batch norms of ResNet-18 at batch 64 (+ ReLU, forward + backward)
on the project's 2-core CPU: 1.26x faster (`benchmarks/batch_norm.py`);
about 1 % of the whole train step (docs/benchmarks.md, section 1).

Statistics are computed in float32 whatever the compute dtype (as flax does);
the output is cast to `dtype`.
"""

import functools
from typing import Any, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def _stats(x: Array, epsilon: float) -> Tuple[Array, Array, Array]:
  """(mean, var, rstd) over all axes but the last; float32, [C] each."""
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  mean2 = jnp.mean(jnp.square(x), axes)
  var = jnp.maximum(0.0, mean2 - jnp.square(mean))  # E[x^2] - E[x]^2 >= 0.
  return mean, var, jax.lax.rsqrt(var + epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: Array, scale: Array, bias: Array,
                     epsilon: float) -> Tuple[Array, Array, Array]:
  """Training-mode batch norm with batch statistics.

  Args:
    x: [..., C] activations (any float dtype; statistics in float32).
    scale: [C] float32.
    bias: [C] float32.
    epsilon: added to the variance.

  Returns:
    (y [..., C] float32, mean [C], var [C]): y = (x - mean) / sqrt(var + eps)
    * scale + bias with the biased batch variance, as flax.linen.BatchNorm.
  """
  y, mean, var, _ = _forward(x, scale, bias, epsilon)
  return y, mean, var


def _normalize(x, mean, rstd, scale, bias):
  """(x - mean) * rstd * scale + bias in float32; x [..., C], the rest [C]."""
  return (x.astype(jnp.float32) - mean) * (rstd * scale) + bias


def _forward(x, scale, bias, epsilon):
  mean, var, rstd = _stats(x.astype(jnp.float32), epsilon)
  return _normalize(x, mean, rstd, scale, bias), mean, var, rstd


def _fwd(x, scale, bias, epsilon):
  y, mean, var, rstd = _forward(x, scale, bias, epsilon)
  return (y, mean, var), (x, scale, mean, rstd)


def _bwd(epsilon, res, cts):
  del epsilon
  x, scale, mean, rstd = res
  g, g_mean, g_var = cts  # g_mean, g_var: zero when the stats are not used.
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  xc = x.astype(jnp.float32) - mean
  g = g.astype(jnp.float32)
  dbias = jnp.sum(g, axes)
  dscale = jnp.sum(g * xc, axes) * rstd
  dx = (scale * rstd) * (g - dbias / n - xc * (rstd * dscale / n))
  # d mean / dx = 1 / N; d var / dx = 2 (x - mean) / N (the clip at 0 is
  # inactive wherever var > 0).
  dx = dx + g_mean / n + xc * (2.0 * g_var / n)
  return dx.astype(x.dtype), dscale, dbias


batch_norm_train.defvjp(_fwd, _bwd)


class BatchNorm(nn.Module):
  """Batch norm over all axes but the last, like flax.linen.BatchNorm.

  Attributes:
    use_running_average: eval mode (normalize with the running averages).
    momentum: running average decay (flax convention: 0.9 = PyTorch 0.1).
    epsilon: added to the variance.
    dtype: output dtype.
  """

  use_running_average: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [..., C] -> [..., C] in `dtype`."""
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean",
                            lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var",
                           lambda: jnp.ones((c,), jnp.float32))
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    if self.use_running_average:
      y = _normalize(x, ra_mean.value,
                     jax.lax.rsqrt(ra_var.value + self.epsilon), scale, bias)
    else:
      y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1 - m) * mean
        ra_var.value = m * ra_var.value + (1 - m) * var
    return y.astype(self.dtype)
