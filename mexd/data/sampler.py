"""The seeded global batch sampler shared by the in-memory and streamed paths.

NumPy only: grain's worker processes unpickle it without importing JAX.
"""

import numpy as np

from mexd import errors


class EpochSampler:
  """Shuffled, drop-last batches of `batch_size` indices into `num_examples`."""

  def __init__(self, num_examples: int, batch_size: int, seed: int):
    if batch_size > num_examples:
      raise errors.InputError(
          f"batch size {batch_size} exceeds the {num_examples} "
          "examples of the split")
    self.num_examples = num_examples
    self.batch_size = batch_size
    self.seed = seed
    self.steps_per_epoch = num_examples // batch_size
    self._cache = (None, None)

  def _perm(self, epoch: int) -> np.ndarray:
    if self._cache[0] != epoch:
      rng = np.random.default_rng([self.seed, epoch])
      self._cache = (epoch, rng.permutation(self.num_examples))
    return self._cache[1]

  def indices(self, step: int) -> np.ndarray:
    """[batch_size] indices of the global batch of `step` (0-based)."""
    epoch, i = divmod(step, self.steps_per_epoch)
    return self._perm(epoch)[i * self.batch_size:(i + 1) * self.batch_size]
