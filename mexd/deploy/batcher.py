"""The server's request batcher: queue, batch, run stage by stage, answer.

Requests wait in an asyncio queue. When the worker is free the batcher
takes every request waiting (at most `max_batch`), and with `max_wait_ms` >
0 waits that long after the first for more, then runs the batch in a worker
thread. With the default 0 an idle server answers a lone request at once,
and under load the requests that arrive while a batch runs form the next
one. The batch runs stage by stage
(`Cascade.stages`), and as each stage finishes the requests that leave at
its exit are answered at once, from the event loop, while the worker runs
the next stage on the survivors. An easy image is answered after stage 0,
not when the batch's last stage ends. With mode="one_pass" the batch runs
the one-pass network instead and every request is answered at the final
exit (the baseline of the load test).

Requests of uint8 pixels and of normalised floats are run as separate
groups of one batch (the programs take one dtype per call).
"""

import asyncio
import collections
import concurrent.futures
import time
from typing import Any, Dict, List, NamedTuple

import numpy as np

MODES = ("early_exit", "one_pass")


class Pending(NamedTuple):
  """A queued request: its image [1, H, W, C], arrival time, future."""
  image: np.ndarray
  arrived: float
  future: asyncio.Future


class QueueFull(Exception):
  """More requests are waiting than the server queues (answered 503)."""


def _call(loop, fn, *args) -> None:
  """fn(*args) on the event loop, from the worker thread; nothing if the
  loop has closed meanwhile (the server stopped: nobody waits any more)."""
  try:
    loop.call_soon_threadsafe(fn, *args)
  except RuntimeError:
    if not loop.is_closed():
      raise


class Metrics:
  """Counters and recent latencies of the server (all on the event loop).

  Attributes:
    requests: requests received (including rejected ones).
    answered: requests answered with a prediction.
    rejected: {status: count} of the 4xx/5xx answers.
    exits: [E] answers per exit.
    batches, batched: batches run and the requests in them.
    latency_ms: the last `window` answer latencies (arrival to answer).
  """

  def __init__(self, num_exits: int, window: int = 10000):
    self.started = time.time()
    self.requests = 0
    self.answered = 0
    self.rejected: Dict[int, int] = collections.Counter()
    self.exits = np.zeros(num_exits, np.int64)
    self.macs = 0.0
    self.batches = 0
    self.batched = 0
    self.latency_ms = collections.deque(maxlen=window)

  def summary(self, queued: int) -> Dict[str, Any]:
    """The /metrics JSON."""
    lat = np.asarray(self.latency_ms, np.float64)
    pct = ({f"p{q}": float(np.percentile(lat, q)) for q in (50, 90, 99)}
           if lat.size else {})
    return {
        "uptime_s": time.time() - self.started, "requests": self.requests,
        "answered": self.answered,
        "rejected": {str(k): v for k, v in sorted(self.rejected.items())},
        "exits": self.exits.tolist(),
        "mean_macs": self.macs / max(1, self.answered),
        "batches": self.batches, "batched": self.batched,
        "mean_batch": self.batched / max(1, self.batches),
        "queued": queued, "latency_ms": {"window": int(lat.size), **pct}}


class Batcher:
  """Batches queued requests and runs them through a `Cascade`.

  Args:
    cascade: a `mexd.deploy.Cascade` (or anything with its `stages`,
      `logits`, `exit_macs`, `class_names` and `num_exits`).
    max_batch: the most requests per batch.
    max_wait_ms: how long a batch waits for more requests after its first
      (0: it takes the requests waiting and runs).
    max_queue: requests waiting beyond this are refused (`QueueFull`).
    mode: "early_exit" (stage by stage) or "one_pass".
  """

  def __init__(self, cascade, *, max_batch: int = 64,
               max_wait_ms: float = 0.0, max_queue: int = 4096,
               mode: str = "early_exit"):
    if mode not in MODES:
      raise ValueError(f"mode {mode!r}: expected one of {MODES}")
    if max_batch < 1 or max_wait_ms < 0 or max_queue < 1:
      raise ValueError("max_batch and max_queue must be >= 1, max_wait_ms "
                       ">= 0")
    self.cascade = cascade
    self.max_batch, self.max_wait = int(max_batch), max_wait_ms / 1000.0
    self.max_queue, self.mode = int(max_queue), mode
    self.metrics = Metrics(cascade.num_exits)
    self._queue: asyncio.Queue = None
    self._task = None
    self._pool = concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix="mexd-cascade")

  @property
  def running(self) -> bool:
    return self._task is not None and not self._task.done()

  def queued(self) -> int:
    return 0 if self._queue is None else self._queue.qsize()

  async def start(self) -> None:
    """Starts the batching loop on the running event loop."""
    self._queue = asyncio.Queue()
    self._task = asyncio.get_running_loop().create_task(self._loop())

  async def stop(self) -> None:
    """Stops the loop; waiting requests fail with CancelledError."""
    if self._task is not None:
      self._task.cancel()
      try:
        await self._task
      except asyncio.CancelledError:
        pass
    while self._queue is not None and not self._queue.empty():
      self._queue.get_nowait().future.cancel()
    self._pool.shutdown(wait=True)

  async def submit(self, image: np.ndarray) -> Dict[str, Any]:
    """Queues one checked image [1, H, W, C]; returns its answer.

    Raises:
      QueueFull: `max_queue` requests are waiting already.
    """
    if self._queue.qsize() >= self.max_queue:
      raise QueueFull(f"{self._queue.qsize()} requests are waiting; retry "
                      "later")
    loop = asyncio.get_running_loop()
    item = Pending(image, time.perf_counter(), loop.create_future())
    self._queue.put_nowait(item)
    return await item.future

  async def _collect(self) -> List[Pending]:
    batch = [await self._queue.get()]
    deadline = time.perf_counter() + self.max_wait
    while len(batch) < self.max_batch:
      if not self._queue.empty():
        batch.append(self._queue.get_nowait())
        continue
      left = deadline - time.perf_counter()
      if left <= 0:
        break
      try:
        batch.append(await asyncio.wait_for(self._queue.get(), left))
      except asyncio.TimeoutError:
        break
    return batch

  async def _loop(self) -> None:
    loop = asyncio.get_running_loop()
    while True:
      batch = await self._collect()
      self.metrics.batches += 1
      self.metrics.batched += len(batch)
      try:
        await loop.run_in_executor(self._pool, self._run, batch, loop)
      except Exception as e:  # pylint: disable=broad-except
        for item in batch:  # The server stays up; these requests fail.
          if not item.future.done():
            item.future.set_exception(e)

  def _run(self, batch: List[Pending], loop) -> None:
    """Worker thread: each dtype group of the batch through the cascade."""
    for dtype in (np.uint8, np.float32):
      group = [p for p in batch if p.image.dtype == dtype]
      if not group:
        continue
      x = np.concatenate([p.image for p in group])
      if self.mode == "one_pass":
        labels = np.argmax(self.cascade.logits(x)[-1], -1)
        _call(loop, self._answer, group, np.arange(len(group)), labels,
              self.cascade.num_exits - 1, len(batch))
        continue
      for out in self.cascade.stages(x):
        _call(loop, self._answer, group, out.rows, out.labels, out.exit,
              len(batch))
        # Hand the GIL to the event loop now, so that it answers these rows
        # while the next stage runs (else it may wait a switch interval).
        time.sleep(0)

  def _answer(self, group: List[Pending], rows, labels, k: int,
              batch_size: int) -> None:
    """Event loop: resolves the futures of the rows leaving at exit k."""
    now = time.perf_counter()
    macs = float(self.cascade.exit_macs[k])
    m = self.metrics
    for r, label in zip(np.asarray(rows).tolist(),
                        np.asarray(labels).tolist()):
      item = group[r]
      if item.future.done():  # The client went away.
        continue
      ms = 1000.0 * (now - item.arrived)
      item.future.set_result({
          "label": int(label), "class_name": self.cascade.class_names[label],
          "exit": int(k), "macs": macs, "latency_ms": ms,
          "batch_size": batch_size})
      m.answered += 1
      m.exits[k] += 1
      m.macs += macs
      m.latency_ms.append(ms)
