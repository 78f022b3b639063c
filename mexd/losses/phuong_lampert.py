"""Distillation-based training (Phuong & Lampert, ICCV 2019).

Formula, defaults and sources: docs/methods.md §1.

Every early exit mixes cross-entropy with a distillation term towards the
final exit's softened, stop-gradient prediction; the final exit gets only the
cross-entropy. The temperature T is explicit state: it starts at `t0` and is
multiplied by `t_mult` after every step whose teacher mean max-probability
(at the current T) exceeds `max_prob`; it never decreases.

Semi-supervised variant: examples with label -1 contribute no cross-entropy
(CE is averaged over the labeled examples only) but do contribute the
distillation term, which is averaged over the whole batch.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from mexd.losses import common

Array = jax.Array


def distillation_loss(logits: Array, labels: Array, *, temperature: Array,
                      c: float = 0.5, global_scale: float = 1.0,
                      label_smoothing: float = 0.0):
  """The DBT loss for one batch.

  `L = s * [ (1-C) sum_i CE(z_i, y) + C T^2 sum_{i<E-1} KL(t || p_i^T) ]` with
  `t = sg(softmax(z_{E-1} / T))`. KL differs from the authors' soft
  cross-entropy by the teacher entropy only, so gradients are identical.

  Args:
    logits: [E, B, C] exit logits, deepest last.
    labels: [B] int labels, -1 = unlabeled.
    temperature: scalar T > 0 (traced; growing T does not recompile).
    c: the distillation weight C in [0, 1].
    global_scale: s, a pure loss rescaling (authors: 2 * 5 / E).
    label_smoothing: eps of the CE terms (the teacher term is unchanged).

  Returns:
    (loss, metrics) with "loss/ce", "loss/kd", per-exit "ce/exit{i}",
    "kd/exit{i}" and "mean_max_prob" (teacher, at the current T, detached).

  Examples:
    >>> z = jnp.zeros((3, 2, 4)); y = jnp.array([0, 1])
    >>> loss, m = distillation_loss(z, y, temperature=1.0, c=0.5)
    >>> round(float(loss), 4)  # (1 - 0.5) * 3 * log(4)
    2.0794
  """
  teacher = jax.lax.stop_gradient(logits[-1])                    # [B, C]
  ce = common.ce_per_exit(logits, labels, label_smoothing)        # [E]
  kd = jnp.mean(common.kl_per_example(teacher[None], logits[:-1],
                                      temperature), axis=-1)      # [E-1]
  ce_term = global_scale * (1.0 - c) * jnp.sum(ce)
  kd_term = global_scale * c * temperature**2 * jnp.sum(kd)
  max_prob = jnp.mean(jnp.max(jax.nn.softmax(teacher / temperature), -1))
  loss, metrics = common.combine({"ce": ce_term, "kd": kd_term})
  metrics.update(common.per_exit_metrics("ce", ce))
  metrics.update(common.per_exit_metrics("kd", kd))
  metrics["mean_max_prob"] = max_prob
  metrics["temperature"] = jnp.asarray(temperature, jnp.float32)
  return loss, metrics


def update_temperature(temperature: Array, mean_max_prob: Array, *,
                       max_prob: float = 0.5, t_mult: float = 1.05) -> Array:
  """T <- T * t_mult if the teacher's mean max-probability > max_prob."""
  return jnp.where(mean_max_prob > max_prob, temperature * t_mult, temperature)


def _check(c, temperature):
  common.check_unit("c (the distillation weight C)", c)
  common.check_positive("temperature", temperature)


def make_pl(*, c: float = 0.5, t0: float = 1.0, t_mult: float = 1.05,
            max_prob: float = 0.5, global_scale: float = 1.0,
            label_smoothing: Optional[float] = None) -> common.Method:
  """Phuong & Lampert with the adaptive temperature (authors' defaults)."""
  _check(c, t0)
  common.check_at_least("t_mult", t_mult, 1, "T never decreases")
  common.check_unit("max_prob", max_prob, open_low=True)
  ls = common.check_smoothing(label_smoothing)

  def loss_fn(outputs, labels, *, params, state, progress):
    del params, progress
    return distillation_loss(outputs["logits"], labels,
                             temperature=state["temperature"], c=c,
                             global_scale=global_scale, label_smoothing=ls)

  def update_state(state, metrics):
    return {"temperature": update_temperature(
        state["temperature"], metrics["mean_max_prob"], max_prob=max_prob,
        t_mult=t_mult)}

  return common.Method(
      name="pl", loss_fn=loss_fn,
      init_state=lambda: {"temperature": jnp.asarray(t0, jnp.float32)},
      update_state=update_state)


def make_pl_const(*, c: float = 0.5, temperature: float = 4.0,
                  global_scale: float = 1.0,
                  label_smoothing: Optional[float] = None) -> common.Method:
  """The constant-temperature variant (`DistillationLossConstTemp`)."""
  _check(c, temperature)
  ls = common.check_smoothing(label_smoothing)

  def loss_fn(outputs, labels, *, params, state, progress):
    del params, state, progress
    return distillation_loss(outputs["logits"], labels,
                             temperature=jnp.float32(temperature), c=c,
                             global_scale=global_scale, label_smoothing=ls)

  return common.Method(name="pl_const", loss_fn=loss_fn)
