"""Pieces shared by the config files: defaults, method hyperparameters, args.

A config file defines `get_config(arg=None)`; the string after ':' in
`--config=configs/x.py:arg` selects a variant, e.g. `configs/cifar100.py:eed`
or `configs/fashion_mnist.py:method=pl,limited=True`.
"""

import ml_collections

from mexd import losses


def parse_arg(arg, **defaults):
  """Parses "a=1,b=x" (or a bare "x" for the first key) into a ConfigDict.

  Values take the type of their default (bool accepts true/false/1/0).
  """
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  first = next(iter(defaults)) if defaults else None
  for item in arg.split(","):
    key, sep, value = item.partition("=")
    if not sep:
      key, value = first, item
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; valid: "
                       f"{', '.join(defaults)}")
    default = defaults[key]
    if isinstance(default, bool):
      value = value.lower() in ("1", "true", "yes")
    elif isinstance(default, int):
      value = int(value)
    elif isinstance(default, float):
      value = float(value)
    out[key] = value
  return out


def base_config() -> ml_collections.ConfigDict:
  """Defaults of every field; data-set configs override what they need."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(
      name="digits", data_dir=ml_collections.config_dict.placeholder(str),
      val_size=180, split_seed=0,
      labeled_per_class=ml_collections.config_dict.placeholder(int),
      unlabeled_pool=False, unlabeled_batch=0))
  c.augment = ml_collections.ConfigDict(dict(crop_pad=0, flip=False))
  c.model = ml_collections.ConfigDict(dict(
      name="digits_cnn", dtype="float32", kwargs=ml_collections.ConfigDict()))
  # The training objective and the hyperparameters of every method (the
  # defaults come from the method factories; override e.g.
  # --config.method=eed --config.loss.eed.temperature=4).
  c.method = "pl"
  c.loss = losses.default_config()
  # Teacher run for teacher-student methods (ERDE, KD): its work directory.
  c.teacher_workdir = ml_collections.config_dict.placeholder(str)
  c.optimizer = ml_collections.ConfigDict(dict(
      name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
      schedule="cosine", warmup_epochs=0.0, milestones=(), gamma=0.1))
  c.batch_size = 64
  c.eval_batch_size = 256
  c.num_epochs = 30
  c.num_devices = ml_collections.config_dict.placeholder(int)  # None: all.
  c.log_every_steps = 50
  c.eval_every_epochs = 5
  c.ckpt_every_steps = 500
  c.keep_checkpoints = 3
  c.nonfinite = "stop"  # or "skip": drop the update, count it, go on.
  c.progress_bar = True
  return c
