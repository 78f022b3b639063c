"""Metric writers: JSON lines (always), TensorBoard (tensorboardX), logging;
the training loop's step metrics (`TrainMetrics`) and progress bar.

Only process 0 writes; other processes get a writer that drops everything.
The work directory may be a local folder or a bucket (gs://BUCKET/PATH); see
`MetricWriter` for how each is written.
"""

import atexit
import json
import math
import os
import sys
import time
from typing import Dict, Mapping

from absl import logging
from etils import epath
import jax
import numpy as np

from mexd import paths

# tensorboardX picks an event-file writer by the text before the first ":"
# of its path; paths under this prefix are written through etils.epath.
_EPATH_PREFIX = "mexd-epath"


class _EpathEventFiles:
  """tensorboardX writer factory for "mexd-epath:<URI>" event files."""

  @staticmethod
  def _uri(path: str) -> str:
    return path[len(_EPATH_PREFIX) + 1:]

  def open(self, path: str) -> paths.RewrittenFile:
    return paths.RewrittenFile(self._uri(path))

  def directory_check(self, path: str) -> None:
    epath.Path(self._uri(path)).mkdir(parents=True, exist_ok=True)


def _summary_writer(tb_dir: epath.Path, local: bool, flush_secs: float):
  """A tensorboardX SummaryWriter on `tb_dir`, or None without tensorboardX."""
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.info("tensorboardX not installed; no TensorBoard events.")
    return None
  if local:
    return SummaryWriter(os.fspath(tb_dir))
  try:
    from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
    record_writer.register_writer_factory(_EPATH_PREFIX, _EpathEventFiles())
  except (ImportError, AttributeError) as e:  # A tensorboardX without it.
    logging.warning("No TensorBoard events in %s: this tensorboardX cannot "
                    "write through etils.epath (%s); metrics.jsonl has every "
                    "value.", tb_dir, e)
    return None
  return SummaryWriter(f"{_EPATH_PREFIX}:{tb_dir}", flush_secs=flush_secs)


class MetricWriter:
  """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard (`tb/`).

  One JSON object per `write_scalars` call: {"step": s, "split": ..., name:
  value, ...}.

  In a local folder, metrics.jsonl is appended to and flushed at every
  call, and tensorboardX writes tb/ itself. On a bucket (gs://...) both go
  through etils.epath; an object cannot be appended to, so each file is kept
  in memory and uploaded whole at most every `flush_secs` seconds, at
  `close()` and at exit (a resumed run starts from the metrics.jsonl it
  finds; TensorBoard gets a new event file, as in a local folder).
  """

  def __init__(self, workdir: str, *, enabled: bool = True,
               tensorboard: bool = True, flush_secs: float = 30.0):
    self.enabled = enabled and jax.process_index() == 0
    self._file = None
    self._tb = None
    if not self.enabled:
      return
    self._local = paths.is_local(workdir)
    self._flush_secs = flush_secs
    self._last_flush = time.monotonic()
    wd = paths.path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    if self._local:
      self._file = (wd / "metrics.jsonl").open("a")
    else:
      self._file = paths.RewrittenFile(wd / "metrics.jsonl",
                                       keep_existing=True)
      atexit.register(self.close)
    if tensorboard:
      self._tb = _summary_writer(wd / "tb", self._local, flush_secs)

  def write_scalars(self, step: int, scalars: Mapping[str, float],
                    split: str = "train"):
    if not self.enabled:
      return
    row = {"step": int(step), "split": split}
    for k, v in scalars.items():
      v = float(np.asarray(v))
      row[k] = v if math.isfinite(v) else str(v)
      if self._tb is not None:
        self._tb.add_scalar(f"{split}/{k}", v, int(step))
    line = json.dumps(row) + "\n"
    if self._local:
      self._file.write(line)
      self._file.flush()
    else:
      self._file.write(line.encode())
      if time.monotonic() - self._last_flush >= self._flush_secs:
        self._file.flush()
        self._last_flush = time.monotonic()

  def close(self):
    if self._file is not None:
      self._file.close()
      if not self._local:
        atexit.unregister(self.close)
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str):
  """All rows of a metrics.jsonl file (a local path or a URI) as dicts."""
  text = epath.Path(path).read_text()
  return [json.loads(line) for line in text.splitlines() if line.strip()]


class TrainMetrics:
  """The step metrics between two log steps: kept on device (at most two
  steps in flight, so the ETA is honest), then averaged, checked for
  non-finite values and written with the learning rate and images/s."""

  def __init__(self, config, lr_fn, writer, lock, bar):
    self.config, self.lr_fn, self.writer = config, lr_fn, writer
    self.lock, self.bar = lock, bar
    self.pending = []
    self.t0 = self.t_log = time.time()

  def add(self, metrics: Dict[str, jax.Array]):
    self.pending.append(metrics)
    if len(self.pending) > 2:
      jax.block_until_ready(self.pending[-3]["loss"])

  def write(self, step: int):
    rows = jax.device_get(self.pending)
    avg = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    check_finite(rows, step - len(rows), self.config)
    avg["lr"] = float(self.lr_fn(step - 1))
    now = time.time()
    avg["images_per_sec"] = (len(rows) * self.config.batch_size
                             / max(now - self.t_log, 1e-9))
    self.t_log = now
    self.writer.write_scalars(step, avg)
    self.lock.refresh()
    if self.bar is not None:
      self.bar.set_postfix(loss=f"{avg['loss']:.3f}", refresh=False)
    self.pending = []

  def advance(self):
    """One step done (the progress bar)."""
    if self.bar is not None:
      self.bar.update(1)


def progress_bar(config, start: int, total: int):
  """A tqdm bar on process 0 (None elsewhere, when finished or disabled)."""
  if (jax.process_index() or not config.get("progress_bar", True)
      or start >= total):
    return None
  from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, initial=start, unit="step",
                   dynamic_ncols=True, file=sys.stdout,
                   desc=f"{config.data.name}/{config.method}")


def check_finite(rows, first_step: int, config):
  """Stops the run at the first non-finite step (config.nonfinite="stop")."""
  for i, r in enumerate(rows):
    if r["nonfinite"] > 0 and config.get("nonfinite", "stop") == "stop":
      bad = sorted(k for k, v in r.items()
                   if k.startswith("loss") and not np.isfinite(v))
      what = (f"non-finite loss term(s) {', '.join(bad)}" if bad
              else "non-finite gradients")
      raise FloatingPointError(
          f"step {first_step + i + 1}: {what}; the update was not applied. "
          "Lower the learning rate, or set --config.nonfinite=skip to skip "
          "such steps.")
