"""Optimizers and learning-rate schedules of the seeds' recipes (optax).

`make_optimizer(cfg, steps_per_epoch, num_epochs)` returns an optax
transformation for params {"model": ..., "method": ...}: weight decay applies
to the model's kernels only (not to biases, batch-norm scales or the method's
parameters such as MATE's teacher weights), as in the PyTorch recipes'
`weight_decay` applied inside SGD (coupled L2).
"""

import jax
import optax

from mexd import errors


def make_schedule(cfg, steps_per_epoch: int, num_epochs: int):
  """Learning rate per step.

  cfg.schedule: "constant", "cosine", or "step" (multiply by cfg.gamma at each
  epoch in cfg.milestones); cfg.warmup_epochs of linear warm-up from 0.
  """
  total = steps_per_epoch * num_epochs
  warmup = int(cfg.get("warmup_epochs", 0) * steps_per_epoch)
  if cfg.schedule == "constant":
    main = optax.constant_schedule(cfg.lr)
  elif cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(cfg.lr, max(total - warmup, 1))
  elif cfg.schedule == "step":
    bounds = {int(m * steps_per_epoch) - warmup: cfg.gamma
              for m in cfg.milestones}
    main = optax.piecewise_constant_schedule(cfg.lr, bounds)
  else:
    raise errors.InputError(
        f"unknown schedule {cfg.schedule!r}; valid: constant, "
        "cosine, step")
  if warmup:
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.lr, warmup), main], [warmup])
  return main


def _decay_mask(params):
  """True for model weights of rank >= 2 (kernels), False elsewhere."""
  mask = jax.tree.map(lambda p: p.ndim >= 2, params)
  mask["method"] = jax.tree.map(lambda _: False, params["method"])
  return mask


def make_optimizer(cfg, steps_per_epoch: int, num_epochs: int):
  """The optax optimizer named by cfg.name ("sgd", "adamw")."""
  lr = make_schedule(cfg, steps_per_epoch, num_epochs)
  if cfg.name == "sgd":
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay, mask=_decay_mask),
        optax.sgd(lr, momentum=cfg.momentum or None,
                  nesterov=cfg.nesterov)), lr
  if cfg.name == "adamw":
    return optax.adamw(lr, weight_decay=cfg.weight_decay,
                       mask=_decay_mask), lr
  raise errors.InputError(f"unknown optimizer {cfg.name!r}; valid: sgd, adamw")
