"""The explicit train state: everything a step reads and writes.

All of it is checkpointed, so a resumed run continues bit for bit: the step
(which also fixes the data position and the per-step rng), parameters of the
model and of the method (MATE's teacher weights), batch statistics, optimizer
state, the method's state (P&L's temperature) and the non-finite-step
bookkeeping. The frozen teacher of teacher-student methods (ERDE, KD) is not
state: it is read from its own run's work directory at start and passed to
the step as a separate argument (`mexd.steps.make_train_step`).
"""

from typing import Any, Dict, List, Tuple

import flax.struct
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Attributes:
    step: int32 scalar, number of steps taken.
    params: {"model": model params, "method": method params}.
    batch_stats: the model's batch-norm statistics.
    opt_state: optax state of `params`.
    method_state: e.g. {"temperature": T}.
    rng: uint32 [2] root key of the training loop (folded with the step).
    skipped: int32 count of steps skipped because of non-finite values.
  """

  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  method_state: PyTree
  rng: jax.Array
  skipped: jax.Array


def create(rng, *, model, method, tx, image_shape):
  """Initialises a TrainState (call under jit with out_shardings).

  Args:
    rng: uint32 [2] key; split into init and loop keys.
    model: the multi-exit Flax model.
    method: a `mexd.losses.Method`.
    tx: the optax optimizer.
    image_shape: (H, W, C) of one image.
  """
  rng_init, rng_loop = jax.random.split(rng)
  (logits, _), variables = model.init_with_output(
      {"params": rng_init, "dropout": rng_init},
      jnp.zeros((1,) + tuple(image_shape), jnp.float32))
  params = {"model": variables["params"],
            "method": method.init_params(logits.shape[0])}
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(params), method_state=method.init_state(),
      rng=rng_loop,
      skipped=jnp.zeros((), jnp.int32))


def warm_start(state: TrainState, variables: Dict[str, Any]
               ) -> Tuple[TrainState, List[str], List[str]]:
  """Copies a finished run's weights into a fresh state (`config.init_workdir`).

  Every model parameter and batch statistic whose path and shape match a
  leaf of `variables` ({"params", "batch_stats"}, host arrays) is replaced,
  on the state leaf's sharding; the others (e.g. layers the new model adds)
  keep their initialisation. Optimizer and method state are untouched.

  Returns:
    (state, copied paths, kept paths), paths like "params/heads_0/out/kernel".
  """
  copied, kept = [], []

  def merge(kind, dst):
    src = traverse_util.flatten_dict(variables.get(kind, {}), sep="/")
    out = {}
    for k, v in traverse_util.flatten_dict(dst, sep="/").items():
      s = src.get(k)
      if s is not None and tuple(np.shape(s)) == tuple(v.shape):
        out[k] = jax.device_put(np.asarray(s, v.dtype), v.sharding)
        copied.append(f"{kind}/{k}")
      else:
        out[k] = v
        kept.append(f"{kind}/{k}")
    return traverse_util.unflatten_dict(out, sep="/") if out else dst

  params = dict(state.params, model=merge("params", state.params["model"]))
  batch_stats = merge("batch_stats", state.batch_stats)
  return state.replace(params=params, batch_stats=batch_stats), copied, kept
