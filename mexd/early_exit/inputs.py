"""Checks of what a staged predictor is given: images, thresholds, mean/std.

Every check raises an `InputError` that names the fix. Images and thresholds
get the exported runtime's checks (`mexd.deploy.checks`: rank, shape, dtype,
NaN/inf, the normalised range of host float images); here uint8 images also
need mean/std, and are then normalised as in training.
"""

from typing import Any, Optional, Tuple

import jax
import numpy as np

from mexd import errors
from mexd.data import augment
from mexd.deploy import checks

Array = Any

# uint8 [N, H, W, C] -> (x / 255 - mean) / std float32, as in training.
_normalize = jax.jit(augment.normalize)


def check_stats(mean, std, image_shape):
  """(mean [C], std [C]) float32, or (None, None); raises if unusable."""
  if mean is None and std is None:
    return None, None
  if mean is None or std is None:
    raise errors.InputError("pass both mean and std (exit_policy.json's) or "
                            "neither")
  mean = np.asarray(mean, np.float32).reshape(-1)
  std = np.asarray(std, np.float32).reshape(-1)
  channels = None if image_shape is None else image_shape[-1]
  for name, v in (("mean", mean), ("std", std)):
    if v.size not in (1, channels or v.size) or not np.all(np.isfinite(v)):
      raise errors.InputError(
          f"{name} {v.tolist()} must be finite, one value per "
          f"channel (C_in = {channels}) or one in all")
  if np.any(std <= 0):
    raise errors.InputError(f"std {std.tolist()} must be > 0")
  return mean, std


def check_images(images: Array, *, image_shape: Optional[Tuple[int, ...]],
                 mean: Optional[np.ndarray], std: Optional[np.ndarray],
                 one: bool = False) -> Array:
  """Checks images at the boundary (`mexd.deploy.checks.images`, the same
  checks as the exported runtime's); normalises uint8 ones.

  Args:
    images: [N, H, W, C_in] uint8 (with mean/std) or normalised floats; with
      `one`, a single image [H, W, C_in] or [1, H, W, C_in].
    image_shape: (H, W, C_in) the model was trained on, or None.
    mean, std: [C_in] normalisation statistics (`check_stats`), or None.
    one: for `predict_one`: a batch of more than one image raises.

  Returns:
    [N, H, W, C_in] float images ([1, ...] with `one`).

  Raises:
    InputError: wrong rank or shape, a batch given as one image, uint8
      without mean/std, another non-float dtype, NaN/inf, or floats outside
      the normalised range (raw pixels passed as floats).
  """
  x = checks.images(images, image_shape, mean, std, one=one)
  if x.dtype != np.uint8:
    return x
  if mean is None:
    raise errors.InputError(
        "uint8 images (raw pixels) given to a StagedPredictor without "
        "mean/std: pass mean= and std= (exit_policy.json's, or use "
        "StagedPredictor.from_exit_policy) so that it normalises them, "
        "or give float images normalised as (x / 255 - mean) / std")
  return _normalize(x, mean, std)
