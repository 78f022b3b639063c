"""The pooled (throughput) schedule of `StagedPredictor.run_pooled`.

Stage 0 runs on batches of B images; the survivors of stage k from
successive batches wait in a device pool (2B rows) until B of them are
there, then stage k + 1 runs on exactly B rows. At the end the partial pools
are flushed in stage order, padded to `min(bucket, B)`. Up to `depth` stage
calls are in flight before the host waits for the oldest one's exit
decisions (software pipelining: the device computes the next batch while
the host syncs).
"""

import collections
from typing import Any, List

import jax
import jax.numpy as jnp
import numpy as np

from mexd.early_exit import batching
from mexd.early_exit import policies


class PooledRun:
  """One pooled run of a predictor over a set of images.

  Attributes:
    pred: the `StagedPredictor` (its `num_exits`, `bucket`, `launch_stage`
      and `finish_stage`).
    res: the `StagedResult` being filled.
    bsz: B, rows per stage call; depth: stage calls in flight.
    pools: per stage k >= 1, the device tree (h, state) of 2B rows whose
      first count[k] are live; pos[k] their original rows.
    in_flight: dispatched stage calls (k, rows, h, state, code), oldest
      first.
  """

  def __init__(self, pred, res, bsz: int, depth: int):
    self.pred, self.res, self.bsz, self.depth = pred, res, bsz, depth
    e = pred.num_exits
    self.pools: List[Any] = [None] * e
    self.count = [0] * e
    self.pos: List[np.ndarray] = [np.zeros(0, np.int64)] * e
    self.in_flight = collections.deque()

  def run(self, images):
    """Runs every image [N, H, W, C] to its exit; fills `res`."""
    bsz, n = self.bsz, images.shape[0]
    for i in range(0, n, bsz):
      x = images[i:i + bsz]
      rows = np.arange(i, i + x.shape[0])
      if x.shape[0] == bsz:
        self.launch(0, x, policies.init_state(bsz), rows)
      else:
        self.launch_partial(0, (x, policies.init_state(x.shape[0])), rows)
      while len(self.in_flight) >= self.depth:
        self.finish()
    for k in range(1, self.pred.num_exits):  # Flush, in stage order: pool
      while self.in_flight:  # k is final once every earlier call finished.
        self.finish()
      if self.count[k]:
        rows = self.pos[k]
        self.pos[k], self.count[k] = np.zeros(0, np.int64), 0
        self.launch_partial(k, self.pools[k], rows)
    while self.in_flight:
      self.finish()

  def launch(self, k: int, h, state, rows: np.ndarray):
    """Dispatches stage k on the batch (h, state) of original rows `rows`."""
    b = jax.tree.leaves(h)[0].shape[0]
    self.res.reached[k] += rows.size
    self.res.padded[k] = max(self.res.padded[k], b)
    self.in_flight.append((k, rows) + self.pred.launch_stage(k, h, state))

  def launch_partial(self, k: int, tree, rows: np.ndarray):
    """Stage k on the first rows.size < B rows of tree, padded to a bucket."""
    b = min(self.pred.bucket(rows.size), self.bsz)
    h, state = batching.gather(
        tree, jnp.asarray(batching.pad_index(np.arange(rows.size), b)))
    self.launch(k, h, state, rows)

  def finish(self):
    """Waits for the oldest call, pools its survivors, launches full pools."""
    k, rows, h, state, code = self.in_flight.popleft()
    keep = self.pred.finish_stage(k, code, rows, self.res)
    if keep.size == 0:
      return
    nxt, bsz = k + 1, self.bsz
    b = jax.tree.leaves(h)[0].shape[0]
    if self.pools[nxt] is None:  # 2B rows shaped like this stage's output.
      self.pools[nxt] = jax.tree.map(
          lambda a: jnp.zeros((2 * bsz,) + a.shape[1:], a.dtype), (h, state))
    self.pools[nxt] = batching.append(
        self.pools[nxt], (h, state),
        jnp.asarray(batching.pad_index(keep, b)), self.count[nxt])
    self.count[nxt] += keep.size
    self.pos[nxt] = np.concatenate([self.pos[nxt], rows[keep]])
    while self.count[nxt] >= bsz:  # A full batch is waiting: launch it.
      (h_b, s_b), self.pools[nxt] = batching.take(self.pools[nxt], bsz)
      taken, self.pos[nxt] = self.pos[nxt][:bsz], self.pos[nxt][bsz:]
      self.count[nxt] -= bsz
      self.launch(nxt, h_b, s_b, taken)
