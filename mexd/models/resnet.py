"""Multi-exit ResNet, ResNeXt and Wide ResNet (CIFAR and ImageNet stems).

* `ResNet`: He et al. 2016 with BasicBlock (ResNet-18/34) or Bottleneck
  (ResNet-50, stride on the 3x3 conv as in torchvision v1.5); grouped 3x3 convs
  give ResNeXt (Xie et al. 2017; ResNeXt-29 for CIFAR: 3 stages of 3 blocks,
  outputs 256/512/1024, group width cardinality x 64 x 2^stage). CIFAR stem:
  conv3x3 s1 -> BN -> ReLU; ImageNet stem: conv7x7 s2 -> BN -> ReLU ->
  maxpool3x3 s2.
* `WideResNet`: Zagoruyko & Komodakis 2016, WRN-d-k with pre-activation
  blocks (BN -> ReLU -> conv3x3 -> [dropout] -> BN -> ReLU -> conv3x3), a
  1x1 conv shortcut on the pre-activated input when the width changes, and a
  final BN -> ReLU before the classifier.

All convs are bias-free (every conv feeds a BN) and built from the model's
`conv` / `norm` layer classes (`mexd.models.layers`); the classifier is
pool -> Dense(C) with bias. Each residual block is one unit (see
`mexd.models.blocknet`), so SDN-style fractional exits can split stages.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mexd import errors
from mexd.models import blocknet
from mexd.models import layers

Array = Any
ModuleDef = layers.ModuleDef
_conv, _bn = layers.conv, layers.batch_norm


class ResNetStem(nn.Module):
  """CIFAR: conv3x3-BN-ReLU; ImageNet: conv7x7 s2-BN-ReLU-maxpool3x3 s2."""

  in_width: int
  out_width: int
  imagenet: bool = False
  dtype: Any = jnp.float32
  conv: ModuleDef = layers.FLAX.conv
  norm: ModuleDef = layers.FLAX.norm

  @property
  def stride(self) -> int:
    return 4 if self.imagenet else 1

  @nn.nowrap
  def cost(self, hw: int) -> int:
    k, s = (7, 2) if self.imagenet else (3, 1)
    return blocknet.conv_macs(hw, self.in_width, self.out_width, k, s)[0]

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    """x: [B, H, W, 3] -> [B, H / stride, W / stride, out_width]."""
    k, s = (7, 2) if self.imagenet else (3, 1)
    x = _conv(self.conv, self.out_width, k, s, self.dtype, "conv")(x)
    x = nn.relu(_bn(self.norm, train, self.dtype, "bn")(x))
    if self.imagenet:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    return x


def _shortcut(block, x: Array, train: bool) -> Array:
  """`block`'s shortcut: x, or 1x1 conv (stride) -> BN where the shape changes.

  x: [B, H, W, in_width] -> [B, H / stride, W / stride, out_width].
  """
  if block.stride == 1 and block.in_width == block.out_width:
    return x
  x = _conv(block.conv, block.out_width, 1, block.stride, block.dtype,
            "proj")(x)
  return _bn(block.norm, train, block.dtype, "proj_bn")(x)


def _shortcut_macs(block, hw: int) -> int:
  """MACs of `_shortcut(block, ...)` on an hw x hw input."""
  if block.stride == 1 and block.in_width == block.out_width:
    return 0
  return blocknet.conv_macs(hw, block.in_width, block.out_width, 1,
                            block.stride)[0]


class BasicBlock(nn.Module):
  """conv3x3(s) -> BN -> ReLU -> conv3x3 -> BN, + shortcut, -> ReLU."""

  in_width: int
  out_width: int
  stride: int = 1
  dtype: Any = jnp.float32
  conv: ModuleDef = layers.FLAX.conv
  norm: ModuleDef = layers.FLAX.norm

  @nn.nowrap
  def cost(self, hw: int) -> int:
    c1, o = blocknet.conv_macs(hw, self.in_width, self.out_width, 3,
                               self.stride)
    c2, _ = blocknet.conv_macs(o, self.out_width, self.out_width, 3, 1)
    return c1 + c2 + _shortcut_macs(self, hw)

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    """x: [B, H, W, in_width] -> [B, H / stride, W / stride, out_width]."""
    y = _conv(self.conv, self.out_width, 3, self.stride, self.dtype,
              "conv1")(x)
    y = nn.relu(_bn(self.norm, train, self.dtype, "bn1")(y))
    y = _conv(self.conv, self.out_width, 3, 1, self.dtype, "conv2")(y)
    y = _bn(self.norm, train, self.dtype, "bn2")(y)
    return nn.relu(_shortcut(self, x, train) + y)


class Bottleneck(nn.Module):
  """1x1 -> BN -> ReLU -> 3x3(s, groups) -> BN -> ReLU -> 1x1 -> BN, + sc."""

  in_width: int
  mid_width: int
  out_width: int
  stride: int = 1
  groups: int = 1
  dtype: Any = jnp.float32
  conv: ModuleDef = layers.FLAX.conv
  norm: ModuleDef = layers.FLAX.norm

  @nn.nowrap
  def cost(self, hw: int) -> int:
    c1, _ = blocknet.conv_macs(hw, self.in_width, self.mid_width, 1, 1)
    c2, o = blocknet.conv_macs(hw, self.mid_width, self.mid_width, 3,
                               self.stride, self.groups)
    c3, _ = blocknet.conv_macs(o, self.mid_width, self.out_width, 1, 1)
    return c1 + c2 + c3 + _shortcut_macs(self, hw)

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    """x: [B, H, W, in_width] -> [B, H / stride, W / stride, out_width]."""
    y = _conv(self.conv, self.mid_width, 1, 1, self.dtype, "conv1")(x)
    y = nn.relu(_bn(self.norm, train, self.dtype, "bn1")(y))
    y = _conv(self.conv, self.mid_width, 3, self.stride, self.dtype,
              "conv2", groups=self.groups)(y)
    y = nn.relu(_bn(self.norm, train, self.dtype, "bn2")(y))
    y = _conv(self.conv, self.out_width, 1, 1, self.dtype, "conv3")(y)
    y = _bn(self.norm, train, self.dtype, "bn3")(y)
    return nn.relu(_shortcut(self, x, train) + y)


class ConvStem(nn.Module):
  """WRN stem: a single conv3x3 (no BN / ReLU: the blocks pre-activate)."""

  in_width: int
  out_width: int
  dtype: Any = jnp.float32
  conv: ModuleDef = layers.FLAX.conv
  norm: ModuleDef = layers.FLAX.norm
  stride = 1

  @nn.nowrap
  def cost(self, hw: int) -> int:
    return blocknet.conv_macs(hw, self.in_width, self.out_width, 3, 1)[0]

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    del train
    return _conv(self.conv, self.out_width, 3, 1, self.dtype, "conv")(x)


class PreActBlock(nn.Module):
  """WRN block: BN-ReLU-conv3x3(s)-[drop]-BN-ReLU-conv3x3, + shortcut."""

  in_width: int
  out_width: int
  stride: int = 1
  dropout: float = 0.0
  dtype: Any = jnp.float32
  conv: ModuleDef = layers.FLAX.conv
  norm: ModuleDef = layers.FLAX.norm

  @nn.nowrap
  def cost(self, hw: int) -> int:
    return BasicBlock(self.in_width, self.out_width, self.stride,
                      parent=None).cost(hw)

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    """x: [B, H, W, in_width] -> [B, H / stride, W / stride, out_width]."""
    a = nn.relu(_bn(self.norm, train, self.dtype, "bn1")(x))
    y = _conv(self.conv, self.out_width, 3, self.stride, self.dtype,
              "conv1")(a)
    y = nn.relu(_bn(self.norm, train, self.dtype, "bn2")(y))
    if self.dropout > 0:
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = _conv(self.conv, self.out_width, 3, 1, self.dtype, "conv2")(y)
    if self.stride != 1 or self.in_width != self.out_width:
      x = _conv(self.conv, self.out_width, 1, self.stride, self.dtype,
                "proj")(a)
    return x + y


class BnRelu(nn.Module):
  """Final BN -> ReLU of a pre-activation net (no MACs)."""

  out_width: int
  dtype: Any = jnp.float32
  conv: ModuleDef = layers.FLAX.conv
  norm: ModuleDef = layers.FLAX.norm
  stride = 1

  @nn.nowrap
  def cost(self, hw: int) -> int:
    del hw
    return 0

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    return nn.relu(_bn(self.norm, train, self.dtype, "bn")(x))


class ResNet(blocknet.BlockNet):
  """Multi-exit ResNet / ResNeXt.

  Attributes:
    stage_sizes: residual blocks per stage.
    widths: output width of each stage.
    mid_widths: bottleneck (3x3) width of each stage; None: BasicBlocks.
    groups: groups of the bottleneck 3x3 conv (ResNeXt cardinality).
    stem_width: stem output width.
    imagenet: 7x7 stride-2 stem + maxpool (224 inputs) instead of 3x3 (32).
    (and num_classes, head, exits, dtype, conv, norm from `BlockNet`.)
  """

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  mid_widths: Optional[Sequence[int]] = None
  groups: int = 1
  stem_width: int = 64
  imagenet: bool = False

  @nn.nowrap
  def plan(self) -> blocknet.Plan:
    kw = self.unit_kwargs()
    units = [ResNetStem(3, self.stem_width, self.imagenet, **kw)]
    ends, width = [], self.stem_width
    for i, (n, w) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(n):
        s = 2 if (i > 0 and j == 0) else 1
        if self.mid_widths is None:
          units.append(BasicBlock(width, w, s, **kw))
        else:
          units.append(Bottleneck(width, self.mid_widths[i], w, s,
                                  self.groups, **kw))
        width = w
      ends.append(len(units) - 1)
    return blocknet.Plan(units, tuple(ends), 224 if self.imagenet else 32)


class WideResNet(blocknet.BlockNet):
  """Multi-exit WRN-depth-k for CIFAR (three stages, three exits).

  Attributes:
    depth: total depth d, with (d - 4) / 6 blocks per stage.
    widen_factor: k; stage widths 16k, 32k, 64k.
    dropout: dropout rate between the convs of a block (0 disables it).
    (and num_classes, head, exits, dtype, conv, norm from `BlockNet`.)
  """

  depth: int = 28
  widen_factor: int = 10
  dropout: float = 0.0

  @nn.nowrap
  def plan(self) -> blocknet.Plan:
    if (self.depth - 4) % 6:
      raise errors.InputError(f"WRN depth must be 6n + 4, got {self.depth}")
    n = (self.depth - 4) // 6
    kw = self.unit_kwargs()
    units = [ConvStem(3, 16, **kw)]
    ends, width = [], 16
    for i, w in enumerate(16 * self.widen_factor * m for m in (1, 2, 4)):
      for j in range(n):
        s = 2 if (i > 0 and j == 0) else 1
        units.append(PreActBlock(width, w, s, self.dropout, **kw))
        width = w
      ends.append(len(units) - 1)
    units.append(BnRelu(width, **kw))
    ends[-1] = len(units) - 1
    return blocknet.Plan(units, tuple(ends), 32)
