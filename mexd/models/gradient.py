"""Gradient equilibrium (GE, Li et al., ICCV 2019): backward-only rescaling.

With E exits, the backbone state h_k after stage k feeds exit head k and
every later stage. Plain autodiff gives h_k the sum of the gradient of head
k's loss and the gradients of all later exits. GE rescales, in the backward
pass only, at every stage boundary k (0-based):

    h'_k = scale(h_k, 1 / (E - k))      # what head k reads
    h''_k = scale(h'_k, E - k - 1)      # what stage k + 1 reads

so that  dL/dh_k = [dL_k/dh'_k + (E - k - 1) dL_{>k}/dh''_k] / (E - k):
head k's gradient gets weight 1 / (E - k), the later exits' gradient
(E - k - 1) / (E - k); the final exit's head gets weight 1. The forward
values are unchanged. Formula and source: docs/methods.md §9.
"""

import functools
from typing import Any, Tuple

import jax

PyTree = Any


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def scale_gradient(tree: PyTree, scale: float) -> PyTree:
  """Identity forward; multiplies every leaf's cotangent by `scale`.

  Args:
    tree: any pytree of arrays (None leaves allowed).
    scale: a Python float (static).

  Returns:
    `tree` itself.
  """
  del scale
  return tree


def _fwd(tree, scale):
  del scale
  return tree, None


def _bwd(scale, residual, cotangent):
  del residual
  return (jax.tree.map(lambda g: g * scale, cotangent),)


scale_gradient.defvjp(_fwd, _bwd)


def equilibrium_scales(k: int, num_exits: int) -> Tuple[float, float]:
  """(scale before head k, scale towards stage k + 1) of GE, k 0-based."""
  if not 0 <= k < num_exits:
    raise ValueError(f"stage {k} outside [0, {num_exits})")
  return 1.0 / (num_exits - k), float(num_exits - k - 1)
