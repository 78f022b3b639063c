"""Evaluation-mode forward passes of a trained run: model, dtype, logits.

`mexd.train`, `mexd.evaluate` and the benchmarks build a run's model and
read its per-exit logits through this module (no entry point imports
another):

  model = predict.build_model(config, num_classes)
  pred = predict.Predictor(model, mean, std, mesh, batch_size,
                           predict.compute_dtype(config), image_shape)
  logits = pred.logits(variables, dataset)      # [E, N, C]
  predict.accuracy_table(logits, dataset.labels)
"""

from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from mexd import data as data_lib
from mexd import errors
from mexd import models
from mexd import sharding
from mexd import steps
from mexd.cpu import xla_options
from mexd.data import pipeline


def build_model(config, num_classes: int):
  """The model of `config.model` for `num_classes` classes."""
  return models.get_model(config.model.name, num_classes=num_classes,
                          dtype=config.model.dtype,
                          **dict(config.model.get("kwargs", {})))


def compute_dtype(config):
  """The compute dtype of `config.model.dtype` (parameters stay float32)."""
  return jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32


class Predictor:
  """Jitted, sharded eval-mode forward pass over a whole split."""

  def __init__(self, model, mean, std, mesh, batch_size: int, dtype,
               image_shape=None, stream_options=None):
    self.stream_options = dict(stream_options or {})
    self.image_shape = None if image_shape is None else tuple(image_shape)
    self.mesh = mesh
    self.batch_size = batch_size
    self._fn = xla_options.jit(
        steps.make_predict(model, mean=mean, std=std, dtype=dtype),
        out_shardings=sharding.replicated(mesh))
    self._bsh = sharding.batch_sharding(mesh)

  def logits(self, variables, ds) -> np.ndarray:
    """[E, N, C] float32 logits of every exit for every image of ds.

    Args:
      variables: the model's variables.
      ds: an in-memory `data.Dataset` or a streamed
        `data.stream.StreamSplit` (each process reads only its rows of
        every batch; the pass also fills the split's label memo).

    Raises:
      InputError: ds's images are not of the model's image shape.
    """
    if self.image_shape is not None and ds.image_shape != self.image_shape:
      raise errors.InputError(
          f"images of shape {ds.image_shape} given to a model "
          f"trained on {self.image_shape} images; resize them "
          "or use a model trained on this size")
    out, labels = [], []
    for batch, valid in pipeline.eval_host_batches(ds, self.batch_size,
                                                   **self.stream_options):
      images = pipeline.make_global({"image": batch["image"]},
                                    self._bsh)["image"]
      out.append(np.asarray(jax.device_get(self._fn(variables, images)))
                 [:, :valid])
      labels.append(_gather_rows(batch["label"])[:valid])
    if not isinstance(ds, data_lib.Dataset):
      ds.memo["labels"] = np.concatenate(labels).astype(np.int32)
    return np.concatenate(out, axis=1)


def _gather_rows(rows: np.ndarray) -> np.ndarray:
  """Every process's `rows` concatenated in process order (the layout of
  `pipeline.host_slice`)."""
  if jax.process_count() == 1:
    return rows
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(rows)).reshape(-1)


def accuracy_table(logits: np.ndarray, labels: np.ndarray) -> Dict[str, Any]:
  """Per-exit accuracy and the accuracy of the running exit ensemble.

  Args:
    logits: [E, N, C]; labels: [N].

  Returns:
    {"acc": [E] per-exit top-1, "ens_acc": [E] top-1 of the mean softmax of
    exits 0..k}.
  """
  acc = (logits.argmax(-1) == labels[None]).mean(-1)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  ens = np.cumsum(p, 0) / np.arange(1, p.shape[0] + 1)[:, None, None]
  ens_acc = (ens.argmax(-1) == labels[None]).mean(-1)
  return {"acc": acc.tolist(), "ens_acc": ens_acc.tolist()}


def format_table(results: Dict[str, Dict[str, Any]]) -> str:
  """A text table: one row per exit, one accuracy column per split."""
  names = list(results)
  num_exits = len(results[names[0]]["acc"])
  head = "exit  " + "  ".join(f"{n + ' acc':>10}" for n in names)
  lines = [head, "-" * len(head)]
  for k in range(num_exits):
    lines.append(f"{k:>4}  " + "  ".join(
        f"{100 * results[n]['acc'][k]:>9.2f}%" for n in names))
  return "\n".join(lines)
