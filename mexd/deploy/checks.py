"""Boundary checks of images and thresholds, shared by every predictor.

The exported runtime (`mexd.deploy.runtime`), the server's request decoder
and the in-process `mexd.early_exit.StagedPredictor` check what they are
given here, so the same input gets the same answer everywhere. Every failure
is an `InputError` that names the problem and the fix. NumPy and jax only
(no mexd model or data code: the runtime imports this).

Images are checked for rank, shape (against the trained (H, W, C_in), when
known), dtype, NaN/inf and, for float images with known mean/std, the range
of normalised pixels. A jax.Array's values are not read back: that would
cost a host sync per call (on a GPU as much as a stage).
"""

from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import numpy as np

from mexd import errors


def thresholds(values, num_exits: int) -> np.ndarray:
  """values -> float32 [E]; numbers or "inf" / "-inf" strings (JSON).

  Raises:
    InputError: values that are not numbers, not of shape [E], or NaN.
  """
  try:
    t = np.asarray(values, np.float32)
  except (TypeError, ValueError):
    raise errors.InputError(f"thresholds must be numbers (or -inf / inf), got "
                            f"{values!r}") from None
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


def policy_and_thresholds(manifest: Dict[str, Any], policy: Optional[str],
                          values) -> Tuple[str, np.ndarray]:
  """(policy name, float32 [E] thresholds) of an export's manifest, or the
  caller's policy and thresholds.

  Raises:
    InputError: an unknown policy, another policy without thresholds, or bad
      thresholds (`thresholds`).
  """
  names = list(manifest["policy_names"])
  saved = manifest["policy"]
  if policy is not None and policy not in names:
    raise errors.InputError(f"policy {policy!r}: expected one of {names}")
  if policy is not None and policy != saved["name"] and values is None:
    raise errors.InputError(
        f"the export's thresholds are for {saved['name']!r}; pass "
        f"thresholds= for policy {policy!r}")
  t = thresholds(saved["thresholds"] if values is None else values,
                 int(manifest["num_exits"]))
  return policy or saved["name"], t


def buckets(values: Optional[Sequence[int]]):
  """Sorted distinct positive bucket sizes, or None (the default ones)."""
  if values is None:
    return None
  out = sorted(set(int(b) for b in values))
  if not out or out[0] < 1:
    raise errors.InputError(f"buckets must be positive sizes, got {values}")
  return out


def normalised_range(mean, std) -> Tuple[float, float]:
  """(lowest, highest) value of a normalised pixel over every channel."""
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  return float(np.min(-mean / std)), float(np.max((1.0 - mean) / std))


def images(x, image_shape: Optional[Tuple[int, ...]], mean=None, std=None, *,
           one: bool = False):
  """Checks images at the boundary and returns them (not normalised).

  Args:
    x: [N, H, W, C_in] uint8 pixels or normalised floats; with `one`, a
      single image [H, W, C_in] or [1, H, W, C_in].
    image_shape: (H, W, C_in) the model was trained on, or None (any).
    mean, std: [C_in] (or scalar) normalisation statistics, or None: float
      images are then not range-checked.
    one: for `predict_one`: a batch of more than one image raises.

  Returns:
    [N, H, W, C_in] ([1, ...] with `one`): a NumPy array, or the jax.Array
    given.

  Raises:
    InputError: wrong rank or shape, a batch given as one image, a dtype
      other than uint8 or floating, NaN/inf, or floats outside the
      normalised range (raw pixels passed as floats).
  """
  x = x if isinstance(x, jax.Array) else np.asarray(x)
  want = "[H, W, C_in]" if image_shape is None else str(tuple(image_shape))
  if one and x.ndim == 4 and x.shape[0] != 1:
    raise errors.InputError(
        f"predict_one answers for one image {want}, got a batch of "
        f"{x.shape[0]} (shape {tuple(x.shape)}); use pred(images) or "
        "pred.run(images) for a batch")
  if one and x.ndim == 3:
    x = x[None]
  if x.ndim != 4:
    what = "one image" if one else "images [N, H, W, C_in]"
    hint = "; for one image use predict_one" if x.ndim == 3 else ""
    raise errors.InputError(f"expected {what} of shape {want}, got an array "
                            f"of shape {tuple(x.shape)}{hint}")
  if image_shape is not None and tuple(x.shape[1:]) != tuple(image_shape):
    raise errors.InputError(
        f"images of shape {tuple(x.shape[1:])} given to a model trained on "
        f"{tuple(image_shape)} images (H, W, C_in); resize them or use a "
        "model trained on this size")
  if x.dtype == np.uint8:
    return x
  if not np.issubdtype(x.dtype, np.floating):
    raise errors.InputError(
        f"images of dtype {x.dtype}: give raw uint8 pixels (0..255) or "
        "float images normalised as (x / 255 - mean) / std")
  if isinstance(x, jax.Array) or not x.size:
    return x
  bad = ~np.isfinite(x)
  if bad.any():
    first = int(np.argmax(bad.reshape(x.shape[0], -1).any(-1)))
    raise errors.InputError(
        f"images hold {int(bad.sum())} NaN or infinite values (the first in "
        f"image {first}); the model's answer for them is meaningless: fix or "
        "drop them")
  if mean is not None:
    lo, hi = normalised_range(mean, std)
    got = float(np.min(x)), float(np.max(x))
    tol = 0.01 * (hi - lo)  # float rounding, bfloat16 inputs
    if got[0] < lo - tol or got[1] > hi + tol:
      raise errors.InputError(
          f"float images range over [{got[0]:.4g}, {got[1]:.4g}], outside "
          f"[{lo:.4g}, {hi:.4g}], the range of pixels normalised with this "
          "model's mean/std (raw pixels as floats?): pass the uint8 pixels "
          "or normalise as (x / 255 - mean) / std")
  return x
