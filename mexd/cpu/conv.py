"""Convolution with fast gradients on XLA:CPU (GEMM-based backward).

XLA:CPU's 3x3 convolution gradients are slow (one layer, B=64 16x16
128->128, forward + backward: XLA 300 ms, PyTorch/oneDNN 119 ms on the same
2-core CPU) and dominate a ResNet train step, while XLA's *forward*
convolution is as fast as the alternatives. So `Conv` keeps XLA's forward
convolution and replaces the backward pass (`jax.custom_vjp`):

* 3x3, stride 1, padding 1: the input gradient is XLA's forward convolution
  of the output gradient with the flipped, transposed kernel; the kernel
  gradient is `conv3x3_kernel_grad`: three GEMMs (one per kernel row) of
  the column-shifted input [B, H, W, 3 Cin] against the row-shifted output
  gradient.
* 3x3, stride 2, padding 1: both gradients are the vjp of
  `im2col_conv3x3_s2` (the 9 taps replicate the input only 9/4 times, so the
  patch matrix is small and each gradient is one large GEMM).
* 1x1 (any stride, no padding): a strided slice and one matmul
  (`conv1x1`), forward and backward; XLA:CPU's 1x1 weight gradient
  transposes the whole input first. B=64 32x32 64->128 stride 2: 183 -> 96
  ms; 8x8 512->512: 510 -> 173 ms (forward + backward).
* anything else (grouped, other kernels, padding or dtypes): XLA's
  convolution.

Forward + backward of one layer on the project's 2-core CPU (ms, XLA vs this
path, interleaved, other jobs running, without `mexd.cpu.xla_options`): B=64
32x32 64->64: 1850 vs 340; 16x16 128->128: 411 vs 212; 8x8 256->256: 243 vs
166; stride 2 32x32 64->128: 417 vs 266; 16x16 128->256: 203 vs 130. With
`mexd.cpu.xla_options` XLA's own 3x3 gradients come closer (B=64 32x32
64->64 kernel gradient 1012 -> 90 ms); whole-step numbers and the
alternatives measured and not used (Winograd F(2x2, 3x3) among them):
docs/benchmarks.md, section 1.

`Conv` has the call signature and the variables of
`flax.linen.Conv(use_bias=False)` ("kernel" [kh, kw, Cin / groups, Cout]),
so checkpoints do not depend on which of the two built them;
`mexd.models.layers` picks it on the CPU backend. Inference runs XLA's 3x3
convolutions unchanged and 1x1 convolutions as matmuls of the same flops.
"""

import functools
from typing import Any, Callable, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Padding = Union[str, int, Sequence[Tuple[int, int]]]


def im2col_conv3x3_s2(x: Array, kernel: Array) -> Array:
  """3x3, stride 2, zero padding 1 convolution as one im2col matmul.

  With stride 2 the 9 taps replicate the input only 9/4 times, so the patch
  matrix is small and the convolution, its input gradient and its weight
  gradient are each a single large GEMM (XLA:CPU's strided convolution
  gradient spends much of its time in layout transposes).

  Args:
    x: [B, H, W, Cin].
    kernel: [3, 3, Cin, Cout].

  Returns:
    [B, ceil(H / 2), ceil(W / 2), Cout].
  """
  b, h, w, ci = x.shape
  co = kernel.shape[-1]
  ho, wo = (h + 1) // 2, (w + 1) // 2
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  cols = [xp[:, i:i + 2 * ho - 1:2, j:j + 2 * wo - 1:2, :]
          for i in range(3) for j in range(3)]
  patches = jnp.concatenate(cols, -1).reshape(b * ho * wo, 9 * ci)
  y = jnp.dot(patches, kernel.reshape(9 * ci, co),
              preferred_element_type=x.dtype)
  return y.reshape(b, ho, wo, co)


def conv3x3_kernel_grad(x: Array, g: Array) -> Array:
  """Kernel gradient of the 3x3, stride 1, padding 1 convolution.

  dk[a, c] = sum_{b,h,w} x[b, h + a - 1, w + c - 1] g[b, h, w] (zero
  outside). The three column shifts of x are concatenated along channels
  once ([B, H, W, 3 Cin]); each kernel row a is then one GEMM of that
  against g shifted by rows, contracting over (B, H, W): 3 GEMMs of
  [3 Cin, BHW] x [BHW, Cout], no Winograd transforms (which cost more than
  their GEMMs on CPU) and no 9x patch matrix.

  Args:
    x: [B, H, W, Cin] layer input.
    g: [B, H, W, Cout] output gradient.

  Returns:
    [3, 3, Cin, Cout].
  """
  _, h, w, ci = x.shape
  co = g.shape[-1]
  xp = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))
  xw = jnp.concatenate([xp[:, :, c:c + w] for c in range(3)], -1)
  gp = jnp.pad(g, ((0, 0), (1, 1), (0, 0), (0, 0)))
  # Row a: sum_h x[h + a - 1] g[h] = sum_h' x[h'] g[h' - a + 1].
  rows = [jnp.einsum("bhwk,bhwo->ko", xw, gp[:, 2 - a:2 - a + h],
                     preferred_element_type=x.dtype) for a in range(3)]
  return jnp.stack(rows).reshape(3, 3, ci, co)


def _xla_conv(x, kernel, strides, padding, groups=1):
  return jax.lax.conv_general_dilated(
      x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3_fast_grad(x: Array, kernel: Array, stride: int) -> Array:
  """XLA's 3x3 convolution (padding 1) with a matmul-based backward pass.

  Args:
    x: [B, H, W, Cin].
    kernel: [3, 3, Cin, Cout].
    stride: 1 or 2.

  Returns:
    [B, ceil(H / stride), ceil(W / stride), Cout]; gradients as described
    in the module docstring (equal to XLA's up to float rounding).
  """
  return _xla_conv(x, kernel, (stride, stride), ((1, 1), (1, 1)))


def _fast_grad_fwd(x, kernel, stride):
  return conv3x3_fast_grad(x, kernel, stride), (x, kernel)


def _fast_grad_bwd(stride, res, g):
  x, kernel = res
  if stride == 1:
    # d/dx of a stride-1 'SAME' 3x3 correlation: correlate g with the
    # spatially flipped kernel, in and out channels swapped.
    dx = _xla_conv(g, jnp.flip(kernel, (0, 1)).swapaxes(2, 3), (1, 1),
                   ((1, 1), (1, 1)))
    return dx, conv3x3_kernel_grad(x, g)
  _, vjp = jax.vjp(im2col_conv3x3_s2, x, kernel)
  return vjp(g)


conv3x3_fast_grad.defvjp(_fast_grad_fwd, _fast_grad_bwd)


def conv1x1(x: Array, kernel: Array, stride: int = 1) -> Array:
  """1x1 convolution (no padding) as a strided slice and one matmul.

  Args:
    x: [B, H, W, Cin].
    kernel: [1, 1, Cin, Cout].
    stride: spatial stride.

  Returns:
    [B, ceil(H / stride), ceil(W / stride), Cout].
  """
  if stride > 1:
    x = x[:, ::stride, ::stride, :]
  return jnp.einsum("bhwc,cd->bhwd", x, kernel[0, 0],
                    preferred_element_type=x.dtype)


def _pairs(padding: Padding):
  """Padding as ((top, bottom), (left, right)), or the string unchanged."""
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  if isinstance(padding, str):
    return padding
  return tuple(tuple(p) for p in padding)


def path(kernel_size: Sequence[int], strides: Sequence[int],
         padding: Padding, groups: int, dtype: Any) -> str:
  """What a layer runs: "fast_grad", "matmul" or "xla".

  "fast_grad" (`conv3x3_fast_grad`) for float32 ungrouped 3x3 convolutions
  with padding 1 (or "SAME" at stride 1) and stride 1 or 2; "matmul"
  (`conv1x1`) for float32 ungrouped unpadded 1x1 convolutions with equal
  strides; XLA's convolution otherwise.
  """
  kernel_size, strides = tuple(kernel_size), tuple(strides)
  padding = _pairs(padding)
  plain = groups == 1 and jnp.dtype(dtype) == jnp.float32
  if plain and kernel_size == (3, 3):
    pad1 = padding == ((1, 1), (1, 1))
    if strides == (1, 1) and (pad1 or padding == "SAME"):
      return "fast_grad"
    if strides == (2, 2) and pad1:
      return "fast_grad"
  if (plain and kernel_size == (1, 1) and len(set(strides)) == 1
      and padding in ("SAME", "VALID", ((0, 0), (0, 0)))):
    return "matmul"
  return "xla"


class Conv(nn.Module):
  """Bias-free 2-D convolution, NHWC / HWIO, as `nn.Conv(use_bias=False)`.

  Attributes:
    features: output channels Cout.
    kernel_size: (kh, kw).
    strides: (sh, sw).
    padding: "SAME", "VALID", an int (symmetric) or ((top, bottom), (left,
      right)).
    feature_group_count: groups (Cin and Cout divisible by it).
    kernel_init: initializer of "kernel" [kh, kw, Cin / groups, Cout].
    dtype: computation dtype (inputs and kernel are cast to it).
  """

  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: Padding = "SAME"
  feature_group_count: int = 1
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [B, H, W, Cin] -> [B, H', W', Cout]."""
    cin = x.shape[-1]
    kernel = self.param(
        "kernel", self.kernel_init,
        tuple(self.kernel_size) + (cin // self.feature_group_count,
                                   self.features), jnp.float32)
    x = jnp.asarray(x, self.dtype)
    kernel = jnp.asarray(kernel, self.dtype)
    padding = _pairs(self.padding)
    run = path(self.kernel_size, self.strides, padding,
               self.feature_group_count, self.dtype)
    if run == "fast_grad":
      return conv3x3_fast_grad(x, kernel, int(self.strides[0]))
    if run == "matmul":
      return conv1x1(x, kernel, int(self.strides[0]))
    return _xla_conv(x, kernel, tuple(self.strides), padding,
                     self.feature_group_count)
