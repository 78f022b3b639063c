"""mexd: multi-exit image classifiers with self-distillation in JAX/Flax.

Public API (re-exports only; the logic lives in the submodules):

  mexd.models.get_model(config.model)   -> a Flax module returning [E, B, C]
  mexd.losses.get_method(config.method) -> a `Method` (pure loss + state rule)
  mexd.train.train_and_evaluate(config, workdir)
"""

__version__ = "0.1.0"
