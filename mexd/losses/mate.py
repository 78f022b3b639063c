"""MATE stand-in: exits taught by several weighted ensemble teachers.

docs/methods.md §3.1, a PROJECT READING (the paper, Sun et al., FITEE 2024,
gives only an abstract; this is not the authors' exact method). There are E
teachers; teacher k is an ensemble of the detached exit logits with its own
weights and is the *primary* teacher of exit k:

  W[k]  = softmax(P[k] + A[k])              P[k, j] = -|j - min(k+1, E-1)|
  t_k   = sum_j W[k, j] sg(z_j)             [B, C]
  L_A   = sum_k CE(t_k, y)                  (only A gets gradient)
  L_KD_i = beta KL(q_i || p_i^T)
           + (1 - beta) / (E - 1) sum_{k != i} KL(q_k || p_i^T)
  L     = sum_i [CE(z_i, y) + T^2 L_KD_i] + L_A,   q_k = sg(softmax(t_k / T))

`A` [E, E] (init 0) is the method's trainable parameter; the fixed prior P
puts the peak of teacher k one exit deeper than its student (the final
teacher peaks at the final exit). KL replaces soft cross-entropy in the
reported values (same gradient, docs/methods.md §7). With one exit the loss
is the plain CE. CE terms average over labeled examples, KL over the whole
batch.

Switchable alternative readings (§3.1): `restrict_deeper` keeps teacher k on
exits j >= k; `weights_objective="kd"` trains A through the KD term instead of
L_A (then L_A is only logged); `beta` may be a per-exit sequence.
"""

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mexd import errors
from mexd.losses import common

Array = jax.Array

WEIGHTS_OBJECTIVES = ("ce", "kd")


def depth_prior(num_exits: int) -> np.ndarray:
  """The fixed prior P [E, E]: `P[k, j] = -|j - min(k + 1, E - 1)|`.

  Examples:
    >>> depth_prior(3)
    array([[-1.,  0., -1.],
           [-2., -1.,  0.],
           [-2., -1.,  0.]], dtype=float32)
  """
  k = np.arange(num_exits)[:, None]
  j = np.arange(num_exits)[None, :]
  return (-np.abs(j - np.minimum(k + 1, num_exits - 1))).astype(np.float32)


def teacher_weights(ensemble_logits: Array, *,
                    restrict_deeper: bool = False) -> Array:
  """W = softmax(P + A) over exits, row k = weights of teacher k.

  Args:
    ensemble_logits: [E, E] trainable A.
    restrict_deeper: give teacher k weight 0 on the exits j < k.

  Returns:
    [E, E] float32, rows sum to 1.
  """
  num_exits = ensemble_logits.shape[0]
  scores = depth_prior(num_exits) + ensemble_logits.astype(jnp.float32)
  if restrict_deeper:
    deeper = np.arange(num_exits)[None, :] >= np.arange(num_exits)[:, None]
    scores = jnp.where(deeper, scores, -jnp.inf)
  return jax.nn.softmax(scores, axis=-1)


def mate_loss(logits: Array, labels: Array, ensemble_logits: Array, *,
              temperature: Array | float = 3.0,
              beta: float | Sequence[float] = 0.7,
              restrict_deeper: bool = False, weights_objective: str = "ce",
              label_smoothing: float = 0.0):
  """The MATE (project reading) loss for one batch.

  Args:
    logits: [E, B, C] exit logits, deepest last.
    labels: [B] int labels, -1 = unlabeled.
    ensemble_logits: [E, E] the trainable teacher-weight logits A.
    temperature: T > 0.
    beta: weight of the primary teacher in [0, 1], or one per exit [E].
    restrict_deeper: teacher k only uses exits j >= k.
    weights_objective: "ce" (A trained by L_A) or "kd" (A trained through
      the distillation term; L_A is logged only).

  Returns:
    (loss, metrics) with "loss/ce", "loss/kd" (T^2-scaled), "loss/teacher"
    (L_A), per-exit "ce/exit{i}" and "kd/exit{i}" (L_KD_i), the weights
    "mate/w{k}_{j}", "mate/teacher_ce{k}" and "mate/teacher_acc{k}".

  Examples:
    >>> z = jnp.zeros((3, 2, 4)); y = jnp.array([0, 1])
    >>> loss, m = mate_loss(z, y, jnp.zeros((3, 3)))
    >>> round(float(loss), 4)  # 3 * log(4) exit CE + 3 * log(4) teacher CE
    8.3178
  """
  num_exits = logits.shape[0]
  if ensemble_logits.shape != (num_exits, num_exits):
    raise ValueError(f"MATE ensemble_logits has shape {ensemble_logits.shape}"
                     f" but the model has {num_exits} exits")
  common.check_choice("weights_objective", weights_objective,
                      WEIGHTS_OBJECTIVES)
  logits = logits.astype(jnp.float32)
  w = teacher_weights(ensemble_logits, restrict_deeper=restrict_deeper)
  # Teachers see the exits only through stop_gradient: A alone is trained.
  teachers = jnp.einsum("kj,jbc->kbc", w,
                        jax.lax.stop_gradient(logits))             # [E, B, C]
  teacher_ce = common.ce_per_exit(teachers, labels, label_smoothing)  # [E]
  ce = common.ce_per_exit(logits, labels, label_smoothing)            # [E]
  terms = {"ce": jnp.sum(ce)}
  kd = jnp.zeros((num_exits,), jnp.float32)
  if num_exits > 1:
    kd_teachers = teachers
    if weights_objective == "ce":
      kd_teachers = jax.lax.stop_gradient(teachers)
      terms["teacher"] = jnp.sum(teacher_ce)
    # pair[i, k] = mean_b KL(q_k || p_i^T): student exit i, teacher k.
    pair = jnp.mean(common.kl_per_example(
        kd_teachers[None], logits[:, None], temperature), axis=-1)  # [E, E]
    b = jnp.broadcast_to(jnp.asarray(beta, jnp.float32),
                         (num_exits,))[:, None]                    # [E, 1]
    eye = jnp.eye(num_exits, dtype=jnp.float32)
    mix = b * eye + (1.0 - b) / (num_exits - 1) * (1.0 - eye)      # [E, E]
    kd = jnp.sum(mix * pair, axis=-1)                              # [E]
    terms["kd"] = temperature**2 * jnp.sum(kd)
  loss, metrics = common.combine(terms)
  metrics.update(common.per_exit_metrics("ce", ce))
  metrics.update(common.per_exit_metrics("kd", kd))
  mask = common.labeled_mask(labels)
  correct = (jnp.argmax(teachers, axis=-1) == labels).astype(jnp.float32)
  teacher_acc = common.masked_mean(correct, mask)                  # [E]
  for k in range(num_exits):
    metrics[f"mate/teacher_ce{k}"] = teacher_ce[k]
    metrics[f"mate/teacher_acc{k}"] = teacher_acc[k]
    for j in range(num_exits):
      metrics[f"mate/w{k}_{j}"] = w[k, j]
  return loss, metrics


def make_mate(*, temperature: float = 3.0,
              beta: float | Sequence[float] = 0.7,
              restrict_deeper: bool = False,
              weights_objective: str = "ce",
              label_smoothing: Optional[float] = None) -> common.Method:
  """MATE (project reading, docs/methods.md §3.1); A is in `params`."""
  common.check_positive("temperature", temperature)
  betas = np.atleast_1d(np.asarray(beta, np.float64))
  if betas.ndim != 1 or not np.all((betas >= 0) & (betas <= 1)):
    raise errors.InputError(f"beta must be in [0, 1] (or a sequence of such), "
                            f"got {beta}")
  common.check_choice("weights_objective", weights_objective,
                      WEIGHTS_OBJECTIVES)
  beta = float(betas[0]) if np.ndim(beta) == 0 else tuple(betas.tolist())
  ls = common.check_smoothing(label_smoothing)

  def loss_fn(outputs, labels, *, params, state, progress):
    del state, progress
    z = outputs["logits"]
    if not isinstance(beta, float) and len(beta) != z.shape[0]:
      raise errors.InputError(
          f"MATE beta has {len(beta)} entries but the model has "
          f"{z.shape[0]} exits")
    return mate_loss(z, labels, params["ensemble_logits"],
                     temperature=jnp.float32(temperature), beta=beta,
                     restrict_deeper=restrict_deeper,
                     weights_objective=weights_objective,
                     label_smoothing=ls)

  def init_params(num_exits: int):
    return {"ensemble_logits": jnp.zeros((num_exits, num_exits), jnp.float32)}

  return common.Method(name="mate", loss_fn=loss_fn, init_params=init_params)
