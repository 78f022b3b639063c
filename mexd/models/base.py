"""The multi-exit model contract shared by every architecture.

A multi-exit network is a chain of E *stages*. Stage k maps the carried hidden
state `h_{k-1}` to `h_k` (stage 0 starts from the images) and has one exit head
that maps `h_k` to logits and a pooled feature vector:

    images -> [block 0] -> h_0 -> [block 1] -> h_1 -> ... -> h_{E-1}
                              |                  |                 |
                           head 0             head 1   ...     head E-1
                              v                  v                 v
                        (logits_0, f_0)   (logits_1, f_1)   (logits_{E-1}, f_{E-1})

`__call__` runs every stage and stacks the exits (deepest last); `stage(k, ...)`
runs one stage with the same parameters, so early-exit inference can stop after
any exit. Running all stages one by one equals the one-pass forward exactly,
because `__call__` *is* the loop over `stage`.

With `gradient_equilibrium=True` (IMTA, `mexd.models.gradient`) every stage
boundary rescales the backward pass; `scale_exit_gradient` says which part of
the state the head reads, `carry` what the next stage starts from (MSDNet
with ISC carries the exit's logits along).

Subclasses implement `setup()` to create two equally long sequences of
submodules, `self.blocks` and `self.heads`, where
  block(h, train=...) -> h'
  head(h, train=...)  -> (logits [B, C], features [B, D])
and every head returns the same feature width D.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mexd import errors
from mexd.models import gradient

Array = Any


class MultiExitModel(nn.Module):
  """Base class: one-pass and stage-by-stage execution of a multi-exit net.

  Subclasses define `blocks` and `heads` in `setup()` and the attributes
  `num_classes` and `dtype`.
  """

  @property
  def num_exits(self) -> int:
    return len(self.blocks)

  @nn.nowrap
  def scale_exit_gradient(self, h: Array, scale: float) -> Array:
    """Gradient equilibrium's backward scaling of the state head k reads.

    The default scales every leaf of `h`; a model whose heads read a part of
    the state only (MSDNet: the coarsest scale) overrides it.
    """
    return gradient.scale_gradient(h, scale)

  @nn.nowrap
  def carry(self, h: Array, logits: Array) -> Array:
    """The state stage k + 1 starts from, given stage k's state and logits.

    The default is `h`; a model whose exits read the previous exit's
    prediction (MSDNet with `isc`) carries the logits along.
    """
    del logits
    return h

  def stage(self, k: int, h: Array, *, train: bool = False,
            gradient_equilibrium: bool = False):
    """Runs stage `k` (a Python int): block k, then exit head k.

    Args:
      k: stage index in [0, E).
      h: the carried state: images [B, H, W, C_in] for k == 0, else the first
        output of `stage(k - 1, ...)` (any pytree of arrays).
      train: batch statistics and dropout in training mode.
      gradient_equilibrium: rescale the backward pass at the stage boundary
        (`mexd.models.gradient`); the forward values are unchanged.

    Returns:
      (h_k, logits [B, num_classes] float32, features [B, D] float32).
    """
    if k == 0:
      h = jnp.asarray(h, self.dtype)
    h = self.blocks[k](h, train=train)
    if gradient_equilibrium:
      to_head, to_next = gradient.equilibrium_scales(k, self.num_exits)
      h = self.scale_exit_gradient(h, to_head)
    logits, feats = self.heads[k](h, train=train)
    if gradient_equilibrium:
      h = self.scale_exit_gradient(h, to_next)
    h = self.carry(h, logits)
    return h, logits.astype(jnp.float32), feats.astype(jnp.float32)

  def __call__(self, images: Array, *, train: bool = False,
               gradient_equilibrium: bool = False):
    """Runs every stage once.

    Args:
      images: [B, H, W, C_in] images (any float dtype).
      train: training mode (batch statistics, dropout).
      gradient_equilibrium: GE's backward rescaling at every stage boundary
        (Li et al., ICCV 2019; `mexd.models.gradient`).

    Returns:
      (logits [E, B, num_classes] float32, {"features": [E, B, D] float32}).
    """
    if self.num_exits == 0:
      raise errors.InputError(
          f"{type(self).__name__} has zero exits; a multi-exit "
          "model needs at least one stage with an exit head")
    h = images
    logits, feats = [], []
    for k in range(self.num_exits):
      h, z, f = self.stage(k, h, train=train,
                           gradient_equilibrium=gradient_equilibrium)
      logits.append(z)
      feats.append(f)
    return jnp.stack(logits), {"features": jnp.stack(feats)}
