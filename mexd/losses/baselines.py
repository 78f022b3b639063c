"""Baselines: cross-entropy on every exit (uniform and SDN weights), BYOT.

docs/methods.md §5. Distillation values are reported as KL (docs/methods.md
§7); the authors' soft cross-entropy differs by the teacher entropy only, so
the gradients are the same.
"""

from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from mexd import errors
from mexd.losses import common

Array = jax.Array


def weighted_ce(logits: Array, labels: Array, weights: Array,
                label_smoothing: float = 0.0):
  """`sum_i w_i CE(z_i, y)`.

  Args:
    logits: [E, B, C].
    labels: [B] int (-1 = unlabeled, ignored).
    weights: [E] per-exit weights.
    label_smoothing: eps of the CE (`common.ce_per_example`).

  Returns:
    (loss, metrics) with "loss/ce" and per-exit "ce/exit{i}".

  Examples:
    >>> z = jnp.zeros((2, 3, 5)); y = jnp.array([0, 1, 2])
    >>> round(float(weighted_ce(z, y, jnp.ones(2))[0]), 4)  # 2 * log(5)
    3.2189
  """
  ce = common.ce_per_exit(logits, labels, label_smoothing)
  loss, metrics = common.combine({"ce": jnp.sum(weights * ce)})
  metrics.update(common.per_exit_metrics("ce", ce))
  return loss, metrics


def make_ce(*, exit_weights: Optional[Sequence[float]] = None,
            label_smoothing: Optional[float] = None) -> common.Method:
  """Plain multi-exit baseline `sum_i w_i CE(z_i, y)` (w = 1 by default;
  label_smoothing: eps of the CE, None = 0)."""
  ls = common.check_smoothing(label_smoothing)

  def loss_fn(outputs, labels, *, params, state, progress):
    del params, state, progress
    z = outputs["logits"]
    w = (jnp.ones(z.shape[0]) if exit_weights is None
         else jnp.asarray(exit_weights, jnp.float32))
    if w.shape != (z.shape[0],):
      raise errors.InputError(
          f"exit_weights has {w.shape[0]} entries but the model "
          f"has {z.shape[0]} exits")
    return weighted_ce(z, labels, w, ls)

  return common.Method(name="ce", loss_fn=loss_fn)


# SDN (Kaya et al., 2019), docs/methods.md §5.1. -----------------------------

# The official list has 6 internal classifiers (ICs) with
# tau_max = 0.15 * (i + 1); other counts use the same rule, capped at the
# final exit's weight 1 so no IC outweighs the final exit (PROJECT READING).
_SDN_TAU_STEP = 0.15
_SDN_TAU_CAP = 1.0
_SDN_TAU_START = 0.01


def sdn_tau_max(num_ics: int) -> Tuple[float, ...]:
  """Maximal IC weights `min(0.15 * (i + 1), 1)` for `num_ics` = E - 1 ICs.

  Examples:
    >>> sdn_tau_max(6)
    (0.15, 0.3, 0.45, 0.6, 0.75, 0.9)
  """
  return tuple(round(min(_SDN_TAU_STEP * (i + 1), _SDN_TAU_CAP), 10)
               for i in range(num_ics))


def sdn_weights(num_exits: int, progress: Array | float,
                tau_max: Optional[Sequence[float]] = None) -> Array:
  """Per-exit SDN weights at training progress `epoch / n_epochs`.

  `tau_i = min(tau_max_i, 0.01 + progress * tau_max_i)` for the internal
  exits, 1 for the final exit.

  Args:
    num_exits: E.
    progress: scalar (1-based epoch) / (number of epochs); may be traced.
    tau_max: E - 1 maximal IC weights (default `sdn_tau_max(E - 1)`).

  Returns:
    [E] float32 weights, the last one 1.

  Examples:
    >>> [round(float(w), 4) for w in sdn_weights(4, 0.5)]
    [0.085, 0.16, 0.235, 1.0]
  """
  if tau_max is None:
    tau_max = sdn_tau_max(num_exits - 1)
  if len(tau_max) != num_exits - 1:
    raise errors.InputError(
        f"SDN tau_max has {len(tau_max)} entries but the model "
        f"has {num_exits - 1} internal exits (E - 1)")
  tmax = jnp.asarray(tau_max, jnp.float32).reshape(num_exits - 1)   # [E-1]
  tau = jnp.minimum(tmax, _SDN_TAU_START + progress * tmax)
  return jnp.concatenate([tau, jnp.ones((1,), jnp.float32)])


def make_sdn(*, tau_max: Optional[Sequence[float]] = None,
             label_smoothing: Optional[float] = None) -> common.Method:
  """SDN: CE on every exit, IC weights ramping up with `progress`.

  Args:
    tau_max: E - 1 maximal IC weights (>= 0); None = `sdn_tau_max(E - 1)`.
    label_smoothing: eps of the CE (None = 0).
  """
  ls = common.check_smoothing(label_smoothing)
  if tau_max is not None:
    tau_max = tuple(float(t) for t in tau_max)
    for t in tau_max:
      common.check_at_least("tau_max entries", t, 0)

  def loss_fn(outputs, labels, *, params, state, progress):
    del params, state
    z = outputs["logits"]
    w = sdn_weights(z.shape[0], progress, tau_max)
    loss, metrics = weighted_ce(z, labels, w, ls)
    metrics.update(common.per_exit_metrics("sdn/tau", w))
    return loss, metrics

  return common.Method(name="sdn", loss_fn=loss_fn)


# BYOT (Zhang et al., 2019), docs/methods.md §5.2. ---------------------------


def byot_loss(logits: Array, labels: Array, features: Optional[Array] = None,
              *, alpha: float = 0.3, temperature: Array | float = 3.0,
              feature_weight: float = 0.03, label_smoothing: float = 0.0):
  """Be Your Own Teacher with the project defaults.

  `L = (1-a) sum_i CE(z_i, y) + a T^2 sum_{i<E-1} KL(t || p_i^T)
  + lambda sum_{i<E-1} mean_{b,d} (f_i - sg(f_{E-1}))^2 1{f_i>0 or f_{E-1}>0}`
  with `t = sg(softmax(z_{E-1} / T))`. KL replaces the authors' soft
  cross-entropy (same gradient, values differ by the teacher entropy); the
  feature term is mean-reduced (the unofficial code sums, with a tiny weight).
  CE is averaged over labeled examples, KL and features over the whole batch.

  Args:
    logits: [E, B, C] exit logits, deepest last.
    labels: [B] int labels, -1 = unlabeled.
    features: [E, B, D] exit features (needed when feature_weight > 0).
    alpha: KD weight a in [0, 1].
    temperature: T > 0.
    feature_weight: lambda >= 0.
    label_smoothing: eps of the CE terms.

  Returns:
    (loss, metrics) with "loss/ce", "loss/kd", "loss/feat" (weighted) and
    per-exit "ce/exit{i}", "kd/exit{i}", "feat/exit{i}" (i < E - 1).

  Examples:
    >>> z = jnp.zeros((3, 2, 4)); f = jnp.ones((3, 2, 5)); y = jnp.array([0, 1])
    >>> round(float(byot_loss(z, y, f)[0]), 4)  # 0.7 * 3 * log(4)
    2.9112
  """
  if feature_weight and features is None:
    raise ValueError("BYOT with feature_weight > 0 needs outputs['features']")
  teacher = jax.lax.stop_gradient(logits[-1])                    # [B, C]
  ce = common.ce_per_exit(logits, labels, label_smoothing)        # [E]
  kd = jnp.mean(common.kl_per_example(teacher[None], logits[:-1],
                                      temperature), axis=-1)      # [E-1]
  terms = {"ce": jnp.sum(ce), "kd": temperature**2 * jnp.sum(kd)}
  weights = {"ce": 1.0 - alpha, "kd": alpha}
  feat = None
  if feature_weight:
    feat = common.masked_feature_mse(
        features[:-1], jax.lax.stop_gradient(features[-1]))       # [E-1]
    terms["feat"] = jnp.sum(feat)
    weights["feat"] = feature_weight
  loss, metrics = common.combine(terms, weights)
  metrics.update(common.per_exit_metrics("ce", ce))
  metrics.update(common.per_exit_metrics("kd", kd))
  if feat is not None:
    metrics.update(common.per_exit_metrics("feat", feat))
  return loss, metrics


def make_byot(*, alpha: float = 0.3, temperature: float = 3.0,
              feature_weight: float = 0.03,
              label_smoothing: Optional[float] = None) -> common.Method:
  """BYOT: CE everywhere, KD and feature hints from the deepest exit."""
  ls = common.check_smoothing(label_smoothing)
  common.check_unit("alpha", alpha)
  common.check_positive("temperature", temperature)
  common.check_at_least("feature_weight", feature_weight, 0)

  def loss_fn(outputs, labels, *, params, state, progress):
    del params, state, progress
    return byot_loss(outputs["logits"], labels, outputs.get("features"),
                     alpha=alpha, temperature=jnp.float32(temperature),
                     feature_weight=feature_weight, label_smoothing=ls)

  return common.Method(name="byot", loss_fn=loss_fn)
