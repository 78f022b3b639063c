"""Baselines: cross-entropy on every exit (uniform and SDN weights), BYOT.

METHODS.md §5.
"""

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from mexd.losses import common

Array = jax.Array


def weighted_ce(logits: Array, labels: Array, weights: Array):
  """`sum_i w_i CE(z_i, y)`.

  Args:
    logits: [E, B, C].
    labels: [B] int (-1 = unlabeled, ignored).
    weights: [E] per-exit weights.

  Returns:
    (loss, metrics) with "loss/ce" and per-exit "ce/exit{i}".

  Examples:
    >>> z = jnp.zeros((2, 3, 5)); y = jnp.array([0, 1, 2])
    >>> round(float(weighted_ce(z, y, jnp.ones(2))[0]), 4)  # 2 * log(5)
    3.2189
  """
  ce = common.ce_per_exit(logits, labels)
  loss, metrics = common.combine({"ce": jnp.sum(weights * ce)})
  metrics.update(common.per_exit_metrics("ce", ce))
  return loss, metrics


def make_ce(*, exit_weights: Optional[Sequence[float]] = None
            ) -> common.Method:
  """Plain multi-exit baseline `sum_i w_i CE(z_i, y)` (w = 1 by default)."""

  def loss_fn(outputs, labels, *, params, state, progress):
    del params, state, progress
    z = outputs["logits"]
    w = (jnp.ones(z.shape[0]) if exit_weights is None
         else jnp.asarray(exit_weights, jnp.float32))
    if w.shape != (z.shape[0],):
      raise ValueError(f"exit_weights has {w.shape[0]} entries but the model "
                       f"has {z.shape[0]} exits")
    return weighted_ce(z, labels, w)

  return common.Method(name="ce", loss_fn=loss_fn)
