"""Shared pieces of every training objective: per-example terms and reductions.

Notation (docs/methods.md §0): `logits` z is `[E, B, C]` (exits stacked,
deepest last); `labels` y is `[B]` int with `-1` marking an unlabeled example.
Per-example terms come back as `[E, B]` and the method reduces them.
"""

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import math

import jax
import jax.numpy as jnp
import optax

from mexd import errors

Array = jax.Array
PyTree = Any
Metrics = Dict[str, Array]


def labeled_mask(labels: Array) -> Array:
  """[B] float mask: 1 where the label is a class index (>= 0), else 0."""
  return (labels >= 0).astype(jnp.float32)


def ce_per_example(logits: Array, labels: Array,
                   smoothing: float = 0.0) -> Array:
  """Cross-entropy of every exit and example, optionally label-smoothed.

  With smoothing eps the target is (1 - eps) one_hot(y) + eps / C (Szegedy
  et al., 2016; `optax.smooth_labels`): `(1 - eps) CE(z, y) + eps mean_c
  -log softmax(z)_c`.

  Args:
    logits: [E, B, C] (or [B, C]).
    labels: [B] int; negative labels give 0 (mask them out when reducing).
    smoothing: eps in [0, 1); 0 is the plain cross-entropy.

  Returns:
    [E, B] (or [B]) float32 `-log softmax(logits)[..., y]` (smoothed).
  """
  # optax's CE with integer labels; the mask is ours (optax has no
  # "unlabeled" index), so negative labels are clamped to a valid class and
  # their CE multiplied by 0.
  safe = jnp.broadcast_to(jnp.maximum(labels, 0), logits.shape[:-1])
  z = logits.astype(jnp.float32)
  ce = optax.losses.softmax_cross_entropy_with_integer_labels(z, safe)
  if smoothing:
    uniform = -jnp.mean(jax.nn.log_softmax(z, axis=-1), axis=-1)
    ce = (1.0 - smoothing) * ce + smoothing * uniform
  return ce * labeled_mask(labels)


def masked_mean(x: Array, mask: Array) -> Array:
  """Mean of x [..., B] over the last axis where mask [B] is 1.

  Returns 0 (not NaN) where the mask is empty, e.g. an unlabeled batch.
  """
  return jnp.sum(x * mask, axis=-1) / jnp.maximum(jnp.sum(mask), 1.0)


def ce_per_exit(logits: Array, labels: Array, smoothing: float = 0.0
                ) -> Array:
  """[E] batch-mean cross-entropy of each exit over the labeled examples
  (label-smoothed by `smoothing`, see `ce_per_example`)."""
  return masked_mean(ce_per_example(logits, labels, smoothing),
                     labeled_mask(labels))


def check_smoothing(label_smoothing) -> float:
  """The label-smoothing eps of a method's `label_smoothing` hyperparameter
  (None: 0), checked to be in [0, 1)."""
  if label_smoothing is None:
    return 0.0
  check_unit("label_smoothing", label_smoothing)
  if label_smoothing >= 1:
    raise errors.InputError(
        f"label_smoothing must be in [0, 1), got {label_smoothing}")
  return float(label_smoothing)


def soft_ce(teacher_probs: Array, student_logits: Array,
            temperature: Array | float = 1.0) -> Array:
  """Per-example soft cross-entropy H(q, log softmax(z / T)).

  Args:
    teacher_probs: [..., C] target distribution q (callers stop its gradient).
    student_logits: [..., C] student logits z.
    temperature: T > 0 (scalar, may be traced).

  Returns:
    [...] `-sum_c q_c log softmax(z / T)_c`.
  """
  return optax.losses.softmax_cross_entropy(
      student_logits.astype(jnp.float32) / temperature, teacher_probs)


def entropy(probs: Array) -> Array:
  """[...] Shannon entropy (nats) of probs [..., C]; 0 log 0 = 0.

  Hand-written: optax has no entropy of a distribution, and the double
  `where` keeps the gradient finite at probabilities that are exactly 0.
  """
  return -jnp.sum(jnp.where(probs > 0, probs * jnp.log(
      jnp.where(probs > 0, probs, 1.0)), 0.0), axis=-1)


def kl_per_example(teacher_logits: Array, student_logits: Array,
                   temperature: Array | float = 1.0) -> Array:
  """[...] KL(softmax(t / T) || softmax(s / T)), computed stably in log space."""
  log_q = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature,
                             axis=-1)
  log_p = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature,
                             axis=-1)
  return optax.losses.kl_divergence_with_log_targets(log_p, log_q)


def masked_feature_mse(student: Array, teacher: Array) -> Array:
  """Partial-L2 feature loss of Heo et al.: mean over [B, D] per exit.

  Args:
    student: [E, B, D] features f_i.
    teacher: [B, D] or [E, B, D] target features (callers stop the gradient).

  Returns:
    [E] `mean_{b,d} (f - t)^2 * 1{f > 0 or t > 0}`.
  """
  teacher = jnp.broadcast_to(teacher, student.shape)
  mask = jnp.logical_or(student > 0, teacher > 0)
  return jnp.mean(jnp.where(mask, (student - teacher) ** 2, 0.0), axis=(-2, -1))


def check_positive(name: str, value) -> None:
  """Raises InputError unless `value` is a finite real number > 0 (a Python,
  NumPy or 0-d JAX scalar)."""
  try:
    ok = math.isfinite(float(value)) and float(value) > 0
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise errors.InputError(f"{name} must be > 0, got {value}")


def check_at_least(name: str, value, low: float, why: str = "") -> None:
  """Raises InputError unless `value >= low` (NaN fails); `why` is appended."""
  if not value >= low:
    why = f" ({why})" if why else ""
    raise errors.InputError(f"{name} must be >= {low:g}{why}, got {value}")


def check_unit(name: str, value, *, open_low: bool = False) -> None:
  """Raises InputError unless `value` is in [0, 1] ((0, 1] if `open_low`)."""
  ok = 0.0 < value <= 1.0 if open_low else 0.0 <= value <= 1.0
  if not ok:
    raise errors.InputError(
        f"{name} must be in {'(' if open_low else '['}0, 1], got {value}")


def check_choice(name: str, value, valid) -> None:
  """Raises InputError unless `value` is one of `valid`."""
  if value not in valid:
    raise errors.InputError(f"unknown {name} {value!r}; valid: "
                            f"{', '.join(valid)}")


def per_exit_metrics(prefix: str, values: Array) -> Metrics:
  """{f"{prefix}/exit{i}": values[i]} for an [E] array."""
  return {f"{prefix}/exit{i}": values[i] for i in range(values.shape[0])}


@dataclasses.dataclass(frozen=True)
class Method:
  """A training objective: a pure loss plus its explicit parameters and state.

  Attributes:
    name: the config name of the method.
    loss_fn: `loss_fn(outputs, labels, *, params, state, progress)` ->
      `(scalar loss, metrics)`. `outputs` holds "logits" [E, B, C], "features"
      [E, B, D] and, for teacher-student methods, "teacher_logits" [E, B, C].
      `params` are the method's trainable parameters (MATE's teacher weights;
      `{}` otherwise), `state` its non-trainable state (P&L's temperature),
      `progress` the 1-based epoch divided by the number of epochs (SDN).
      `metrics` maps names such as "loss/ce" to scalars.
    init_params: `num_exits -> params` pytree (trained with the model).
    init_state: `() -> state` pytree.
    update_state: `(state, metrics) -> state`, applied after every step
      outside the gradient.
    needs_teacher: the train step must provide "teacher_logits".
    gradient_equilibrium: the method's default for gradient equilibrium
      (`mexd.models.gradient`; IMTA: on); `config.gradient_equilibrium`
      overrides it.
  """

  name: str
  loss_fn: Callable[..., Tuple[Array, Metrics]]
  init_params: Callable[[int], PyTree] = lambda num_exits: {}
  init_state: Callable[[], PyTree] = lambda: {}
  update_state: Callable[[PyTree, Mapping[str, Array]], PyTree] = (
      lambda state, metrics: state)
  needs_teacher: bool = False
  gradient_equilibrium: bool = False


def combine(terms: Mapping[str, Array],
            weights: Optional[Mapping[str, float]] = None
            ) -> Tuple[Array, Metrics]:
  """Weighted sum of named scalar terms.

  Args:
    terms: name -> scalar term (e.g. {"ce": ..., "kd": ...}).
    weights: name -> weight (1 where missing).

  Returns:
    (total, {"loss": total, "loss/<name>": weighted term, ...}).
  """
  weights = weights or {}
  metrics = {f"loss/{k}": weights.get(k, 1.0) * v for k, v in terms.items()}
  total = sum(metrics.values())
  metrics["loss"] = total
  return total, metrics
