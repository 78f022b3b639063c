"""Convolution layer with fast gradients on CPUs (GEMM-based backward).

XLA:CPU's 3x3 convolution gradients are slow: for B=64, 32x32, 64->64 the
forward + backward of one layer takes 939 ms where a Winograd formulation
takes 210 ms (and B=64 16x16 128->128 takes 300 ms in XLA against 119 ms in
PyTorch/oneDNN on the same 2-core CPU, ~2.5x), and they dominate a ResNet
train step on CPU. XLA's *forward* convolution, on the other hand, is as
fast as the alternatives (B=256 32x32 64->64 forward: XLA 569 ms, Winograd
712 ms). So on the CPU backend `Conv` keeps XLA's forward
convolution and replaces the backward pass (`jax.custom_vjp`):

* 3x3, stride 1, padding 1: the input gradient is XLA's forward convolution
  of the output gradient with the flipped, transposed kernel; the kernel
  gradient is `conv3x3_kernel_grad`: three GEMMs (one per kernel row) of
  the column-shifted input [B, H, W, 3 Cin] against the row-shifted output
  gradient. (It is faster than the vjp of the Winograd F(2x2, 3x3)
  `winograd_conv3x3`, whose tile transforms cost more than its GEMMs on
  XLA:CPU: kernel gradient B=64 32x32 64->64 127 vs 187 ms, 4x4 512->512
  36 vs 71 ms, stem 3->64 42 vs 118 ms.)
* 3x3, stride 2, padding 1: both gradients are the vjp of
  `im2col_conv3x3_s2` (the 9 taps replicate the input only 9/4 times, so the
  patch matrix is small and each gradient is one large GEMM).
* 1x1 (any stride, no padding): a strided slice and one matmul
  (`conv1x1`), forward and backward; XLA:CPU's 1x1 weight gradient
  transposes the whole input first. B=64 32x32 64->128 stride 2: 183 -> 96
  ms; 8x8 512->512: 510 -> 173 ms (forward + backward).

Forward + backward of one layer on the project's 2-core CPU (ms, XLA vs this
path, interleaved, other jobs running): B=64 32x32 64->64: 1850 vs 340;
16x16 128->128: 411 vs 212; 8x8 256->256: 243 vs 166; stride 2 32x32
64->128: 417 vs 266; 16x16 128->256: 203 vs 130. Whole-step numbers:
docs/benchmarks.md. Those per-layer numbers are measured without
`mexd.xla_options` (XLA:CPU convolutions on XLA's own emitter instead of
YNNPACK), which makes XLA's own 3x3 gradients competitive (B=64 32x32
64->64 kernel gradient 1012 -> 90 ms); with it the whole ResNet-18 step
(batch 64) is ~30 % faster (23.6 -> 30.5 img/s) and the choice of impl
matters less (docs/benchmarks.md, section 1). Inference runs XLA's 3x3 convolutions unchanged and 1x1
convolutions as matmuls of the same flops, so the cost model (XLA flops,
counted with `use_impl("xla")`) describes what runs.

`Conv` is a drop-in for the bias-free `nn.Conv` uses of the models (same
"kernel" parameter [kh, kw, Cin/groups, Cout], so checkpoints do not depend on
the implementation). `impl` per layer: "auto" (on CPU: the fast-gradient
path above for float32 ungrouped 3x3 convolutions with padding 1, "matmul"
for float32 ungrouped unpadded 1x1 convolutions, XLA otherwise; XLA on every
other backend, where GPU/TPU libraries pick fast algorithms), "xla",
"matmul", or the full algorithms "winograd" (stride 1) and "im2col" (stride
2) forward and backward. `use_impl("xla")` overrides "auto" while a function is
traced.
"""

import contextlib
import contextvars
import functools
from typing import Any, Callable, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from mexd import errors

Array = jax.Array
IMPLS = ("auto", "xla", "winograd", "im2col", "matmul")

_OVERRIDE = contextvars.ContextVar("mexd_conv_impl", default=None)


@contextlib.contextmanager
def use_impl(impl: str):
  """Within the block, layers with impl="auto" use `impl` ("xla"/"winograd")."""
  if impl not in IMPLS:
    raise errors.InputError(
        f"unknown conv impl {impl!r}; valid: {', '.join(IMPLS)}")
  token = _OVERRIDE.set(impl)
  try:
    yield
  finally:
    _OVERRIDE.reset(token)


# Winograd F(2x2, 3x3) transforms: Y = A^T [(G g G^T) * (B^T d B)] A.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def _bt(d0, d1, d2, d3):
  """B^T applied along one axis of a 4-tap tile (rows of B^T)."""
  return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def _at(m0, m1, m2, m3):
  """A^T applied along one axis: 4 taps -> 2 outputs."""
  return m0 + m1 + m2, m1 - m2 - m3


def winograd_conv3x3(x: Array, kernel: Array) -> Array:
  """3x3, stride 1, zero padding 1 convolution by Winograd F(2x2, 3x3).

  Args:
    x: [B, H, W, Cin] (any H, W; odd sizes are padded to even and cropped).
    kernel: [3, 3, Cin, Cout] (HWIO, cross-correlation as lax.conv).

  Returns:
    [B, H, W, Cout], equal to lax.conv_general_dilated(x, kernel, (1, 1),
    ((1, 1), (1, 1))) up to float rounding.
  """
  b, h, w, ci = x.shape
  co = kernel.shape[-1]
  th, tw = (h + 1) // 2, (w + 1) // 2  # 2x2 output tiles.
  xp = jnp.pad(x, ((0, 0), (1, 1 + 2 * th - h), (1, 1 + 2 * tw - w), (0, 0)))
  # d[a][c]: tap (a, c) of every 4x4 input tile, [B, th, tw, Cin].
  d = [[xp[:, a:a + 2 * th:2, c:c + 2 * tw:2, :] for c in range(4)]
       for a in range(4)]
  cols = [_bt(*[d[a][c] for a in range(4)]) for c in range(4)]
  v = [_bt(*[cols[c][p] for c in range(4)]) for p in range(4)]
  v = jnp.stack([t for row in v for t in row]).reshape(16, b * th * tw, ci)
  g = jnp.asarray(_G, kernel.dtype)
  u = jnp.einsum("pa,qb,abio->pqio", g, g, kernel).reshape(16, ci, co)
  m = jnp.einsum("knc,kcd->knd", v, u,
                 preferred_element_type=x.dtype).reshape(4, 4, b, th, tw, co)
  r = _at(*[m[:, q] for q in range(4)])  # r[j][p]: [4(p), B, th, tw, Co]
  y = [_at(*[r[j][p] for p in range(4)]) for j in range(2)]  # y[j][i]
  # y[j][i] is output pixel (2t + i, 2s + j) of tile (t, s).
  y = jnp.stack([jnp.stack([y[0][i], y[1][i]], 3) for i in range(2)], 2)
  return y.reshape(b, 2 * th, 2 * tw, co)[:, :h, :w]


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


def _pads(padding, kernel_size: int):
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  return padding


def _winograd_ok(kernel_size, strides, padding, groups, dtype) -> bool:
  p = padding
  return (tuple(kernel_size) == (3, 3) and tuple(strides) == (1, 1)
          and groups == 1 and jnp.dtype(dtype) == jnp.float32
          and (p == "SAME" or tuple(map(tuple, p)) == ((1, 1), (1, 1))))


def _im2col_ok(kernel_size, strides, padding, groups, dtype, cin) -> bool:
  return (tuple(kernel_size) == (3, 3) and tuple(strides) == (2, 2)
          and groups == 1 and jnp.dtype(dtype) == jnp.float32
          and cin >= 1 and not isinstance(padding, str)
          and tuple(map(tuple, padding)) == ((1, 1), (1, 1)))


def choose_impl(impl: str, *, kernel_size, strides, padding, groups,
                dtype, cin: int = 0) -> str:
  """What a layer runs: "xla", "fast_grad", "winograd" or "im2col".

  "fast_grad" is XLA's forward convolution with the matmul-based backward
  (`conv3x3_fast_grad`); it is what "auto" picks on CPU for float32,
  ungrouped 3x3 convolutions with padding 1 and stride 1 or 2.
  """
  if impl not in IMPLS:
    raise errors.InputError(
        f"unknown conv impl {impl!r}; valid: {', '.join(IMPLS)}")
  if impl == "auto":
    impl = _OVERRIDE.get() or "auto"
  eligible = _winograd_ok(kernel_size, strides, padding, groups, dtype)
  pointwise = (tuple(kernel_size) == (1, 1) and groups == 1
               and jnp.dtype(dtype) == jnp.float32
               and len(set(strides)) == 1
               and (padding in ("SAME", "VALID") or
                    tuple(map(tuple, padding)) == ((0, 0), (0, 0))))
  if impl == "matmul":
    if not pointwise:
      raise errors.InputError(
          "impl='matmul' needs a float32 1x1 conv without padding or groups"
          f"; got kernel {tuple(kernel_size)}, padding {padding}, groups "
          f"{groups}, {dtype}")
    return "matmul"
  strided = _im2col_ok(kernel_size, strides, padding, groups, dtype, cin)
  if impl == "im2col":
    if not strided:
      raise errors.InputError(
          "impl='im2col' needs a float32 3x3 conv with stride 2, padding 1 "
          f"and no groups; got kernel {tuple(kernel_size)}, strides "
          f"{tuple(strides)}, padding {padding}, groups {groups}, {dtype}")
    return "im2col"
  if impl == "winograd":
    if not eligible:
      raise errors.InputError(
          "impl='winograd' needs a float32 3x3 conv with stride 1, padding 1 "
          f"and no groups; got kernel {tuple(kernel_size)}, strides "
          f"{tuple(strides)}, padding {padding}, groups {groups}, {dtype}")
    return "winograd"
  if impl == "auto" and jax.default_backend() == "cpu":
    if eligible or strided:
      return "fast_grad"
    if pointwise:
      return "matmul"
  return "xla"


class Conv(nn.Module):
  """Bias-free 2-D convolution, NHWC / HWIO, like `nn.Conv(use_bias=False)`.

  Attributes:
    features: output channels Cout.
    kernel_size: (kh, kw).
    strides: (sh, sw).
    padding: "SAME", "VALID", an int (symmetric) or ((top, bottom), (left,
      right)).
    feature_group_count: groups (Cin and Cout divisible by it).
    kernel_init: initializer of "kernel" [kh, kw, Cin / groups, Cout].
    dtype: computation dtype (inputs and kernel are cast to it).
    impl: "auto", "xla", "winograd", "im2col" or "matmul" (see the module
      docstring).
  """

  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: Union[str, int, Sequence[Tuple[int, int]]] = "SAME"
  feature_group_count: int = 1
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  impl: str = "auto"

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
    padding = _pads(self.padding, self.kernel_size[0])
    impl = choose_impl(self.impl, kernel_size=self.kernel_size,
                       strides=self.strides, padding=padding,
                       groups=self.feature_group_count, dtype=self.dtype,
                       cin=cin)
    if impl == "winograd":
      return winograd_conv3x3(x, kernel)
    if impl == "im2col":
      return im2col_conv3x3_s2(x, kernel)
    if impl == "fast_grad":
      return conv3x3_fast_grad(x, kernel, int(self.strides[0]))
    if impl == "matmul":
      return conv1x1(x, kernel, int(self.strides[0]))
    return _xla_conv(x, kernel, tuple(self.strides), padding,
                     self.feature_group_count)
