"""Small multi-exit CNNs for the embedded digits (8x8) and Fashion-MNIST (28x28).

Each stage is `convs_per_stage` x (3x3 conv -> BN -> ReLU); stages after the
first start with a stride-2 conv so the resolution halves. Every stage ends in
an exit head (global pool -> dense -> dense).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mexd.models import base
from mexd.models import conv
from mexd.models import heads

Array = Any


class ConvStage(nn.Module):
  """`num_convs` x (conv3x3 -> BN -> ReLU); the first conv has `stride`."""

  width: int
  num_convs: int = 2
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    """x: [B, H, W, K] -> [B, H / stride, W / stride, width]."""
    for i in range(self.num_convs):
      s = self.stride if i == 0 else 1
      x = conv.Conv(self.width, (3, 3), strides=(s, s), padding="SAME",
                    dtype=self.dtype, name=f"conv{i}")(x)
      x = heads.batch_norm(train, self.dtype, f"bn{i}")(x)
      x = nn.relu(x)
    return x


class SmallCNN(base.MultiExitModel):
  """A small multi-exit CNN: one exit after each stage.

  Attributes:
    num_classes: number of classes C.
    widths: channels of each stage; E = len(widths) exits.
    strides: stride of the first conv of each stage (same length as widths).
    convs_per_stage: convolutions per stage.
    head_features: D, width of each exit's feature vector.
    dtype: compute dtype; parameters are float32.
  """

  num_classes: int = 10
  widths: Sequence[int] = (32, 64, 128)
  strides: Sequence[int] = (1, 2, 2)
  convs_per_stage: int = 2
  head_features: int = 64
  dtype: Any = jnp.float32

  def setup(self):
    if len(self.widths) != len(self.strides):
      raise ValueError(
          f"widths {tuple(self.widths)} and strides {tuple(self.strides)} "
          "must have the same length (one entry per exit).")
    self.blocks = [
        ConvStage(w, self.convs_per_stage, s, dtype=self.dtype)
        for w, s in zip(self.widths, self.strides)
    ]
    self.heads = [
        heads.PoolDenseHead(self.num_classes, self.head_features,
                            dtype=self.dtype)
        for _ in self.widths
    ]
