"""Pieces shared by the config files: defaults, method hyperparameters, args.

A recipe (mexd/configs/<name>.py) defines `get_config(arg=None)`; the
string after ':' in `--config=<name>:arg` selects a variant, e.g.
`cifar100:eed` or `fashion_mnist:method=pl,setting=limited`, parsed by the
one strict `parse_arg` that every recipe uses.
"""

from typing import Optional, Sequence

import ml_collections

from mexd import errors
from mexd import losses


class Choice:
  """A recipe argument with a fixed set of string values.

  `parse_arg(arg, setting=Choice("full", ("full", "limited")))`: the value
  must be one of `values`, and a bare word equal to one of them selects it
  (`:limited` means `setting=limited`).
  """

  def __init__(self, default: str, values: Sequence[str]):
    if default not in values:
      raise ValueError(f"default {default!r} is not one of {tuple(values)}")
    self.default, self.values = default, tuple(values)

  def __repr__(self):
    return "|".join(self.values)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _describe(defaults) -> str:
  """'method=<str>, setting=full|limited, student (bool), epochs=<int>'."""
  out = []
  for k, d in defaults.items():
    if isinstance(d, Choice):
      out.append(f"{k}={d!r}")
    elif isinstance(d, bool):
      out.append(f"{k} (bool)")
    else:
      out.append(f"{k}=<{type(d).__name__}>")
  return ", ".join(out)


def parse_arg(arg: Optional[str], **defaults) -> ml_collections.ConfigDict:
  """Parses a recipe's argument string, the text after ':' in --config.

  `arg` is comma-separated items, each `key=value` or a bare word:

  * a bare word that is a boolean key sets it to True (`:runlocal`);
  * a bare word that is one of the values of a `Choice` key selects it
    (`:limited` is `setting=limited`, `:eed` is `method=eed` when method is
    a Choice);
  * values take the type of their default; booleans accept
    1/0/true/false/yes/no/on/off (any case), nothing else.

  Anything else (an unknown key, a bare word that matches nothing, a value
  that does not parse, a key given twice) raises an InputError that lists the
  valid arguments.

  Args:
    arg: the argument string, or None / "" for the defaults.
    **defaults: key -> default value (bool, int, float, str or Choice).

  Returns:
    A ConfigDict of key -> parsed value (a Choice gives its string).

  Examples:
    >>> a = parse_arg("limited,epochs=3", setting=Choice("full", ("full",
    ...               "limited")), runlocal=False, epochs=0)
    >>> (a.setting, a.runlocal, a.epochs)
    ('limited', False, 3)
    >>> parse_arg("runlocal=ture", runlocal=False)
    Traceback (most recent call last):
    ...
    mexd.errors.InputError: config argument runlocal='ture' is not a boolean (use true or false); valid arguments: runlocal (bool)
  """
  out = ml_collections.ConfigDict({
      k: d.default if isinstance(d, Choice) else d
      for k, d in defaults.items()})
  if not arg:
    return out
  valid = _describe(defaults)
  seen = set()
  for item in arg.split(","):
    item = item.strip()
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep:
      matches = [k for k, d in defaults.items()
                 if (isinstance(d, bool) and k == key)
                 or (isinstance(d, Choice) and key in d.values)]
      if len(matches) != 1:
        what = "ambiguous" if matches else "unknown"
        raise errors.InputError(
            f"{what} config argument {item!r}; valid arguments: "
            f"{valid}")
      key, value = matches[0], ("true" if isinstance(defaults[matches[0]],
                                                     bool) else key)
    if key not in defaults:
      hint = next((f" (did you mean {k}={key}, or the bare word {key}?)"
                   for k, d in defaults.items()
                   if isinstance(d, Choice) and key in d.values), "")
      raise errors.InputError(f"unknown config argument {key!r}{hint}; valid "
                              f"arguments: {valid}")
    if key in seen:
      raise errors.InputError(f"config argument {key!r} given twice in {arg!r}")
    seen.add(key)
    default = defaults[key]
    if isinstance(default, Choice):
      if value not in default.values:
        raise errors.InputError(
            f"config argument {key}={value!r} must be one of "
            f"{', '.join(default.values)}")
    elif isinstance(default, bool):
      if value.lower() not in _TRUE + _FALSE:
        raise errors.InputError(
            f"config argument {key}={value!r} is not a boolean "
            f"(use true or false); valid arguments: {valid}")
      value = value.lower() in _TRUE
    elif isinstance(default, (int, float)):
      try:
        value = type(default)(value)
      except ValueError:
        raise errors.InputError(
            f"config argument {key}={value!r} is not a valid "
            f"{type(default).__name__}; valid arguments: {valid}") from None
    out[key] = value
  return out


def recipe_args(**extra):
  """The argument vocabulary every recipe shares, plus its own `extra`.

  method (a mexd.losses name), student (the width-halved student network
  for erde/kd), epochs (0: the recipe's default), runlocal (the 1-epoch
  smoke test of `shrink_for_runlocal`). Recipes with a data-limited setting
  add `setting=Choice("full", ("full", "limited"))` and `semisup`.
  """
  args = dict(method=Choice("pl", losses.method_names()), student=False,
              epochs=0, runlocal=False)
  for k, v in extra.items():
    if k == "method" and isinstance(v, str):
      v = Choice(v, losses.method_names())
    args[k] = v
  return args


def finish_recipe(c, a, **runlocal_kw):
  """Applies the shared arguments `epochs` and `runlocal` to recipe `c`."""
  if a.get("epochs"):
    if a.epochs < 0:
      raise errors.InputError(f"config argument epochs={a.epochs} must be >= 0")
    c.num_epochs = a.epochs
  if a.get("runlocal"):
    shrink_for_runlocal(c, **runlocal_kw)
  return c


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
      unlabeled_pool=False, unlabeled_batch=0,
      # Streaming (mexd.data.stream; tfds array_record sets): True / False,
      # unset = stream when the decoded train split exceeds max_gib (32).
      # The other fields are its options; unset = mexd.data.stream.DEFAULTS.
      stream=ml_collections.config_dict.placeholder(bool),
      workers=ml_collections.config_dict.placeholder(int),
      read_threads=ml_collections.config_dict.placeholder(int),
      crop_scale=ml_collections.config_dict.placeholder(tuple),
      crop_ratio=ml_collections.config_dict.placeholder(tuple),
      crop_fraction=ml_collections.config_dict.placeholder(float),
      mean=ml_collections.config_dict.placeholder(tuple),
      std=ml_collections.config_dict.placeholder(tuple),
      stats_images=ml_collections.config_dict.placeholder(int),
      max_gib=ml_collections.config_dict.placeholder(float)))
  c.augment = ml_collections.ConfigDict(dict(crop_pad=0, flip=False))
  c.model = ml_collections.ConfigDict(dict(
      name="digits_cnn", dtype="float32", kwargs=ml_collections.ConfigDict()))
  # The training objective and the hyperparameters of every method (the
  # defaults come from the method factories; override e.g.
  # --config.method=eed --config.loss.eed.temperature=4).
  c.method = "pl"
  c.loss = losses.default_config()
  # Gradient equilibrium (IMTA; mexd.models.gradient) with any method:
  # None = the method's default (on for imta, off otherwise).
  c.gradient_equilibrium = ml_collections.config_dict.placeholder(bool)
  # Start from a finished run's weights (every parameter and batch statistic
  # whose path and shape match; IMTA's second stage), not from random init.
  c.init_workdir = ml_collections.config_dict.placeholder(str)
  # Teacher run for teacher-student methods (ERDE, KD): its work directory.
  c.teacher_workdir = ml_collections.config_dict.placeholder(str)
  c.optimizer = ml_collections.ConfigDict(dict(
      name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
      schedule="cosine", warmup_epochs=0.0, milestones=(), gamma=0.1,
      # A regex: only parameters whose path ("model/heads_0/out/kernel")
      # matches are trained (None: all).
      trainable=ml_collections.config_dict.placeholder(str)))
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
    raise errors.InputError(message)


def validate(config) -> None:
  """Checks the general fields of a run config; raises one clear InputError.

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
  seed = d.get("split_seed", 0)
  _require(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0,
           "config.data.split_seed must be an integer >= 0 (the seed of the "
           f"train/val split and of the labeled subset), got {seed!r}")
  _require(isinstance(config.seed, int) and config.seed >= 0,
           f"config.seed must be an integer >= 0, got {config.seed!r}")
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
