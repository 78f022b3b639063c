"""Exit heads: map a stage's hidden state to (logits [B, C], features [B, D]).

Every head returns float logits and a pooled feature vector of a fixed width D
(the same for all exits of a model) for feature distillation (BYOT, EED).

Head kinds (`make_head(kind, ...)`), for an exit map h: [B, H, W, K]:

* "byot" (`ByotHead`, BYOT / EED style): n x (ReLU -> 3x3 conv stride 2 ->
  BN) that brings h to the final stage's resolution and width D, then ReLU ->
  global average pool -> Dense(C). Feature = the pooled [B, D] vector (EED's
  f_i, taken right before the linear layer).
* "byot_sep": as "byot", but each step's 3x3 conv is depthwise-separable
  (depthwise 3x3 stride 2 -> pointwise 1x1 -> BN), close to the SepConv
  branches of BYOT's official code. The default for bottleneck nets
  (ResNet-50, ResNeXt-29), where the plain path costs 68M parameters and
  makes exit 2 of ResNet-50 dearer than the final exit.
* "sdn" (`SdnHead`, Shallow-Deep Networks): mixed pooling
  `alpha * maxpool + (1 - alpha) * avgpool` (alpha a learnt scalar, uniform
  init in [0, 1)) with window H // 4 down to a 4 x 4 grid (no pooling if
  H < 4) -> flatten -> Dense(C). SDN has no feature vector; to keep a common D
  the feature is a side branch Dense(D) applied to the grid-averaged mixed
  pool [B, K] (skipped if K == D). Logits do not depend on that projection;
  only feature-distillation losses train it.
* "erde" (`ErdeHead`, ERDE student heads): BN -> ReLU -> 2 x 2 average pool ->
  Dropout(0.5) -> Dense(C). PROJECT READING: "2 x 2 average pooling" is read
  as pooling to a 2 x 2 grid (window H // 2), so head size does not grow with
  the map size; kind "erde_window" uses a literal 2 x 2 window with stride 2
  instead. Feature = Dense(D) of the grid-averaged pooled map [B, K], taken
  before dropout (skipped if K == D).
* The final exit of block-structured nets always uses `FinalHead`: the
  network's own classifier, global average pool -> [Dense -> ReLU ->
  Dropout(0.5)] x len(hidden) -> Dense(C); feature = pooled [B, D] vector.
* "msdnet" (`MsdHead`, Huang et al. / Phuong & Lampert): ConvBNReLU 3x3 s2
  (-> width) -> ConvBNReLU 3x3 s2 -> AvgPool 2 -> global mean -> Dense(C);
  feature = the [B, width] pooled vector. With IMTA's inline subnetwork
  collaboration (`MSDNet(isc=True)`) the Dense also reads a projection of
  the previous exit's logits.
"""

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from mexd import errors
from mexd.models import layers

Array = Any
ModuleDef = layers.ModuleDef

HEAD_KINDS = ("byot", "byot_sep", "sdn", "erde", "erde_window")


def grid_pool(x: Array, grid: int, op: str) -> Array:
  """Pools [B, H, W, K] with window = stride = max(1, H // grid) (per axis).

  This is SDN's `feature_reduction_formula`: maps of size >= grid are pooled
  to (about) grid x grid, smaller ones are left alone.
  """
  win = tuple(max(1, s // grid) for s in x.shape[1:3])
  pool = nn.max_pool if op == "max" else nn.avg_pool
  return pool(x, win, strides=win, padding="VALID")


def _project(x: Array, features: int, dtype: Any) -> Array:
  """[B, K] -> [B, D]: identity if K == D, else a side-branch Dense(D)."""
  if x.shape[-1] == features:
    return x
  return nn.Dense(features, dtype=dtype, name="proj")(x)


class PoolDenseHead(nn.Module):
  """Global average pool -> Dense(D) -> ReLU -> Dense(C).

  Attributes:
    num_classes: C.
    features: D, the width of the returned feature vector.
    dtype: compute dtype (parameters stay float32).
  """

  num_classes: int
  features: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: Array, *, train: bool = False):
    """h: [B, H, W, K] -> (logits [B, C], features [B, D])."""
    del train
    x = jnp.mean(h, axis=(1, 2))  # [B, K]
    f = nn.relu(nn.Dense(self.features, dtype=self.dtype, name="fc")(x))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="out")(f)
    return logits, f


class FinalHead(nn.Module):
  """The backbone's own classifier: global average pool -> MLP -> Dense(C).

  Attributes:
    num_classes: C.
    hidden: widths of optional hidden layers (Dense -> ReLU -> Dropout).
    dropout: dropout rate after each hidden layer (train mode only).
    dtype: compute dtype.
  """

  num_classes: int
  hidden: Sequence[int] = ()
  dropout: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: Array, *, train: bool = False):
    """h: [B, H, W, D] -> (logits [B, C], features [B, D] = pooled h)."""
    f = jnp.mean(h, axis=(1, 2))  # [B, D]
    x = f
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"hidden{i}")(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="out")(x)
    return logits, f


class ByotHead(nn.Module):
  """BYOT / EED exit: (ReLU -> conv3x3 -> BN) steps -> ReLU -> pool -> Dense.

  Attributes:
    num_classes: C.
    steps: (width, stride) of each conv step; the last width is D. Empty: no
      conv path (the map is already at the final resolution and width).
    separable: depthwise 3x3 -> pointwise 1x1 instead of a full 3x3 conv.
    dtype: compute dtype.
    conv, norm: layer classes (`mexd.models.layers`).
  """

  num_classes: int
  steps: Sequence[Tuple[int, int]] = ()
  separable: bool = False
  dtype: Any = jnp.float32
  conv: ModuleDef = layers.FLAX.conv
  norm: ModuleDef = layers.FLAX.norm

  @nn.compact
  def __call__(self, h: Array, *, train: bool = False):
    """h: [B, H, W, K] -> (logits [B, C], features [B, D])."""
    x = h
    for i, (width, stride) in enumerate(self.steps):
      x = nn.relu(x)
      if self.separable:
        x = layers.conv(self.conv, x.shape[-1], 3, stride, self.dtype,
                        f"dwconv{i}", groups=x.shape[-1])(x)
        x = layers.conv(self.conv, width, 1, 1, self.dtype, f"conv{i}")(x)
      else:
        x = layers.conv(self.conv, width, 3, stride, self.dtype,
                        f"conv{i}")(x)
      x = layers.batch_norm(self.norm, train, self.dtype, f"bn{i}")(x)
    f = jnp.mean(nn.relu(x), axis=(1, 2))  # [B, D]
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="out")(f)
    return logits, f


class SdnHead(nn.Module):
  """SDN internal classifier: mixed max/avg pool -> flatten -> Dense(C).

  Attributes:
    num_classes: C.
    features: D (side-branch projection of the pooled map, see module doc).
    grid: target pooled size (4 in SDN).
    dtype: compute dtype.
  """

  num_classes: int
  features: int
  grid: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: Array, *, train: bool = False):
    """h: [B, H, W, K] -> (logits [B, C], features [B, D])."""
    del train
    alpha = self.param("alpha", nn.initializers.uniform(1.0), (), jnp.float32)
    a = alpha.astype(h.dtype)
    x = a * grid_pool(h, self.grid, "max") + (1 - a) * grid_pool(
        h, self.grid, "avg")  # [B, g, g, K]
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="out")(
        x.reshape(x.shape[0], -1))
    f = _project(jnp.mean(x, axis=(1, 2)), self.features, self.dtype)
    return logits, f


class ErdeHead(nn.Module):
  """ERDE exit: BN -> ReLU -> 2x2 avg pool -> Dropout(0.5) -> Dense(C).

  Attributes:
    num_classes: C.
    features: D (side-branch projection of the pooled map, see module doc).
    window: False: pool to a 2 x 2 grid (default reading); True: a 2 x 2
      window with stride 2.
    dropout: dropout rate before the classifier (train mode only).
    dtype: compute dtype.
    norm: batch-norm class (`mexd.models.layers`).
  """

  num_classes: int
  features: int
  window: bool = False
  dropout: float = 0.5
  dtype: Any = jnp.float32
  norm: ModuleDef = layers.FLAX.norm

  @nn.compact
  def __call__(self, h: Array, *, train: bool = False):
    """h: [B, H, W, K] -> (logits [B, C], features [B, D])."""
    x = nn.relu(layers.batch_norm(self.norm, train, self.dtype, "bn")(h))
    if self.window:
      win = tuple(min(2, s) for s in x.shape[1:3])
      x = nn.avg_pool(x, win, strides=win, padding="VALID")
    else:
      x = grid_pool(x, 2, "avg")  # [B, 2, 2, K]
    f = _project(jnp.mean(x, axis=(1, 2)), self.features, self.dtype)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="out")(
        x.reshape(x.shape[0], -1))
    return logits, f


class MsdHead(nn.Module):
  """MSDNet exit: 2 x ConvBNReLU 3x3 s2 -> AvgPool 2 -> mean -> Dense(C).

  Attributes:
    num_classes: C.
    width: channels of both convs (= D, 128 in Phuong & Lampert's CIFAR net).
    dtype: compute dtype.
    conv, norm: layer classes (`mexd.models.layers`).
  """

  num_classes: int
  width: int = 128
  dtype: Any = jnp.float32
  conv: ModuleDef = layers.FLAX.conv
  norm: ModuleDef = layers.FLAX.norm

  @nn.compact
  def __call__(self, h: Array, *, train: bool = False,
               extra: Optional[Array] = None):
    """h: [B, H, W, K] (8 x 8 for CIFAR) -> (logits [B, C], feats [B, D]).

    `extra` [B, D'] (IMTA's inline subnetwork collaboration) is concatenated
    to the pooled features before the classifier; feats stay [B, D].
    """
    x = h
    for i in range(2):
      x = layers.conv(self.conv, self.width, 3, 2, self.dtype, f"conv{i}")(x)
      x = nn.relu(layers.batch_norm(self.norm, train, self.dtype,
                                    f"bn{i}")(x))
    win = tuple(min(2, s) for s in x.shape[1:3])
    x = nn.avg_pool(x, win, strides=win, padding="VALID")
    f = jnp.mean(x, axis=(1, 2))  # [B, width]; 1 x 1 at 32 x 32 inputs
    x = f if extra is None else jnp.concatenate(
        [f, extra.astype(f.dtype)], axis=-1)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="out")(x)
    return logits, f


def make_head(kind: str, *, num_classes: int, features: int,
              steps: Sequence[Tuple[int, int]] = (), dtype: Any = jnp.float32,
              conv: ModuleDef = layers.FLAX.conv,
              norm: ModuleDef = layers.FLAX.norm) -> nn.Module:
  """Builds an unbound intermediate exit head of the given kind.

  Args:
    kind: one of HEAD_KINDS.
    num_classes: C.
    features: D, the common feature width of the model's exits.
    steps: for "byot", the (width, stride) conv steps (last width = D).
    dtype: compute dtype.
    conv, norm: the model's layer classes (`mexd.models.layers`).

  Raises:
    InputError: unknown kind, listing the valid ones.
  """
  if kind in ("byot", "byot_sep"):
    return ByotHead(num_classes, tuple(steps), kind == "byot_sep",
                    dtype=dtype, conv=conv, norm=norm, parent=None)
  if kind == "sdn":
    return SdnHead(num_classes, features, dtype=dtype, parent=None)
  if kind in ("erde", "erde_window"):
    return ErdeHead(num_classes, features, window=kind == "erde_window",
                    dtype=dtype, norm=norm, parent=None)
  raise errors.InputError(f"unknown head kind {kind!r}; valid: "
                          f"{', '.join(HEAD_KINDS)}")
