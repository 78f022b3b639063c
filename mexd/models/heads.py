"""Exit heads: map a stage's hidden state to (logits [B, C], features [B, D]).

Every head returns float logits and a pooled feature vector of a fixed width D
(the same for all exits of a model) for feature distillation (BYOT, EED).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Array = Any


class PoolDenseHead(nn.Module):
  """Global average pool -> Dense(D) -> ReLU -> Dense(C).

  Attributes:
    num_classes: C.
    features: D, the width of the returned feature vector.
    dtype: compute dtype (parameters stay float32).
  """

  num_classes: int
  features: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: Array, *, train: bool = False):
    """h: [B, H, W, K] -> (logits [B, C], features [B, D])."""
    del train
    x = jnp.mean(h, axis=(1, 2))  # [B, K]
    f = nn.relu(nn.Dense(self.features, dtype=self.dtype, name="fc")(x))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="out")(f)
    return logits, f
