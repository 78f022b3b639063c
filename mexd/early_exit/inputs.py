"""Checks of what a staged predictor is given: images, thresholds, mean/std.

Every check raises an `InputError` that names the fix. Images are checked at
the boundary: rank, shape (against the trained `image_shape`, if known),
dtype (uint8 needs mean/std, and is then normalised as in training), NaN/inf
pixels and the normalised range of host (NumPy) float images; a jax.Array's
values are not read back (that would add a host sync).
"""

from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mexd import errors
from mexd.data import augment

Array = Any

# uint8 [N, H, W, C] -> (x / 255 - mean) / std float32, as in training.
_normalize = jax.jit(augment.normalize)


def check_thresholds(thresholds, num_exits: int) -> np.ndarray:
  """thresholds -> float32 [E]; raises on another shape or a NaN."""
  try:
    t = np.asarray(thresholds, np.float32)
  except (TypeError, ValueError):
    raise errors.InputError(f"thresholds must be numbers (or -inf / inf), got "
                            f"{thresholds!r}") from None
  if t.shape != (num_exits,):
    raise errors.InputError(
        f"thresholds of shape {t.shape} given to a model with "
        f"E = {num_exits} exits: pass one entry per exit, shape "
        f"({num_exits},) (the last is taken as -inf)")
  if np.isnan(t).any():
    raise errors.InputError(
        f"thresholds {t.tolist()} hold NaN at exit(s) "
        f"{np.flatnonzero(np.isnan(t)).tolist()}; a threshold "
        "is a number, inf (nobody exits there) or -inf")
  return t


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


def normalised_range(mean, std):
  """(lowest, highest) value of a normalised pixel over every channel."""
  return np.min((0.0 - mean) / std), np.max((1.0 - mean) / std)


def check_images(images: Array, *, image_shape: Optional[Tuple[int, ...]],
                 mean: Optional[np.ndarray], std: Optional[np.ndarray],
                 one: bool = False) -> Array:
  """Checks images at the boundary; normalises uint8 ones.

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
  x = images if isinstance(images, jax.Array) else np.asarray(images)
  want = ("[H, W, C_in]" if image_shape is None
          else str(image_shape))
  if one and x.ndim == 4 and x.shape[0] != 1:
    raise errors.InputError(
        f"predict_one answers for one image {want}, got a "
        f"batch of {x.shape[0]} (shape {x.shape}); use "
        "pred(images) or pred.run(images) for a batch")
  if one and x.ndim == 3:
    x = x[None]
  if x.ndim != 4:
    what = "one image" if one else "images [N, H, W, C_in]"
    hint = ("; for one image use predict_one" if x.ndim == 3 else "")
    raise errors.InputError(
        f"expected {what} of shape {want}, got an array of "
        f"shape {x.shape}{hint}")
  if image_shape is not None and x.shape[1:] != image_shape:
    raise errors.InputError(
        f"images of shape {x.shape[1:]} given to a model "
        f"trained on {image_shape} images (H, W, C_in); "
        "resize them or use a model trained on this size")
  if x.dtype == np.uint8:
    if mean is None:
      raise errors.InputError(
          "uint8 images (raw pixels) given to a StagedPredictor without "
          "mean/std: pass mean= and std= (exit_policy.json's, or use "
          "StagedPredictor.from_exit_policy) so that it normalises them, "
          "or give float images normalised as (x / 255 - mean) / std")
    return _normalize(x, mean, std)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise errors.InputError(
        f"images of dtype {x.dtype}: give raw uint8 pixels "
        "(0..255) or normalised float images")
  if isinstance(x, jax.Array):
    # On the device already: reading its values back would cost a host
    # sync per call (on a GPU as much as a stage), so only shape and dtype
    # are checked.
    return x
  bad = ~np.isfinite(x)
  if bad.any():
    first = int(np.argmax(bad.reshape(x.shape[0], -1).any(-1)))
    raise errors.InputError(
        f"images hold {int(bad.sum())} NaN or infinite "
        f"values (the first in image {first}); the model's "
        "answer for them is meaningless: fix or drop them")
  if mean is not None and x.size:
    lo, hi = (float(v) for v in normalised_range(mean, std))
    got = float(np.min(x)), float(np.max(x))
    tol = 0.01 * (hi - lo)  # float rounding, bfloat16 inputs
    if got[0] < lo - tol or got[1] > hi + tol:
      raise errors.InputError(
          f"float images range over [{got[0]:.4g}, {got[1]:.4g}], outside "
          f"[{lo:.4g}, {hi:.4g}], the range of pixels normalised with this "
          "predictor's mean/std (raw pixels as floats?): pass the uint8 "
          "pixels (the predictor normalises them) or normalise as "
          "(x / 255 - mean) / std")
  return x
