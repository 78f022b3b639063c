"""IMTA's one-for-all knowledge distillation (Li et al., ICCV 2019).

Formula, defaults and sources: docs/methods.md §9.

Every early exit mixes cross-entropy with a distillation term towards the
final exit's softened, stop-gradient prediction at a fixed temperature T; the
final exit gets the cross-entropy only:

    L = CE(z_{E-1}, y) + sum_{i<E-1} [(1 - g) CE(z_i, y)
                                      + g T^2 KL(t || softmax(z_i / T)) / s]

with `t = sg(softmax(z_{E-1} / T))` and s = C when `class_mean` (the authors'
`nn.KLDivLoss()` averages over batch *and* classes), else s = 1. The method
switches gradient equilibrium on by default (`Method.gradient_equilibrium`;
`config.gradient_equilibrium` overrides it).

`target="teacher"` is the authors' second training stage: the soft target is
the final exit of a frozen teacher run (the first stage, `teacher_logits`),
the model starts from that run's weights (`config.init_workdir`) and trains
its classifiers only (`config.optimizer.trainable = CLASSIFIERS`).
"""


from typing import Optional

import jax
import jax.numpy as jnp

from mexd.losses import common

Array = jax.Array

# The parameters IMTA's second stage trains: every exit's final Dense ("out")
# and the ISC projection (MSDNet), paths as `mexd.optim.param_path`.
CLASSIFIERS = r"^model/heads_\d+/(.+/)?(out|proj|proj_bn)/"
TARGETS = ("self", "teacher")


def imta_loss(logits: Array, labels: Array, *, temperature: float = 3.0,
              gamma: float = 0.9, class_mean: bool = True,
              teacher_logits: Array | None = None,
              label_smoothing: float = 0.0):
  """IMTA's KD loss for one batch.

  Args:
    logits: [E, B, C] exit logits, deepest last.
    labels: [B] int labels (-1 = unlabeled: no CE).
    teacher_logits: [E', B, C] of a frozen teacher whose final exit is the
      soft target; None: the model's own final exit.
    temperature: T > 0.
    gamma: the distillation weight g in [0, 1].
    class_mean: divide the KL by C (the authors' element-wise mean).

  Returns:
    (loss, metrics) with "loss/ce", "loss/kd", per-exit "ce/exit{i}" and
    "kd/exit{i}" (batch-mean KL of each early exit, before any scaling).

  Examples:
    >>> z = jnp.zeros((3, 2, 4)); y = jnp.array([0, 1])
    >>> loss, _ = imta_loss(z, y, gamma=0.5)
    >>> round(float(loss), 4)  # (1 + 2 * 0.5) * log(4)
    2.7726
  """
  num_exits, num_classes = logits.shape[0], logits.shape[-1]
  teacher = jax.lax.stop_gradient(
      logits[-1] if teacher_logits is None else teacher_logits[-1])
  ce = common.ce_per_exit(logits, labels, label_smoothing)         # [E]
  kd = jnp.mean(common.kl_per_example(teacher[None], logits[:-1],
                                      temperature), axis=-1)       # [E-1]
  ce_weights = jnp.asarray([1.0 - gamma] * (num_exits - 1) + [1.0])
  scale = gamma * temperature**2 / (num_classes if class_mean else 1)
  loss, metrics = common.combine({"ce": jnp.sum(ce_weights * ce),
                                  "kd": scale * jnp.sum(kd)})
  metrics.update(common.per_exit_metrics("ce", ce))
  if num_exits > 1:
    metrics.update(common.per_exit_metrics("kd", kd))
  return loss, metrics


def make_imta(*, temperature: float = 3.0, gamma: float = 0.9,
              class_mean: bool = True, target: str = "self",
              label_smoothing: Optional[float] = None) -> common.Method:
  """IMTA: one-for-all KD from the final exit, with gradient equilibrium.

  target: "self" (the model's own final exit, one training stage) or
  "teacher" (a frozen first-stage run's final exit; needs a teacher).
  """
  common.check_positive("temperature", temperature)
  common.check_unit("gamma", gamma)
  common.check_choice("target", target, TARGETS)
  from_teacher = target == "teacher"
  ls = common.check_smoothing(label_smoothing)

  def loss_fn(outputs, labels, *, params, state, progress):
    del params, state, progress
    return imta_loss(outputs["logits"], labels, temperature=temperature,
                     gamma=gamma, class_mean=class_mean,
                     teacher_logits=(outputs["teacher_logits"] if from_teacher
                                     else None), label_smoothing=ls)

  return common.Method("imta", loss_fn, needs_teacher=from_teacher,
                       gradient_equilibrium=True)
