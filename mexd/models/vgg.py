"""Multi-exit VGG with batch norm for CIFAR (Simonyan & Zisserman 2015).

Five conv blocks of conv3x3 -> BN -> ReLU layers, each block ending in a 2x2
max pool (32 -> 1 for CIFAR), then the classifier: global pool (of the 1x1
map) -> [Dense(h) -> ReLU -> Dropout(0.5)] x len(classifier_hidden) ->
Dense(C). Each conv layer is one unit (the pool belongs to the block's last
conv), so fractional exits may fall inside a block; the "stages" exits sit
after each of the five blocks (E = 5).

Differences from the torchvision / pytorch-cifar VGGs: convs are bias-free
(each feeds a BN: 4,224 fewer parameters for VGG-16). The classifier is a
single Dense by default (pytorch-cifar); `classifier_hidden=(512, 512)` gives
SDN's CIFAR VGG-16 head and `(512,)` the common 15.0M-parameter VGG-16-BN.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mexd import errors
from mexd.models import blocknet
from mexd.models import layers

Array = Any
ModuleDef = layers.ModuleDef

CONFIGS = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VggConv(nn.Module):
  """conv3x3 -> BN -> ReLU, then a 2x2 max pool if `pool`."""

  in_width: int
  out_width: int
  pool: bool = False
  dtype: Any = jnp.float32
  conv: ModuleDef = layers.FLAX.conv
  norm: ModuleDef = layers.FLAX.norm

  @property
  def stride(self) -> int:
    return 2 if self.pool else 1

  @nn.nowrap
  def cost(self, hw: int) -> int:
    return blocknet.conv_macs(hw, self.in_width, self.out_width, 3, 1)[0]

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    """x: [B, H, W, in_width] -> [B, H / stride, W / stride, out_width]."""
    x = layers.conv(self.conv, self.out_width, 3, 1, self.dtype, "conv")(x)
    x = nn.relu(layers.batch_norm(self.norm, train, self.dtype, "bn")(x))
    if self.pool:
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return x


class VGG(blocknet.BlockNet):
  """Multi-exit VGG-BN for 32 x 32 inputs.

  Attributes:
    depth: 11, 13, 16 or 19 (see CONFIGS).
    config: conv widths per block, overriding CONFIGS[depth] (e.g. a
      thinner student); each block ends in a 2x2 max pool.
    classifier_hidden: hidden widths of the final classifier.
    (and num_classes, head, exits, dtype, conv, norm from `BlockNet`.)
  """

  depth: int = 16
  config: Optional[Sequence[Sequence[int]]] = None
  classifier_hidden: Sequence[int] = ()

  @nn.nowrap
  def plan(self) -> blocknet.Plan:
    if self.config is None and self.depth not in CONFIGS:
      raise errors.InputError(
          f"VGG depth must be one of {sorted(CONFIGS)}, got "
          f"{self.depth}")
    config = CONFIGS[self.depth] if self.config is None else self.config
    units, ends, width = [], [], 3
    for block in config:
      for j, w in enumerate(block):
        units.append(VggConv(width, w, pool=j == len(block) - 1,
                             **self.unit_kwargs()))
        width = w
      ends.append(len(units) - 1)
    return blocknet.Plan(units, tuple(ends), 32,
                         tuple(self.classifier_hidden))
