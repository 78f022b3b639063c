"""mexd: multi-exit image classifiers with self-distillation in JAX/Flax.

Public API (re-exports only; the logic lives in the submodules, imported on
first use so that `import mexd` stays cheap):

  mexd.get_model(name, num_classes=...)  -> a Flax module returning [E, B, C]
  mexd.get_method(name, **hparams)       -> a `Method` (pure loss + state rule)
  mexd.load_config(name, arg)            -> an installed recipe's ConfigDict
  mexd.train_and_evaluate(config, workdir) -> per-exit results of a run

Subpackages: mexd.models, mexd.losses, mexd.data, mexd.early_exit,
mexd.configs.

Examples:
  >>> import mexd
  >>> config = mexd.load_config("digits", "method=ce")
  >>> model = mexd.get_model(config.model.name, num_classes=10)
  >>> import jax, jax.numpy as jnp
  >>> images = jnp.zeros((2, 8, 8, 1))
  >>> variables = model.init(jax.random.key(0), images)
  >>> logits, aux = model.apply(variables, images)
  >>> logits.shape  # [exits, batch, classes]
  (3, 2, 10)
  >>> mexd.get_method("pl").needs_teacher
  False
"""

import importlib

__version__ = "0.1.0"

# name -> (module, attribute or None for the module itself)
_EXPORTS = {
    "get_model": ("mexd.models", "get_model"),
    "model_names": ("mexd.models", "model_names"),
    "get_method": ("mexd.losses", "get_method"),
    "method_names": ("mexd.losses", "method_names"),
    "load_config": ("mexd.configs", "load"),
    "recipe_names": ("mexd.configs", "names"),
    "train_and_evaluate": ("mexd.train", "train_and_evaluate"),
    "configs": ("mexd.configs", None),
    "data": ("mexd.data", None),
    "early_exit": ("mexd.early_exit", None),
    "losses": ("mexd.losses", None),
    "models": ("mexd.models", None),
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'mexd' has no attribute {name!r}")
  module, attr = _EXPORTS[name]
  value = importlib.import_module(module)
  return value if attr is None else getattr(value, attr)


def __dir__():
  return __all__
