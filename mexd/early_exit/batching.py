"""Padded batches of the staged predictors: row indices, gathers, pools.

The survivors of a stage are gathered into a batch padded to a bucket size
(the padding rows repeat the last real row); the pooled path collects them
in a device buffer of 2B rows until B are waiting. Every function is jitted
once per shape, and the pools are donated.
"""

import functools

import jax
import jax.numpy as jnp

from mexd.deploy import buckets


pad_index = buckets.pad_index  # Row indices [n] -> int32 [size].


gather = buckets.gather  # Rows idx [b] of every leaf of a tree, jitted.


@functools.partial(jax.jit, donate_argnums=0)
def append(pool, tree, idx, offset):
  """Writes rows `idx` [b] of `tree` into `pool` [2B, ...] at row `offset`.

  offset + b <= 2B always holds (pools hold < B rows before an append and
  b <= B), so `dynamic_update_slice` never clamps.
  """
  rows = gather(tree, idx)
  return jax.tree.map(
      lambda p, r: jax.lax.dynamic_update_slice_in_dim(p, r, offset, axis=0),
      pool, rows)


@functools.partial(jax.jit, static_argnums=1, donate_argnums=0)
def take(pool, b: int):
  """(first b rows of pool, pool with them moved to the back)."""
  head = jax.tree.map(lambda a: a[:b], pool)
  return head, jax.tree.map(lambda a: jnp.roll(a, -b, axis=0), pool)
