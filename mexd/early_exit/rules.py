"""Shared-threshold exit rules on host arrays (NumPy): the pieces that
`calibrate` (thresholds from validation) and `certify` (thresholds with
guarantees) share.
"""

from typing import Any, Dict, NamedTuple

import numpy as np

from mexd import errors
from mexd.early_exit import policies


class Calibration(NamedTuple):
  """Thresholds chosen on validation and their validation metrics.

  Attributes:
    thresholds: [E] float32, last entry -inf.
    val_accuracy: accuracy of the rule on the validation set.
    val_avg_cost: mean cumulative cost of the exit taken, on validation.
    family: "shared" (one lambda) or "geometric" (MSDNet p).
    param: lambda or p.
    info: extras (e.g. LTT p-values).
  """
  thresholds: np.ndarray
  val_accuracy: float
  val_avg_cost: float
  family: str
  param: float
  info: Dict[str, Any]


def scores_np(logits, policy) -> np.ndarray:
  """[E, N, C] -> float32 scores [E, N] (NumPy), as `simulate` sees them."""
  return np.asarray(policies.scores(np.asarray(logits), policy), np.float32)


def prepare(logits, policy, exit_costs=None):
  """-> scores [E, N] f32, argmax [E, N], costs [E] f64 (NumPy)."""
  logits = np.asarray(logits)
  s = scores_np(logits, policy)
  costs = np.asarray(policies.default_costs(logits.shape[0])
                     if exit_costs is None else exit_costs, np.float64)
  if costs.shape != (logits.shape[0],):
    raise errors.InputError(f"exit_costs {costs.shape} must have E = "
                            f"{logits.shape[0]} entries")
  return s, np.argmax(logits, -1), costs


def exits(s: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
  """NumPy twin of `policies.exit_index`: [E, N], [E] -> [N]."""
  ok = s >= np.asarray(thresholds, np.float32)[:, None]
  ok[-1] = True
  return np.argmax(ok, axis=0)



def default_lambdas(policy: str, num_exits: int,
                    num_classes: int) -> np.ndarray:
  """Data-independent lambda grid for LTT, most conservative first."""
  policies.check_policy(policy)
  if policy == "entropy":  # -H from -1e-7 down to -log C
    grid = -np.logspace(-7, np.log10(np.log(num_classes)), 141)
  elif policy == "patience":
    grid = np.arange(num_exits, 0, -1, dtype=np.float64)
  else:  # max_prob, margin: 1 - 1e-7 down to 0
    grid = 1.0 - np.logspace(-7, 0, 141)
  return np.asarray(grid, np.float32)
