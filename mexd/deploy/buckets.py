"""Padded batch sizes: the buckets a batch of live rows is padded to.

A batch whose size changes from call to call would compile a program per
size. Padding it to a size from a fixed set, 2^k and 1.5 * 2^k (1, 2, 3, 4,
6, 8, 12, 16, 24, ...), compiles each program once per bucket; padding
wastes at most a third of a batch and about 1/6 on average (powers of two
alone waste up to half). Padding rows repeat the last real row and are
dropped on the host. Both `mexd.early_exit` (in-process) and the exported
runtime (`mexd.deploy.runtime`) use these, and `gather` (the padded rows'
gather on the device).
"""

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def default_bucket(n: int) -> int:
  """Smallest 2^k or 3 * 2^(k-1) >= n (1, 2, 3, 4, 6, 8, 12, 16, ...)."""
  n = max(1, int(n))
  p = 1 << (n - 1).bit_length()  # Power of two >= n.
  three_quarters = 3 * p // 4
  return three_quarters if p >= 4 and three_quarters >= n else p


def bucket(n: int, buckets: Optional[Sequence[int]] = None) -> int:
  """The padded size of n rows: `default_bucket(n)`, or the smallest of
  `buckets` (sorted) that holds n.

  Raises:
    ValueError: n exceeds the largest of `buckets`.
  """
  if buckets is None:
    return default_bucket(n)
  for b in buckets:
    if b >= n:
      return b
  raise ValueError(f"{n} rows exceed the largest bucket {buckets[-1]}")


def pad_index(idx: np.ndarray, size: int) -> np.ndarray:
  """Pads row indices [n] (n >= 1) to int32 [size] by repeating the last."""
  return np.concatenate([idx, np.full(size - idx.size, idx[-1])]).astype(
      np.int32)


@jax.jit
def gather(tree, idx):
  """Rows `idx` [b] of every leaf of `tree` (leading batch dim)."""
  return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), tree)
