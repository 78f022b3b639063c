"""Exit-Ensemble Distillation (Lee & Lee, 2021), docs/methods.md §2.

Every exit, the final one included, is trained with cross-entropy and is
distilled towards the stop-gradient *ensemble* of all exits: the mean of the
exit logits (output distillation, MSE by default or temperature KL) and the
mean of the exit features (partial-L2 feature distillation):

  L = sum_i CE(z_i, y) + sum_i MSE(z_i, sg(mean_j z_j))
      + sum_i mean_{b,d} (f_i - f_ens)^2 1{f_i > 0 or f_ens > 0}

with `f_ens = sg(mean_j f_j)`; the KL option replaces the MSE term by
`kl_weight * T^2 * sum_i mean_b KL(softmax(z_ens / T) || softmax(z_i / T))`
(reported as KL, docs/methods.md §7; the authors' soft cross-entropy has the
same gradient). CE is averaged over labeled examples (label -1 =
unlabeled), the distillation terms over the whole batch.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from mexd.losses import common

Array = jax.Array

OUTPUT_LOSSES = ("mse", "kl")


def loss_with_targets(logits: Array, labels: Array,
                      features: Optional[Array] = None, *,
                      target_logits: Array,
                      target_features: Optional[Array] = None,
                      output_loss: str = "mse",
                      temperature: Array | float = 3.0,
                      kl_weight: float = 0.1, label_smoothing: float = 0.0):
  """The EED loss towards given (constant) targets.

  `eed_loss` calls this with the stop-gradient exit ensemble; tests call it
  with the ensemble passed in as a separate input.

  Args:
    logits: [E, B, C] exit logits, deepest last.
    labels: [B] int labels, -1 = unlabeled.
    features: [E, B, D] exit features (used when target_features is given).
    target_logits: [B, C] teacher logits (the caller stops their gradient).
    target_features: [B, D] teacher features, or None for no feature term.
    output_loss: "mse" (mean over B * C) or "kl" (T^2-scaled, batch mean).
    temperature: T > 0 of the "kl" output loss.
    kl_weight: weight of the "kl" output loss (authors: 0.1).
    label_smoothing: eps of the CE terms.

  Returns:
    (loss, metrics) with "loss/ce", "loss/mse" or "loss/kd", "loss/feat" and
    the per-exit "ce/exit{i}", "mse/exit{i}" or "kd/exit{i}", "feat/exit{i}".
  """
  common.check_choice("output_loss", output_loss, OUTPUT_LOSSES)
  ce = common.ce_per_exit(logits, labels, label_smoothing)         # [E]
  terms = {"ce": jnp.sum(ce)}
  weights = {}
  if output_loss == "mse":
    out_name = "mse"
    out = jnp.mean((logits.astype(jnp.float32) - target_logits[None]) ** 2,
                   axis=(-2, -1))                                   # [E]
    terms["mse"] = jnp.sum(out)
  else:
    out_name = "kd"
    out = jnp.mean(common.kl_per_example(target_logits[None], logits,
                                         temperature), axis=-1)     # [E]
    terms["kd"] = temperature**2 * jnp.sum(out)
    weights["kd"] = kl_weight
  feat = None
  if target_features is not None:
    feat = common.masked_feature_mse(features, target_features)    # [E]
    terms["feat"] = jnp.sum(feat)
  loss, metrics = common.combine(terms, weights)
  metrics.update(common.per_exit_metrics("ce", ce))
  metrics.update(common.per_exit_metrics(out_name, out))
  if feat is not None:
    metrics.update(common.per_exit_metrics("feat", feat))
  return loss, metrics


def eed_loss(logits: Array, labels: Array, features: Optional[Array] = None,
             *, output_loss: str = "mse", temperature: Array | float = 3.0,
             kl_weight: float = 0.1, feature_loss: bool = True,
             label_smoothing: float = 0.0):
  """The EED loss: every exit distilled towards the detached exit ensemble.

  Args:
    logits: [E, B, C] exit logits, deepest last.
    labels: [B] int labels, -1 = unlabeled.
    features: [E, B, D] exit features (needed when feature_loss).
    output_loss: "mse" (default) or "kl".
    temperature: T > 0 of the "kl" output loss.
    kl_weight: weight of the "kl" output loss.
    feature_loss: add the partial-L2 feature distillation.
    label_smoothing: eps of the CE terms.

  Returns:
    (loss, metrics) as `loss_with_targets`.

  Examples:
    >>> z = jnp.zeros((3, 2, 4)); f = jnp.ones((3, 2, 5)); y = jnp.array([0, 1])
    >>> round(float(eed_loss(z, y, f)[0]), 4)  # 3 * log(4)
    4.1589
  """
  ens_logits = jax.lax.stop_gradient(
      jnp.mean(logits.astype(jnp.float32), axis=0))                # [B, C]
  ens_features = None
  if feature_loss:
    if features is None:
      raise ValueError("EED with feature_loss=True needs outputs['features']")
    ens_features = jax.lax.stop_gradient(jnp.mean(features, axis=0))  # [B, D]
  return loss_with_targets(
      logits, labels, features, target_logits=ens_logits,
      target_features=ens_features, output_loss=output_loss,
      temperature=temperature, kl_weight=kl_weight,
      label_smoothing=label_smoothing)


def make_eed(*, output_loss: str = "mse", temperature: float = 3.0,
             kl_weight: float = 0.1, feature_loss: bool = True,
             label_smoothing: Optional[float] = None) -> common.Method:
  """EED with the authors' defaults (MSE output loss, feature loss on)."""
  ls = common.check_smoothing(label_smoothing)
  common.check_choice("output_loss", output_loss, OUTPUT_LOSSES)
  common.check_positive("temperature", temperature)
  common.check_at_least("kl_weight", kl_weight, 0)

  def loss_fn(outputs, labels, *, params, state, progress):
    del params, state, progress
    return eed_loss(outputs["logits"], labels, outputs.get("features"),
                    output_loss=output_loss,
                    temperature=jnp.float32(temperature),
                    kl_weight=kl_weight, feature_loss=bool(feature_loss),
                    label_smoothing=ls)

  return common.Method(name="eed", loss_fn=loss_fn)
