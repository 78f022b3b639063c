"""The jitted train and predict steps (pure functions of state and batch).

`make_train_step(...)` closes over the static pieces (model, method,
optimizer, preprocessing) and returns `train_step(state, batch, teacher) ->
(state, metrics)`; the caller jits it with shardings and donates the state
(never the frozen teacher's variables, which every step reads again).
"""

from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from mexd.data import augment
from mexd.state import TrainState

Array = jax.Array


def preprocess(rng, images, *, mean, std, crop_pad=0, flip=False,
               dtype=jnp.float32, train=True):
  """uint8 [B, H, W, C] -> normalised (and, in training, augmented) floats."""
  x = augment.normalize(images, mean, std, jnp.float32)
  if train and (crop_pad or flip):
    x = augment.random_crop_flip(rng, x, pad=crop_pad, flip=flip)
  return x.astype(dtype)


def exit_accuracy(logits: Array, labels: Array) -> Array:
  """[E] accuracy of each exit over the labeled (label >= 0) examples."""
  mask = (labels >= 0).astype(jnp.float32)
  correct = (jnp.argmax(logits, -1) == labels[None]).astype(jnp.float32)
  return jnp.sum(correct * mask, -1) / jnp.maximum(jnp.sum(mask), 1.0)


def _all_finite(tree) -> Array:
  """Whether every element of every leaf of `tree` is finite (a bool [])."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  if not leaves:
    return jnp.bool_(True)
  # The barrier keeps the [N] flags a real reduction. Without it XLA rewrites
  # all(stack(flags)) into a chain of N scalar ANDs, cheap enough to be fused
  # into (copied into) every consumer: the train step's N per-leaf selects,
  # O(N^2) instructions; MSDNet (~2100 selected leaves) did not compile.
  return jnp.all(jax.lax.optimization_barrier(jnp.stack(leaves)))


def make_train_step(*, model, method, tx, mean, std, crop_pad: int,
                    flip: bool, steps_per_epoch: int, num_epochs: int,
                    teacher_model=None, dtype=jnp.float32
                    ) -> Callable[..., Tuple[TrainState, Dict[str, Array]]]:
  """Builds the train step.

  The step: augments the batch on device with `fold_in(state.rng, step)`,
  runs the teacher (if any, frozen), the model in train mode (with gradient
  equilibrium if `method.gradient_equilibrium`), the method's loss, the
  optimizer, and the method's state update. A step whose loss or gradients
  are not finite leaves parameters and state unchanged (except
  `step` and `skipped`), and its metrics say so ("nonfinite" = 1).

  Args (besides the preprocessing ones):
    teacher_model: the frozen teacher's Flax model, for methods with
      `needs_teacher` (ERDE, KD); its variables come with every call.

  Returns:
    train_step(state, batch, teacher=None) -> (state, metrics of scalars)
    where batch is {"image": uint8 [B, H, W, C], "label": int32 [B]} and
    teacher the teacher's {"params", "batch_stats"} (replicated, not donated;
    required exactly when the method needs a teacher).
  """
  if method.needs_teacher and teacher_model is None:
    raise ValueError(f"method {method.name!r} learns from a teacher: pass "
                     "teacher_model")

  # Only multi-exit models (mexd.models.base) take the GE switch.
  ge_kwargs = ({"gradient_equilibrium": True} if method.gradient_equilibrium
               else {})

  def train_step(state: TrainState, batch,
                 teacher: Optional[Dict[str, Any]] = None):
    rng = jax.random.fold_in(state.rng, state.step)
    k_aug, k_drop = jax.random.split(rng)
    images = preprocess(k_aug, batch["image"], mean=mean, std=std,
                        crop_pad=crop_pad, flip=flip, dtype=dtype)
    labels = batch["label"]
    progress = ((state.step // steps_per_epoch + 1).astype(jnp.float32)
                / num_epochs)
    outputs_extra = {}
    if method.needs_teacher:
      if not teacher:
        raise ValueError(f"method {method.name!r} learns from a teacher: "
                         "call train_step(state, batch, teacher_variables)")
      t_logits, _ = teacher_model.apply(teacher, images, train=False)
      outputs_extra["teacher_logits"] = jax.lax.stop_gradient(t_logits)

    def loss_fn(params):
      (logits, aux), new_vars = model.apply(
          {"params": params["model"], "batch_stats": state.batch_stats},
          images, train=True, mutable=["batch_stats"],
          rngs={"dropout": k_drop}, **ge_kwargs)
      outputs = {"logits": logits, "features": aux["features"],
                 **outputs_extra}
      loss, metrics = method.loss_fn(
          outputs, labels, params=params["method"],
          state=state.method_state, progress=progress)
      return loss, (metrics, new_vars.get("batch_stats", {}), logits)

    (loss, (metrics, batch_stats, logits)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    method_state = method.update_state(state.method_state, metrics)
    ok = jnp.logical_and(_all_finite(loss), _all_finite(grads))
    keep = lambda new, old: jax.tree.map(
        lambda a, b: jnp.where(ok, a, b), new, old)
    new_state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        batch_stats=keep(batch_stats, state.batch_stats),
        opt_state=keep(opt_state, state.opt_state),
        method_state=keep(method_state, state.method_state),
        skipped=state.skipped + (1 - ok.astype(jnp.int32)))
    acc = exit_accuracy(logits, labels)
    metrics = dict(metrics)
    metrics.update({f"acc/exit{i}": acc[i] for i in range(acc.shape[0])})
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["nonfinite"] = 1.0 - ok.astype(jnp.float32)
    return new_state, metrics

  return train_step


def make_predict(model, *, mean, std, dtype=jnp.float32):
  """predict(variables, images uint8 [B, H, W, C]) -> logits [E, B, C]."""

  def predict(variables, images):
    x = preprocess(None, images, mean=mean, std=std, dtype=dtype, train=False)
    logits, _ = model.apply(variables, x, train=False)
    return logits

  return predict
