"""Model registry: `get_model(name, **kwargs)` builds any multi-exit model.

Every model is a `mexd.models.base.MultiExitModel`: `apply(vars, images,
train=...)` returns `(logits [E, B, C], {"features": [E, B, D]})`, and
`apply(vars, k, h, train=..., method="stage")` runs stage k alone.
"""

import functools
from typing import Any, Callable, Dict

import jax.numpy as jnp

from mexd.models import base
from mexd.models import small_cnn

MultiExitModel = base.MultiExitModel

# name -> constructor(num_classes=..., dtype=..., **kwargs). One line a model.
_REGISTRY: Dict[str, Callable[..., base.MultiExitModel]] = {
    "small_cnn": small_cnn.SmallCNN,
    "digits_cnn": functools.partial(
        small_cnn.SmallCNN, widths=(32, 64, 128), strides=(1, 2, 2)),
    "fashion_cnn": functools.partial(
        small_cnn.SmallCNN, widths=(32, 64, 128, 256), strides=(1, 2, 2, 2),
        head_features=128),
}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
           "float16": jnp.float16}


def register(name: str, constructor: Callable[..., base.MultiExitModel]):
  """Adds a model constructor under `name` (raises if the name is taken)."""
  if name in _REGISTRY:
    raise ValueError(f"model {name!r} is already registered")
  _REGISTRY[name] = constructor


def model_names():
  """Sorted names of every registered model."""
  return sorted(_REGISTRY)


def get_model(name: str, *, num_classes: int, dtype: Any = "float32",
              **kwargs) -> base.MultiExitModel:
  """Builds the registered model `name`.

  Args:
    name: a key of the registry (see `model_names()`).
    num_classes: C, the number of classes of every exit.
    dtype: compute dtype, "float32" or "bfloat16" (parameters stay float32).
    **kwargs: architecture options of that model.

  Raises:
    ValueError: unknown name or dtype, listing the valid ones.
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; valid names: "
                     f"{', '.join(model_names())}")
  if isinstance(dtype, str):
    if dtype not in _DTYPES:
      raise ValueError(f"unknown dtype {dtype!r}; valid: "
                       f"{', '.join(sorted(_DTYPES))}")
    dtype = _DTYPES[dtype]
  return _REGISTRY[name](num_classes=num_classes, dtype=dtype, **kwargs)
