"""ERDE and plain KD: a student early-exit net taught by a frozen teacher.

docs/methods.md §4.1, a PROJECT READING (exact weights and sign
unconfirmed). Teacher exit i teaches student exit i. With
`zt = sg(teacher_logits)`, `wrong_i[b] = 1{y_b labeled and argmax zt_i[b] !=
y_b}`, `right_i = 1 - wrong_i`:

  L_CE_i = CE(z_i, y)
  L_KL_i = T^2 mean_b right_i[b] KL(softmax(zt_i[b] / T) || softmax(z_i[b] / T))
  L_E_i  = mean_b wrong_i[b] (log C - H(softmax(z_i[b])))
  L      = sum_i [alpha L_CE_i + (1 - alpha) L_KL_i + gamma L_E_i]

Minimising `log C - H` (= KL(p || uniform) >= 0) raises the student's
entropy where the teacher is wrong, so an entropy-threshold exit rule sends
those images deeper. `kl_on_wrong=True` keeps the KL on every example. KL and
entropy terms are means over the full batch (masked examples count as 0); CE
averages over the labeled examples. Unlabeled examples (label -1) count as
"teacher right": they get the KL term and no entropy term (PROJECT READING).

`make_kd` is the plain teacher -> student KD baseline: gamma = 0 and KL on
every example.
"""

from typing import Optional

import math

import jax
import jax.numpy as jnp

from mexd import errors
from mexd.losses import common

Array = jax.Array


def teacher_wrong(teacher_logits: Array, labels: Array) -> Array:
  """[E, B] float 1 where the labeled example is misclassified by the exit."""
  pred = jnp.argmax(teacher_logits, axis=-1)                       # [E, B]
  return ((pred != labels) & (labels >= 0)).astype(jnp.float32)


def erde_loss(logits: Array, teacher_logits: Array, labels: Array, *,
              temperature: Array | float = 4.0, alpha: float = 0.5,
              gamma: float = 1.0, kl_on_wrong: bool = False,
              label_smoothing: float = 0.0):
  """The ERDE (project reading) loss for one batch.

  Args:
    logits: [E, B, C] student exit logits, deepest last.
    teacher_logits: [E, B, C] teacher exit logits (gradient is stopped here).
    labels: [B] int labels, -1 = unlabeled.
    temperature: T > 0 of the KL term.
    alpha: CE weight in [0, 1]; the KL term has weight 1 - alpha.
    gamma: entropy-term weight >= 0.
    kl_on_wrong: keep the KL term on teacher-misclassified examples too.

  Returns:
    (loss, metrics) with "loss/ce", "loss/kd", "loss/ent" (weighted),
    per-exit "ce/exit{i}", "kd/exit{i}" (masked KL mean, not T^2-scaled),
    "ent/exit{i}" and
    "teacher_err/exit{i}" (teacher error rate on the labeled examples).

  Raises:
    InputError: teacher and student have different exit counts or shapes.

  Examples:
    >>> z = jnp.zeros((3, 2, 4)); y = jnp.array([0, 1])
    >>> round(float(erde_loss(z, jnp.zeros((3, 2, 4)), y)[0]), 4)
    2.0794
  """
  if teacher_logits.shape[0] != logits.shape[0]:
    raise errors.InputError(
        f"ERDE pairs teacher exit i with student exit i, but the teacher has "
        f"{teacher_logits.shape[0]} exits and the student {logits.shape[0]}")
  if teacher_logits.shape != logits.shape:
    raise errors.InputError(
        f"teacher logits {teacher_logits.shape} and student "
        f"logits {logits.shape} differ in batch or class size")
  logits = logits.astype(jnp.float32)
  teacher = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
  num_classes = logits.shape[-1]
  wrong = teacher_wrong(teacher, labels)                           # [E, B]
  kl_mask = jnp.ones_like(wrong) if kl_on_wrong else 1.0 - wrong
  ce = common.ce_per_exit(logits, labels, label_smoothing)         # [E]
  kl = common.kl_per_example(teacher, logits, temperature)         # [E, B]
  kd = jnp.mean(kl_mask * kl, axis=-1)                             # [E]
  logp = jax.nn.log_softmax(logits, axis=-1)
  neg_entropy = jnp.sum(jnp.exp(logp) * logp, axis=-1)             # [E, B]
  ent = jnp.mean(wrong * (math.log(num_classes) + neg_entropy), -1)  # [E]
  terms = {"ce": jnp.sum(ce), "kd": temperature**2 * jnp.sum(kd)}
  weights = {"ce": alpha, "kd": 1.0 - alpha}
  if gamma:
    terms["ent"] = jnp.sum(ent)
    weights["ent"] = gamma
  loss, metrics = common.combine(terms, weights)
  metrics.update(common.per_exit_metrics("ce", ce))
  metrics.update(common.per_exit_metrics("kd", kd))
  if gamma:
    metrics.update(common.per_exit_metrics("ent", ent))
  metrics.update(common.per_exit_metrics(
      "teacher_err", common.masked_mean(wrong, common.labeled_mask(labels))))
  return loss, metrics


def _check(temperature, alpha, gamma=0.0):
  common.check_positive("temperature", temperature)
  common.check_unit("alpha", alpha)
  common.check_at_least("gamma", gamma, 0)


def _make(name, *, temperature, alpha, gamma, kl_on_wrong, label_smoothing):
  def loss_fn(outputs, labels, *, params, state, progress):
    del params, state, progress
    if "teacher_logits" not in outputs:
      raise ValueError(f"method {name!r} needs outputs['teacher_logits']")
    return erde_loss(outputs["logits"], outputs["teacher_logits"], labels,
                     temperature=jnp.float32(temperature), alpha=alpha,
                     gamma=gamma, kl_on_wrong=kl_on_wrong,
                     label_smoothing=label_smoothing)

  return common.Method(name=name, loss_fn=loss_fn, needs_teacher=True)


def make_erde(*, temperature: float = 4.0, alpha: float = 0.5,
              gamma: float = 1.0, kl_on_wrong: bool = False,
              label_smoothing: Optional[float] = None) -> common.Method:
  """ERDE (project reading, docs/methods.md §4.1); needs a frozen teacher."""
  _check(temperature, alpha, gamma)
  return _make("erde", temperature=temperature, alpha=alpha, gamma=gamma,
               kl_on_wrong=bool(kl_on_wrong),
               label_smoothing=common.check_smoothing(label_smoothing))


def make_kd(*, temperature: float = 4.0, alpha: float = 0.5,
            label_smoothing: Optional[float] = None) -> common.Method:
  """Plain teacher -> student KD on every exit pair (ERDE without L_E)."""
  _check(temperature, alpha)
  return _make("kd", temperature=temperature, alpha=alpha, gamma=0.0,
               kl_on_wrong=True,
               label_smoothing=common.check_smoothing(label_smoothing))
