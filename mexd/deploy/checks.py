"""Boundary checks of the exported runtime: images, thresholds, buckets.

Every failure is an `InputError` that names the problem and the fix. NumPy
and jax only (no mexd model or data code).
"""

from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import numpy as np

from mexd import errors


def policy_and_thresholds(manifest: Dict[str, Any], policy: Optional[str],
                          thresholds) -> Tuple[str, np.ndarray]:
  """(policy name, float32 [E] thresholds) of the manifest or the caller's.

  Raises:
    InputError: an unknown policy, another policy without thresholds,
      thresholds not of shape [E] or NaN.
  """
  names = list(manifest["policy_names"])
  saved = manifest["policy"]
  if policy is not None and policy not in names:
    raise errors.InputError(f"policy {policy!r}: expected one of {names}")
  if policy is not None and policy != saved["name"] and thresholds is None:
    raise errors.InputError(
        f"the export's thresholds are for {saved['name']!r}; pass "
        f"thresholds= for policy {policy!r}")
  values = saved["thresholds"] if thresholds is None else thresholds
  e = int(manifest["num_exits"])
  try:
    t = np.asarray([float(v) for v in values], np.float32)
  except (TypeError, ValueError):
    raise errors.InputError(f"thresholds must be numbers (or \"-inf\" / "
                            f"\"inf\"), got {values!r}") from None
  if t.shape != (e,) or np.isnan(t).any():
    raise errors.InputError(
        f"thresholds {t.tolist()}: expected {e} numbers (one per exit, the "
        "last taken as -inf), none NaN")
  return policy or saved["name"], t


def buckets(values: Optional[Sequence[int]]):
  """Sorted distinct positive bucket sizes, or None (the default ones)."""
  if values is None:
    return None
  out = sorted(set(int(b) for b in values))
  if not out or out[0] < 1:
    raise errors.InputError(f"buckets must be positive sizes, got {values}")
  return out


def one_image(image, image_shape: Tuple[int, ...]):
  """[H, W, C] or [1, H, W, C] -> [1, H, W, C]; a batch raises."""
  x = image if isinstance(image, jax.Array) else np.asarray(image)
  if x.ndim == 3:
    x = x[None]
  if x.ndim == 4 and x.shape[0] != 1:
    raise errors.InputError(
        f"predict_one answers for one image {image_shape}, got a batch of "
        f"{x.shape[0]}; use predict(images) for a batch")
  return x


def images(x, image_shape: Tuple[int, ...], manifest: Dict[str, Any]):
  """Checks a batch [N, H, W, C]: rank, shape, dtype; for host floats also
  NaN/inf and the normalised range. Returns it (as a NumPy array unless it
  is a jax.Array)."""
  x = x if isinstance(x, jax.Array) else np.asarray(x)
  if x.ndim != 4 or tuple(x.shape[1:]) != tuple(image_shape):
    hint = "; for one image use predict_one" if x.ndim == 3 else ""
    raise errors.InputError(
        f"expected images [N, {', '.join(map(str, image_shape))}] (N, H, "
        f"W, C), got shape {tuple(x.shape)}{hint}")
  if x.dtype == np.uint8:
    return x
  if not np.issubdtype(x.dtype, np.floating):
    raise errors.InputError(
        f"images of dtype {x.dtype}: give raw uint8 pixels (0..255) or "
        "float images normalised as (x / 255 - mean) / std")
  if isinstance(x, jax.Array) or not x.size:
    return x  # On the device: not read back (a host sync per call).
  if not np.isfinite(x).all():
    raise errors.InputError(f"images hold {int((~np.isfinite(x)).sum())} "
                            "NaN or infinite values: fix or drop them")
  mean = np.asarray(manifest["mean"], np.float32)
  std = np.asarray(manifest["std"], np.float32)
  lo, hi = float(np.min(-mean / std)), float(np.max((1 - mean) / std))
  tol = 0.01 * (hi - lo)
  if x.min() < lo - tol or x.max() > hi + tol:
    raise errors.InputError(
        f"float images range over [{x.min():.4g}, {x.max():.4g}], outside "
        f"[{lo:.4g}, {hi:.4g}] of pixels normalised with the export's "
        "mean/std (raw pixels as floats?): give uint8 pixels or normalise "
        "as (x / 255 - mean) / std")
  return x
