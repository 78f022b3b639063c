"""Training objectives of multi-exit networks, one pure function per method.

`get_method(name, **hparams)` returns a `Method` whose
`loss_fn(outputs, labels, *, params, state, progress) -> (loss, metrics)` the
train step calls; adding a method only adds an entry to `_REGISTRY`.
"""

import inspect
from typing import Callable, Dict

from mexd import errors
from mexd.losses import baselines
from mexd.losses import common
from mexd.losses import eed
from mexd.losses import erde
from mexd.losses import imta
from mexd.losses import mate
from mexd.losses import phuong_lampert

Method = common.Method

_REGISTRY: Dict[str, Callable[..., Method]] = {
    "ce": baselines.make_ce,
    "pl": phuong_lampert.make_pl,
    "pl_const": phuong_lampert.make_pl_const,
    "sdn": baselines.make_sdn,
    "byot": baselines.make_byot,
    "eed": eed.make_eed,
    "mate": mate.make_mate,
    "erde": erde.make_erde,
    "kd": erde.make_kd,
    "imta": imta.make_imta,
}


def method_names():
  """Sorted names of every registered method."""
  return sorted(_REGISTRY)


def get_method(name: str, **hparams) -> Method:
  """Builds the method `name` with its hyperparameters.

  Raises:
    InputError: unknown method name or hyperparameter (the message lists the
      valid ones), or an out-of-range hyperparameter.
  """
  if name not in _REGISTRY:
    raise errors.InputError(f"unknown method {name!r}; valid names: "
                            f"{', '.join(method_names())}")
  factory = _REGISTRY[name]
  valid = [p for p in inspect.signature(factory).parameters]
  unknown = sorted(set(hparams) - set(valid))
  if unknown:
    raise errors.InputError(f"unknown hyperparameter(s) {unknown} for method "
                            f"{name!r}; valid: {', '.join(valid) or 'none'}")
  return factory(**hparams)


def default_hparams(name: str) -> Dict[str, object]:
  """The keyword defaults of method `name`'s factory."""
  factory = _REGISTRY[name]
  return {k: p.default for k, p in inspect.signature(factory).parameters.items()
          if p.default is not inspect.Parameter.empty}


def default_config():
  """A ConfigDict {method name: {hyperparameter: default}} of every method."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict()
  for name in method_names():
    hp = ml_collections.ConfigDict()
    for k, v in default_hparams(name).items():
      hp[k] = v
    cfg[name] = hp
  return cfg
