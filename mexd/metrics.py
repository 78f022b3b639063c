"""Metric writers: JSON lines (always), TensorBoard (tensorboardX), logging.

Only process 0 writes; other processes get a writer that drops everything.
"""

import json
import math
import os
from typing import Mapping

from absl import logging
import jax
import numpy as np


class MetricWriter:
  """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard.

  One JSON object per `write_scalars` call: {"step": s, "split": ..., name:
  value, ...}.
  """

  def __init__(self, workdir: str, *, enabled: bool = True,
               tensorboard: bool = True):
    self.enabled = enabled and jax.process_index() == 0
    self._file = None
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._file = open(os.path.join(workdir, "metrics.jsonl"), "a")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, "tb"))
      except ImportError:
        logging.info("tensorboardX not installed; no TensorBoard events.")

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
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()

  def close(self):
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str):
  """All rows of a metrics.jsonl file as dicts."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
