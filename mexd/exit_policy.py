"""The two files `mexd.evaluate` writes: exit_policy.json and eval.json.

exit_policy.json is the deployed exit rule (policy, thresholds, per-exit
costs, normalisation statistics, image shape) that a deployment loads beside
the checkpoint (`load_exit_policy`). Both files are strict JSON (no
`Infinity`/`NaN`, which most JSON readers reject): a threshold of -inf or
+inf is written as the string "-inf" or "inf" (docs/early_exit.md);
`load_exit_policy` and `load_eval` read them back as floats.
"""

from typing import Any, Dict

import numpy as np

from mexd import errors
from mexd import paths

_NONFINITE = {"inf": float("inf"), "-inf": float("-inf")}


def encode_thresholds(thresholds) -> list:
  """Thresholds as a JSON list: -inf / inf become the strings "-inf" / "inf".

  Raises:
    ValueError: a threshold is NaN (no exit rule has one).
  """
  out = []
  for t in np.asarray(thresholds, np.float64).tolist():
    if np.isnan(t):
      raise ValueError(f"NaN threshold in {thresholds}")
    out.append(t if np.isfinite(t) else ("inf" if t > 0 else "-inf"))
  return out


def decode_thresholds(values) -> list:
  """The floats of `encode_thresholds`' list ("-inf" / "inf" read back)."""
  out = []
  for v in values:
    if isinstance(v, str):
      if v not in _NONFINITE:
        raise errors.InputError(f"invalid threshold {v!r}: expected a number, "
                                "\"-inf\" or \"inf\"")
      v = _NONFINITE[v]
    out.append(float(v))
  return out


def _map_thresholds(obj, fn):
  """`obj` with fn applied to the value of every "thresholds" key."""
  if isinstance(obj, dict):
    return {k: fn(v) if k == "thresholds" else _map_thresholds(v, fn)
            for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_map_thresholds(v, fn) for v in obj]
  return obj


def write_strict_json(path, obj) -> None:
  """Writes obj as strict JSON; a non-finite float other than a threshold
  raises (allow_nan=False) instead of writing `Infinity`/`NaN`."""
  paths.write_json(path, _map_thresholds(obj, encode_thresholds), indent=2,
                   allow_nan=False)


def load_exit_policy(path) -> Dict[str, Any]:
  """exit_policy.json (a file, or the workdir holding it), thresholds as
  float32 [E] (so they can go to StagedPredictor / simulate)."""
  p = paths.path(path)
  if p.is_dir():
    p = p / "exit_policy.json"
  policy = paths.read_json(p)
  policy["thresholds"] = np.asarray(decode_thresholds(policy["thresholds"]),
                                    np.float32)
  return policy


def load_eval(path) -> Dict[str, Any]:
  """eval.json (a file, or the workdir whose eval/ holds it), every
  "thresholds" list read back to floats."""
  p = paths.path(path)
  if p.is_dir():
    p = p / "eval" / "eval.json"
  return _map_thresholds(paths.read_json(p), decode_thresholds)
