"""Optimizers and learning-rate schedules of the seeds' recipes (optax).

`make_optimizer(cfg, steps_per_epoch, num_epochs)` returns an optax
transformation for params {"model": ..., "method": ...}: weight decay applies
to the model's kernels only (not to biases, batch-norm scales or the method's
parameters such as MATE's teacher weights), as in the PyTorch recipes'
`weight_decay` applied inside SGD (coupled L2). With `cfg.trainable` (a
regular expression) only the parameters whose path matches are trained; the
others get zero updates, no weight decay and no optimizer state.
"""

import re

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


def param_path(keypath) -> str:
  """"model/heads_0/out/kernel" for a pytree key path of the params."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k)))
                  for k in keypath)


def freeze_except(tx: optax.GradientTransformation,
                  pattern: str) -> optax.GradientTransformation:
  """`tx` for the parameters whose path matches `pattern` (`re.search` on
  `param_path`), zero updates for the others.

  Raises:
    InputError: (when the optimizer is initialised) no parameter matches.
  """
  regex = re.compile(pattern)

  def labels(params):
    out = jax.tree_util.tree_map_with_path(
        lambda path, _: "train" if regex.search(param_path(path))
        else "freeze", params)
    if "train" not in jax.tree.leaves(out):
      first = jax.tree_util.tree_flatten_with_path(params)[0][0][0]
      raise errors.InputError(
          f"optimizer.trainable={pattern!r} matches no parameter; paths "
          f"look like {param_path(first)!r}")
    return out

  return optax.multi_transform(
      {"train": tx, "freeze": optax.set_to_zero()}, labels)


def make_optimizer(cfg, steps_per_epoch: int, num_epochs: int):
  """The optax optimizer named by cfg.name ("sgd", "adamw"), restricted to
  the parameters matching cfg.trainable if set."""
  lr = make_schedule(cfg, steps_per_epoch, num_epochs)
  if cfg.name == "sgd":
    tx = optax.chain(
        optax.add_decayed_weights(cfg.weight_decay, mask=_decay_mask),
        optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
  elif cfg.name == "adamw":
    tx = optax.adamw(lr, weight_decay=cfg.weight_decay, mask=_decay_mask)
  else:
    raise errors.InputError(
        f"unknown optimizer {cfg.name!r}; valid: sgd, adamw")
  if cfg.get("trainable"):
    tx = freeze_except(tx, cfg.trainable)
  return tx, lr
