"""Multi-Scale Dense Network (Huang et al., ICLR 2018), Phuong & Lampert setup.

The hidden state is a list of S feature maps, one per scale (scale s has
resolution input / 2^s); a pruned scale is None. The net is a sequence of
*columns* (layers):

* column 0 (first layer): scale 0 = ConvBNReLU 3x3 of the image (ImageNet:
  7x7 s2 + maxpool), scale s = ConvBNReLU 3x3 s2 of scale s - 1.
* dense layer: every live scale s concatenates new channels to its input:
  [x_s, conv(x_s), conv_down(x_{s-1})]. With a finer input (s > 0 and
  x_{s-1} live) half of the new channels come from `conv` (stride 1, from
  x_s) and half from `conv_down` (stride 2, from x_{s-1}); scale 0 gets all
  from `conv`. Each conv is a bottleneck 1x1 ConvBNReLU (width
  min(C_in, b * C_new)) -> 3x3 ConvBNReLU, with b = btneck_widths[scale].
* transition: a 1x1 ConvBNReLU per live scale that shrinks the channels.

Channels of column c at scale s are nplanes_mulv[s] * h_c (0 if pruned), with
h_0 = nplanes_init, h += nplanes_addh per dense layer, and a transition with
h <- floor(h * plane_reduction) after the layers floor((L-1)/3) and
floor(2(L-1)/3) (L = number of layers incl. the first). "min" scale pruning
drops the finest scales only in the last S - 1 layers: layer i keeps the
scales s >= max(0, S - (L - i)); "max" drops one scale every ceil((L-1)/S)
layers. Exit k sits after layer nlayers_to_exit + k * nlayers_between_exits
(and after its transition, if that layer has one) and reads the coarsest
scale with `heads.MsdHead`.

PROJECT READING: the layout rules follow the CIFAR network of Phuong &
Lampert (docs/methods.md §1.6: n_scales=3, 11 exits, 4 layers to the first
exit, 2 between exits, mulv (6, 12, 24), addh 1, init 1, prune "min",
reduction 0.5, exit width 128, bottleneck widths (4, 4, 4)), which differs
from Huang et al.'s CIFAR MSDNet (initial 16/32/64 channels, pruning every
block). As in the rest of the zoo, convs are bias-free (each feeds a BN).
With the default setting: 25 layers + 2 transitions = 27 columns, coarsest
widths 24 * h.
"""

import math
from typing import Any, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from mexd import errors
from mexd.models import base
from mexd.models import blocknet
from mexd.models import gradient
from mexd.models import heads
from mexd.models import layers

Array = Any
ModuleDef = layers.ModuleDef


def _conv_bn_relu(m, x, width, kernel, stride, name, train):
  """ConvBNReLU inside module `m` (its conv, norm and dtype)."""
  x = layers.conv(m.conv, width, kernel, stride, m.dtype, f"{name}_conv")(x)
  return nn.relu(layers.batch_norm(m.norm, train, m.dtype, f"{name}_bn")(x))


def _bottleneck(m, x, n_out, stride, btneck, name, train):
  """[1x1 ConvBNReLU (width min(C_in, btneck * n_out))] -> 3x3 ConvBNReLU."""
  if btneck:
    n_mid = min(x.shape[-1], btneck * n_out)
    x = _conv_bn_relu(m, x, n_mid, 1, 1, f"{name}_a", train)
  return _conv_bn_relu(m, x, n_out, 3, stride, f"{name}_b", train)


def msd_layout(n_scales: int, n_exits: int, nlayers_to_exit: int,
               nlayers_between_exits: int, nplanes_mulv: Sequence[int],
               nplanes_addh: int, nplanes_init: int, prune: Optional[str],
               plane_reduction: float):
  """Channel table and block split of an MSDNet (see module docstring).

  Returns:
    (planes, kinds, block_ends): planes[c] is a tuple of S channel counts of
    column c (0 = pruned scale); kinds[c] in {"first", "layer",
    "transition"}; block_ends[k] is the last column of stage k.
  """
  if len(nplanes_mulv) != n_scales:
    raise errors.InputError(
        f"nplanes_mulv {tuple(nplanes_mulv)} needs n_scales = "
        f"{n_scales} entries")
  n_layers = 1 + nlayers_to_exit + nlayers_between_exits * (n_exits - 1)
  if prune == "min":
    nprune = [max(0, min(n_scales, n_layers) - (n_layers - i))
              for i in range(n_layers)]
    reduce_at = [(n_layers - 1) // 3, 2 * (n_layers - 1) // 3]
  elif prune == "max":
    step = math.ceil((n_layers - 1) / n_scales)
    nprune = [0] + [i // step for i in range(n_layers - 1)]
    reduce_at = list(range(step + 1, n_layers, step))
  elif prune is None:
    nprune, reduce_at = [0] * n_layers, []
  else:
    raise errors.InputError(
        f"prune must be 'min', 'max' or None, got {prune!r}")
  if not plane_reduction:
    reduce_at = []
  hs, drops, kinds, col_of_layer = [nplanes_init], [0], ["first"], [0]
  for i in range(1, n_layers):
    hs.append(hs[-1] + nplanes_addh)
    drops.append(nprune[i])
    kinds.append("layer")
    col_of_layer.append(len(hs) - 1)
    if i in reduce_at:
      hs.append(math.floor(hs[-1] * plane_reduction))
      drops.append(nprune[i])
      kinds.append("transition")
  planes = [tuple(m * h if s >= d else 0 for s, m in enumerate(nplanes_mulv))
            for h, d in zip(hs, drops)]
  block_ends = []
  for k in range(n_exits):
    layer = nlayers_to_exit + k * nlayers_between_exits
    block_ends.append(col_of_layer[layer] + (layer in reduce_at))
  return planes, kinds, tuple(block_ends)


class MsdFirstLayer(nn.Module):
  """Image -> S scales: [B, H, W, 3] -> list of [B, H / 2^s, W / 2^s, w_s]."""

  widths: Sequence[int]
  imagenet: bool = False
  dtype: Any = jnp.float32
  conv: ModuleDef = layers.FLAX.conv
  norm: ModuleDef = layers.FLAX.norm

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> List[Array]:
    k, s = (7, 2) if self.imagenet else (3, 1)
    x = _conv_bn_relu(self, x, self.widths[0], k, s, "s0", train)
    if self.imagenet:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    out = [x]
    for i, w in enumerate(self.widths[1:], start=1):
      out.append(_conv_bn_relu(self, out[-1], w, 3, 2, f"s{i}", train))
    return out


class MsdDenseLayer(nn.Module):
  """One dense multi-scale layer (channels in_widths -> out_widths)."""

  in_widths: Sequence[int]
  out_widths: Sequence[int]
  btneck_widths: Sequence[int] = (4, 4, 4)
  dtype: Any = jnp.float32
  conv: ModuleDef = layers.FLAX.conv
  norm: ModuleDef = layers.FLAX.norm

  @nn.compact
  def __call__(self, xs: List[Optional[Array]], *, train: bool = False):
    """xs: per-scale maps (None = pruned) -> the same with more channels."""
    out = []
    for s, (n_in, n_out) in enumerate(zip(self.in_widths, self.out_widths)):
      if not n_out:
        out.append(None)
        continue
      new = n_out - n_in
      has_down = s > 0 and self.in_widths[s - 1] > 0
      parts = [xs[s]]
      if has_down:
        parts.append(_bottleneck(self, xs[s], new // 2, 1,
                                 self.btneck_widths[s], f"s{s}_conv", train))
        parts.append(_bottleneck(self, xs[s - 1], new - new // 2, 2,
                                 self.btneck_widths[s - 1], f"s{s}_down",
                                 train))
      else:
        parts.append(_bottleneck(self, xs[s], new, 1, self.btneck_widths[s],
                                 f"s{s}_conv", train))
      out.append(jnp.concatenate(parts, axis=-1))
    return out


class MsdTransition(nn.Module):
  """A 1x1 ConvBNReLU per live scale (channels in_widths -> out_widths)."""

  out_widths: Sequence[int]
  dtype: Any = jnp.float32
  conv: ModuleDef = layers.FLAX.conv
  norm: ModuleDef = layers.FLAX.norm

  @nn.compact
  def __call__(self, xs: List[Optional[Array]], *, train: bool = False):
    return [None if x is None else
            _conv_bn_relu(self, x, w, 1, 1, f"s{s}", train)
            for s, (x, w) in enumerate(zip(xs, self.out_widths))]


class CoarsestScale(nn.Module):
  """Applies `head` to the coarsest (last) scale of a multi-scale state."""

  head: nn.Module

  def __call__(self, xs: List[Optional[Array]], *, train: bool = False):
    return self.head(xs[-1], train=train)


class IscBlock(nn.Module):
  """A stage of an MSDNet with ISC: (scales, z_prev) -> (block(scales), z_prev).

  Stage 0 receives the images and starts the carry with z_prev = None.
  """

  block: nn.Module

  def __call__(self, h, *, train: bool = False):
    xs, z_prev = h if isinstance(h, tuple) else (h, None)
    return self.block(xs, train=train), z_prev


class IscExit(nn.Module):
  """IMTA's inline subnetwork collaboration (ISC) at one MSDNet exit.

  Exit k > 0 classifies the concatenation of its own pooled features f_k and
  ReLU(BN(Dense(width)(z_{k-1}))), a projection of the previous exit's
  logits; exit 0 is a plain `heads.MsdHead` (Li et al., ICCV 2019, §3.3;
  docs/methods.md §9).

  Attributes:
    head: the exit's `heads.MsdHead`.
    width: width of the projection of z_{k-1} (the authors: the exit width).
    dtype: compute dtype.
    norm: the batch-norm class (`mexd.models.layers`).
  """

  head: nn.Module
  width: int
  dtype: Any = jnp.float32
  norm: ModuleDef = layers.FLAX.norm

  @nn.compact
  def __call__(self, h, *, train: bool = False):
    """h: (scales, z_prev [B, C] or None) -> (logits [B, C], feats [B, D])."""
    xs, z_prev = h
    if z_prev is None:
      return self.head(xs[-1], train=train)
    t = nn.Dense(self.width, dtype=self.dtype, name="proj")(
        z_prev.astype(self.dtype))
    t = nn.relu(layers.batch_norm(self.norm, train, self.dtype, "proj_bn")(t))
    return self.head(xs[-1], train=train, extra=t)


class MSDNet(base.MultiExitModel):
  """Multi-exit MSDNet (defaults: Phuong & Lampert's CIFAR-100 network).

  Attributes:
    num_classes: C.
    n_scales, n_exits, nlayers_to_exit, nlayers_between_exits, nplanes_mulv,
      nplanes_addh, nplanes_init, prune, plane_reduction, btneck_widths: the
      layout, see the module docstring.
    exit_width: width of the exit convs; D = exit_width for every head kind.
    imagenet: 7x7 s2 + maxpool first layer (224 inputs) instead of 3x3.
    head: "msdnet" (default), "sdn", "erde" or "erde_window", applied to the
      coarsest scale at every exit (the last exit included).
    isc: IMTA's inline subnetwork collaboration (`IscExit`; head "msdnet"
      only): exit k > 0 also reads the logits of exit k - 1, which the
      carried state then holds: (scales, z_{k-1}). "byot" and
      "byot_sep" are not offered: their conv path targets a final-stage map,
      which MSDNet lacks.
    dtype: compute dtype; parameters are float32.
    conv, norm: the layer classes of every layer and head
      (`mexd.models.layers`; `get_model` picks them for the backend).
  """

  num_classes: int = 100
  n_scales: int = 3
  n_exits: int = 11
  nlayers_to_exit: int = 4
  nlayers_between_exits: int = 2
  nplanes_mulv: Sequence[int] = (6, 12, 24)
  nplanes_addh: int = 1
  nplanes_init: int = 1
  prune: Optional[str] = "min"
  plane_reduction: float = 0.5
  exit_width: int = 128
  btneck_widths: Sequence[int] = (4, 4, 4)
  imagenet: bool = False
  head: str = "msdnet"
  isc: bool = False
  dtype: Any = jnp.float32
  conv: ModuleDef = layers.FLAX.conv
  norm: ModuleDef = layers.FLAX.norm

  @nn.nowrap
  def scale_exit_gradient(self, h, scale: float):
    """GE scales the coarsest scale only: the one the exit head reads."""
    xs, z_prev = h if self.isc else (h, None)
    xs = list(xs[:-1]) + [gradient.scale_gradient(xs[-1], scale)]
    return (xs, z_prev) if self.isc else xs

  @nn.nowrap
  def carry(self, h, logits):
    """With ISC the next stage carries this exit's logits along."""
    return (h[0], logits) if self.isc else h

  @nn.nowrap
  def layout(self) -> Tuple[list, list, tuple]:
    return msd_layout(self.n_scales, self.n_exits, self.nlayers_to_exit,
                      self.nlayers_between_exits, self.nplanes_mulv,
                      self.nplanes_addh, self.nplanes_init, self.prune,
                      self.plane_reduction)

  def setup(self):
    kinds_ok = ("msdnet",) + tuple(k for k in heads.HEAD_KINDS
                                   if not k.startswith("byot"))
    if self.head not in kinds_ok:
      raise errors.InputError(
          f"unknown head kind {self.head!r} for MSDNet; valid: "
          f"{', '.join(kinds_ok)}")
    if self.isc and self.head != "msdnet":
      raise errors.InputError(
          f"isc (IMTA's inline subnetwork collaboration) needs head "
          f"'msdnet', got {self.head!r}")
    planes, kinds, ends = self.layout()
    kw = dict(dtype=self.dtype, conv=self.conv, norm=self.norm)
    blocks, exit_heads, start = [], [], 0
    for e in ends:
      cols = []
      for c in range(start, e + 1):
        if kinds[c] == "first":
          cols.append(MsdFirstLayer(planes[c], self.imagenet, **kw,
                                    parent=None))
        elif kinds[c] == "layer":
          cols.append(MsdDenseLayer(planes[c - 1], planes[c],
                                    tuple(self.btneck_widths), **kw,
                                    parent=None))
        else:
          cols.append(MsdTransition(planes[c], **kw, parent=None))
      block = blocknet.Stage(tuple(cols), parent=None)
      start = e + 1
      if self.head == "msdnet":
        h = heads.MsdHead(self.num_classes, self.exit_width, **kw,
                          parent=None)
      else:
        h = heads.make_head(self.head, num_classes=self.num_classes,
                            features=self.exit_width, **kw)
      if self.isc:
        blocks.append(IscBlock(block, parent=None))
        exit_heads.append(IscExit(h, self.exit_width, self.dtype, self.norm,
                                  parent=None))
      else:
        blocks.append(block)
        exit_heads.append(CoarsestScale(h, parent=None))
    self.blocks = blocks
    self.heads = exit_heads
