"""Convolution layer with a fast 3x3 path for CPUs (Winograd F(2x2, 3x3)).

XLA:CPU's stride-1 3x3 convolution and its gradients run ~2.5x slower than
oneDNN (../shared/PERF_NOTES.md); they dominate a ResNet train step on CPU.
`winograd_conv3x3` computes the same convolution as 16 batched matmuls
between transformed 4x4 input tiles and transformed kernels (Lavin & Gray,
"Fast Algorithms for Convolutional Neural Networks", 2016): 2.25x fewer
multiplications, and its gradients (autodiff through the same linear
transforms) are batched matmuls too. `Conv` is a drop-in for the bias-free
`nn.Conv` uses of the models (same "kernel" parameter [kh, kw, Cin/groups,
Cout], so checkpoints do not depend on the implementation) that takes the
Winograd path for eligible convolutions on CPU and XLA's convolution
everywhere else (GPU/TPU libraries already pick fast algorithms).

Measured on the project's 2-core CPU, forward + backward (ms, XLA vs
Winograd; benchmarks/conv_impl.py): B=64 16x16 128->128: 278 vs 140;
B=64 32x32 64->64: 939 vs 210; B=64 8x8 256->256: 179 vs 83.

Strided 3x3 convolutions (stride 2, pad 1, >= 64 input channels) run on CPU
as one im2col GEMM (`im2col_conv3x3_s2`; the patches replicate the input only
9/4 times): B=64 32x32 64->128 forward + backward 205 -> 136 ms, 16x16
128->256 101 -> 88 ms (fewer channels: slower than XLA, so not used).

`impl` per layer: "auto" (on CPU: Winograd for float32 3x3 / stride 1 / pad
1 / ungrouped convolutions, im2col for the strided ones above; XLA for the
rest and on every other backend), "xla", or "winograd". The context
manager `use_impl("xla")` overrides "auto" while a function is traced (the
cost model uses it so that FLOP counts describe the architecture, not the
algorithm).
"""

import contextlib
import contextvars
from typing import Any, Callable, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
IMPLS = ("auto", "xla", "winograd", "im2col")

_OVERRIDE = contextvars.ContextVar("mexd_conv_impl", default=None)


@contextlib.contextmanager
def use_impl(impl: str):
  """Within the block, layers with impl="auto" use `impl` ("xla"/"winograd")."""
  if impl not in IMPLS:
    raise ValueError(f"unknown conv impl {impl!r}; valid: {', '.join(IMPLS)}")
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
  spends much of its weight gradient in layout transposes).

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
  """The implementation a layer uses: "xla", "winograd" or "im2col"."""
  if impl not in IMPLS:
    raise ValueError(f"unknown conv impl {impl!r}; valid: {', '.join(IMPLS)}")
  if impl == "auto":
    impl = _OVERRIDE.get() or "auto"
  eligible = _winograd_ok(kernel_size, strides, padding, groups, dtype)
  strided = _im2col_ok(kernel_size, strides, padding, groups, dtype, cin)
  if impl == "im2col":
    if not strided:
      raise ValueError(
          "impl='im2col' needs a float32 3x3 conv with stride 2, padding 1 "
          f"and no groups; got kernel {tuple(kernel_size)}, strides "
          f"{tuple(strides)}, padding {padding}, groups {groups}, {dtype}")
    return "im2col"
  if impl == "winograd":
    if not eligible:
      raise ValueError(
          "impl='winograd' needs a float32 3x3 conv with stride 1, padding 1 "
          f"and no groups; got kernel {tuple(kernel_size)}, strides "
          f"{tuple(strides)}, padding {padding}, groups {groups}, {dtype}")
    return "winograd"
  if impl == "auto":
    if jax.default_backend() != "cpu":
      return "xla"
    if eligible:
      return "winograd"
    if strided and cin >= 64:  # Fewer channels: XLA's conv is faster.
      return "im2col"
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
    impl: "auto", "xla", "winograd" or "im2col" (see the module docstring).
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
    return jax.lax.conv_general_dilated(
        x, kernel, tuple(self.strides), padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=self.feature_group_count)
