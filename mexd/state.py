"""The explicit train state: everything a step reads and writes.

All of it is checkpointed, so a resumed run continues bit for bit: the step
(which also fixes the data position and the per-step rng), parameters of the
model and of the method (MATE's teacher weights), batch statistics, optimizer
state, the method's state (P&L's temperature) and the non-finite-step
bookkeeping. The frozen teacher of teacher-student methods (ERDE, KD) is not
state: it is read from its own run's work directory at start and passed to
the step as a separate argument (`mexd.steps.make_train_step`).
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

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
