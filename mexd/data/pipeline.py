"""Deterministic batching: the data position is a pure function of the step.

`EpochSampler.indices(step)` gives the global batch of a step from a
permutation seeded by (seed, epoch), so a run resumed at step k sees exactly
the batches an uninterrupted run sees. Each process gathers only its own
slice of the global batch; `make_global` assembles the sharded global array.
"""

import queue
import threading
from typing import Dict, Iterator, Optional, Tuple

import jax
import numpy as np

from mexd import errors
from mexd.data import base
from mexd.data import sampler


EpochSampler = sampler.EpochSampler


def host_slice(global_batch: int) -> slice:
  """This process's rows of a global batch (processes split it evenly)."""
  n = jax.process_count()
  if global_batch % n:
    raise errors.InputError(
        f"global batch {global_batch} is not divisible by the "
        f"{n} processes")
  per = global_batch // n
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


class TrainBatches:
  """Global train batches (labeled, plus unlabeled rows for semi-supervision).

  Each batch is {"image": uint8 [B, H, W, C], "label": int32 [B]} where the
  last `unlabeled_batch` rows come from the unlabeled pool (label -1).
  """

  def __init__(self, labeled: base.Dataset, batch_size: int, seed: int,
               unlabeled: Optional[base.Dataset] = None,
               unlabeled_batch: int = 0):
    self.labeled = labeled
    self.unlabeled = unlabeled if unlabeled_batch else None
    self.lab_batch = batch_size - unlabeled_batch
    self.unl_batch = unlabeled_batch
    if unlabeled_batch and (unlabeled is None or len(unlabeled) == 0):
      raise errors.InputError(
          "unlabeled_batch > 0 needs a non-empty unlabeled pool "
          "(set data.labeled_per_class and data.unlabeled_pool)")
    if not 0 < self.lab_batch:
      raise errors.InputError(
          f"unlabeled_batch {unlabeled_batch} leaves no labeled "
          f"rows in a batch of {batch_size}")
    self.lab_sampler = EpochSampler(len(labeled), self.lab_batch, seed)
    self.unl_sampler = (EpochSampler(len(unlabeled), self.unl_batch, seed + 1)
                        if self.unlabeled is not None else None)
    self.batch_size = batch_size
    self.steps_per_epoch = self.lab_sampler.steps_per_epoch

  def host_batches(self, start: int, stop: int) -> Iterator[Dict]:
    """This process's rows of the global batches of steps [start, stop)."""
    return (self.host_batch(step) for step in range(start, stop))

  def host_batch(self, step: int) -> Dict[str, np.ndarray]:
    """This process's rows of the global batch of `step`."""
    idx = self.lab_sampler.indices(step)
    images, labels = [self.labeled.images[idx]], [self.labeled.labels[idx]]
    if self.unl_sampler is not None:
      uidx = self.unl_sampler.indices(step)
      images.append(self.unlabeled.images[uidx])
      labels.append(self.unlabeled.labels[uidx])
    rows = host_slice(self.batch_size)
    return {"image": np.concatenate(images)[rows],
            "label": np.concatenate(labels).astype(np.int32)[rows]}


def make_global(host_batch: Dict[str, np.ndarray], sharding) -> Dict:
  """Assembles per-process rows into global arrays sharded by `sharding`."""
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in host_batch.items()}


def prefetch(batches, start: int, stop: int, sharding,
             size: int = 2) -> Iterator:
  """Yields (step, global batch) for steps [start, stop), `size` ahead.

  A background thread gathers host batches (`batches.host_batches(start,
  stop)`: a `TrainBatches`, or a `mexd.data.stream.TrainStream`) and
  transfers them to the devices while the current step runs.
  """
  q: "queue.Queue" = queue.Queue(maxsize=size)
  sentinel = object()

  def producer():
    try:
      for step, host in zip(range(start, stop),
                            batches.host_batches(start, stop)):
        q.put((step, make_global(host, sharding)))
    except BaseException as e:  # pylint: disable=broad-except
      q.put(e)
    q.put(sentinel)

  thread = threading.Thread(target=producer, daemon=True)
  thread.start()
  while True:
    item = q.get()
    if item is sentinel:
      return
    if isinstance(item, BaseException):
      raise item
    yield item


def eval_batches(ds: base.Dataset, batch_size: int):
  """Yields ({"image", "label"}, n_valid) padding the last batch to size.

  Padded rows repeat row 0 and have label -1 so metrics can mask them.
  """
  n = len(ds)
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    valid = len(idx)
    pad = batch_size - valid
    labels = ds.labels[idx].astype(np.int32)
    if pad:
      idx = np.concatenate([idx, np.zeros(pad, idx.dtype)])
      labels = np.concatenate([labels, np.full(pad, -1, np.int32)])
    yield {"image": ds.images[idx], "label": labels}, valid


def eval_host_batches(ds, batch_size: int, **stream_options
                      ) -> Iterator[Tuple[Dict[str, np.ndarray], int]]:
  """Yields (this process's rows of each padded global batch of `ds`, the
  valid rows of that global batch), for an in-memory `base.Dataset` or a
  streamed `mexd.data.stream.StreamSplit` (which reads only these rows;
  `stream_options`: its workers / read_threads). Padded rows: label -1."""
  if not isinstance(ds, base.Dataset):
    from mexd.data import stream  # pylint: disable=g-import-not-at-top
    yield from stream.eval_host_batches(ds, batch_size, **stream_options)
    return
  rows = host_slice(batch_size)
  for batch, valid in eval_batches(ds, batch_size):
    yield {k: v[rows] for k, v in batch.items()}, valid
