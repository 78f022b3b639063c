"""Small multi-exit CNNs for the embedded digits (8x8) and Fashion-MNIST (28x28).

Each stage is `convs_per_stage` x (3x3 conv -> BN -> ReLU). A stage with
stride s > 1 reduces the resolution first, by its first conv's stride
(`downsample="stride"`) or by an s x s max pool before stride-1 convs
(`downsample="maxpool"`). Every stage ends in an exit head:

* `head="pool_dense"`: global average pool -> Dense(D) -> ReLU -> Dense(C);
* `head="conv"`: 3x3 conv stride 2 (D channels) -> BN -> ReLU -> global
  average pool -> Dense(C), the exit shape of the early-exit papers (MSDNet's
  and BYOT's exits start with strided convolutions; `heads.ByotHead` with one
  step).

The feature vector of an exit (for feature distillation) is its [B, D]
vector before the last Dense layer.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mexd import errors
from mexd.models import base
from mexd.models import heads
from mexd.models import layers

Array = Any
ModuleDef = layers.ModuleDef

HEADS = ("pool_dense", "conv")
DOWNSAMPLE = ("stride", "maxpool")


class ConvStage(nn.Module):
  """`num_convs` x (conv3x3 -> BN -> ReLU); the first conv has `stride`.

  The convs have `nn.Conv`'s "SAME" padding and LeCun-normal init (not the
  PyTorch-style padding and He init of `layers.conv`).
  """

  width: int
  num_convs: int = 2
  stride: int = 1
  maxpool: bool = False
  dtype: Any = jnp.float32
  conv: ModuleDef = layers.FLAX.conv
  norm: ModuleDef = layers.FLAX.norm

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    """x: [B, H, W, K] -> [B, H / stride, W / stride, width] (ceil)."""
    if self.maxpool and self.stride > 1:
      s = (self.stride, self.stride)
      x = nn.max_pool(x, s, strides=s, padding="SAME")
    for i in range(self.num_convs):
      s = self.stride if i == 0 and not self.maxpool else 1
      x = self.conv(self.width, (3, 3), strides=(s, s), padding="SAME",
                    kernel_init=nn.initializers.lecun_normal(),
                    dtype=self.dtype, name=f"conv{i}")(x)
      x = layers.batch_norm(self.norm, train, self.dtype, f"bn{i}")(x)
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
    head: exit head kind, "pool_dense" or "conv" (module docstring).
    downsample: "stride" (strided first conv) or "maxpool".
    dtype: compute dtype; parameters are float32.
    conv, norm: layer classes (`mexd.models.layers`; `get_model` picks them
      for the backend).
  """

  num_classes: int = 10
  widths: Sequence[int] = (32, 64, 128)
  strides: Sequence[int] = (1, 2, 2)
  convs_per_stage: int = 2
  head_features: int = 64
  head: str = "pool_dense"
  downsample: str = "stride"
  dtype: Any = jnp.float32
  conv: ModuleDef = layers.FLAX.conv
  norm: ModuleDef = layers.FLAX.norm

  def setup(self):
    if len(self.widths) != len(self.strides):
      raise errors.InputError(
          f"widths {tuple(self.widths)} and strides {tuple(self.strides)} "
          "must have the same length (one entry per exit).")
    if self.head not in HEADS:
      raise errors.InputError(f"unknown small_cnn head {self.head!r}; valid: "
                              f"{', '.join(HEADS)}")
    if self.downsample not in DOWNSAMPLE:
      raise errors.InputError(
          f"unknown small_cnn downsample {self.downsample!r}; "
          f"valid: {', '.join(DOWNSAMPLE)}")
    kw = dict(dtype=self.dtype, conv=self.conv, norm=self.norm)
    self.blocks = [
        ConvStage(w, self.convs_per_stage, s,
                  maxpool=self.downsample == "maxpool", **kw)
        for w, s in zip(self.widths, self.strides)
    ]
    if self.head == "conv":
      self.heads = [
          heads.ByotHead(self.num_classes, ((self.head_features, 2),), **kw)
          for _ in self.widths
      ]
    else:
      self.heads = [
          heads.PoolDenseHead(self.num_classes, self.head_features,
                              dtype=self.dtype)
          for _ in self.widths
      ]
