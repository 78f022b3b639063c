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
      # tfds sets only: resize + center-crop side (None: 224 for birds,
      # dogs and imagenet2012, native size for the others).
      image_size=ml_collections.config_dict.placeholder(int),
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


def _require(ok: bool, message: str):
  if not ok:
    raise ValueError(message)


def validate(config) -> None:
  """Checks the general fields of a run config; raises one clear ValueError.

  Names (data set, model, method, optimizer, schedule) and the method's
  hyperparameters are checked where they are resolved; this covers types and
  ranges of the trainer's own fields, before anything is written.
  """
  def positive_int(name):
    v = config.get(name)
    _require(isinstance(v, int) and not isinstance(v, bool) and v > 0,
             f"config.{name} must be a positive integer, got {v!r}")

  for name in ("batch_size", "eval_batch_size", "num_epochs",
               "log_every_steps", "ckpt_every_steps", "keep_checkpoints"):
    positive_int(name)
  _require(config.eval_every_epochs > 0,
           f"config.eval_every_epochs must be > 0, got "
           f"{config.eval_every_epochs!r}")
  _require(config.nonfinite in ("stop", "skip"),
           f"config.nonfinite must be 'stop' or 'skip', got "
           f"{config.nonfinite!r}")
  o = config.optimizer
  _require(o.lr > 0, f"config.optimizer.lr must be > 0, got {o.lr!r}")
  _require(o.weight_decay >= 0, "config.optimizer.weight_decay must be >= 0, "
           f"got {o.weight_decay!r}")
  _require(0 <= o.momentum < 1, "config.optimizer.momentum must be in [0, 1),"
           f" got {o.momentum!r}")
  d = config.data
  _require(0 <= d.unlabeled_batch < config.batch_size,
           f"config.data.unlabeled_batch must be in [0, batch_size="
           f"{config.batch_size}), got {d.unlabeled_batch!r}")
  _require(config.augment.crop_pad >= 0, "config.augment.crop_pad must be "
           f">= 0, got {config.augment.crop_pad!r}")
  _require(config.method in losses.method_names(),
           f"unknown method {config.method!r}; valid names: "
           f"{', '.join(losses.method_names())}")


def shrink_for_runlocal(config, *, batch_size: int = 16,
                        eval_batch_size: int = 64):
  """The `runlocal=True` smoke-test version of a recipe, in place.

  One epoch, small batches, a log line every 5 steps: enough to see every
  code path of the recipe (data, model, loss, eval, checkpoint) run on a
  laptop CPU. A semi-supervised recipe keeps its unlabeled share of the
  batch (e.g. 32 of 64 -> 8 of 16). Returns `config` for chaining.
  """
  data = config.get("data")
  if data is not None and data.get("unlabeled_batch"):
    data.unlabeled_batch = max(
        1, data.unlabeled_batch * batch_size // config.batch_size)
  config.num_epochs = 1
  config.batch_size = batch_size
  config.eval_batch_size = eval_batch_size
  config.log_every_steps = 5
  return config


def load_sibling(this_file: str, name: str):
  """Imports config module `name`.py from the folder of `this_file`.

  Lets a config build on another (configs/cifar10.py on cifar100.py) however
  the file was loaded (by path through --config, or as a module).
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.abspath(this_file)),
                      f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"mexd_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
