"""The statistics of the Learn-then-Test guarantee (host-side NumPy).

`calibrate.calibrate_accuracy_drop` and `certify` certify a threshold when
the p-value of "risk > eps" (`bounds.pvalues`) is below delta (Angelopoulos
et al. 2021; docs/early_exit.md §2.3-2.4). `ltt_min_n` and
`ltt_min_eps` say how many validation images a guarantee needs, and
`ltt_note` explains a result that certifies no early exit.
"""

import math
from typing import Optional

import numpy as np

from mexd import errors
from mexd.early_exit import bounds
# The scalar bounds, importable from here as well.
from mexd.early_exit.bounds import binom_cdf, hb_pvalue  # pylint: disable=unused-import


class CertificationWarning(UserWarning):
  """Learn-then-Test certified no early exit (`info["note"]` says why)."""


def _p0(n: int, eps: float, delta: float, bound: str,
        risk: str = "consistency") -> float:
  """The smallest p-value `bound` gives n examples of a rule that loses
  nothing: zero disagreements ("consistency"), or every early exit right
  exactly where the final exit is ("accuracy_drop": `certify` maps that
  drop of 0 to losses 1/2 against alpha = (1 + eps) / 2)."""
  bound = bounds.resolve(bound, risk == "consistency")
  if risk == "accuracy_drop":
    return float(bounds.pvalues(np.full((1, n), 0.5), (1.0 + eps) / 2.0,
                                bound, delta)[0])
  return float(bounds.pvalues(np.zeros((1, n)), eps, bound, delta)[0])


def ltt_min_n(eps: float, delta: float,
              bound: str = bounds.DEFAULT_BOUND,
              risk: str = "consistency") -> int:
  """Fewest validation examples with which LTT can certify any early exit.

  Every bound's p-value grows with the losses, so its smallest value,
  whatever the data, is at zero losses, p0(n). Fixed-sequence testing
  rejects a lambda only if its p-value is <= delta, hence nothing can be
  rejected (every example stays at the final exit) unless p0(n) <= delta.
  Hoeffding and the exact binomial give p0(n) = (1 - eps)^n, so

    n >= n_min = ceil(log(delta) / log(1 - eps)),

  e.g. eps = 0.01, delta = 0.1: n_min = ceil(2.3026 / 0.01005) = 230; the
  Bentkus term e (1 - eps)^n is larger, so hoeffding_bentkus has the same
  n_min. The variance-adaptive bounds pay for adaptivity at zero losses:
  empirical Bernstein p0 = 2 exp(-3 (n - 1) eps / 7), and wsr's first bets
  are small (its variance estimate starts at 1/4); their n_min is found by
  search (701 and 310 at eps = 0.01, delta = 0.1). Necessary, not
  sufficient: at n_min only a lambda with no loss at all passes.
  risk="accuracy_drop" (losses 1/2 at zero drop, `_p0`): the variance-
  adaptive bounds need far fewer examples than Hoeffding's (eps = 0.01,
  delta = 0.1: wsr 318, empirical_bernstein 1,400, hoeffding_bentkus
  32,358, hoeffding 46,050).

  Returns:
    n_min, checked against the bound itself (no rounding slip).
  """
  if not (0 < eps < 1 and 0 < delta < 1):
    raise errors.InputError(f"eps and delta must lie in (0, 1), got eps={eps}, "
                            f"delta={delta}")
  bounds.check_bound(bound)
  lo = max(1, math.ceil(math.log(delta) / math.log1p(-eps)) - 1)
  while lo > 1 and _p0(lo, eps, delta, bound, risk) <= delta:
    lo //= 2  # Rounding slip of the closed form: start below it.
  hi = lo + 1
  while _p0(hi, eps, delta, bound, risk) > delta:
    lo, hi = hi, 2 * hi
  while hi - lo > 1:  # p0 falls with n: p0(lo) > delta >= p0(hi).
    mid = (lo + hi) // 2
    if _p0(mid, eps, delta, bound, risk) <= delta:
      hi = mid
    else:
      lo = mid
  return hi


def ltt_min_eps(n: int, delta: float,
                bound: str = bounds.DEFAULT_BOUND,
                risk: str = "consistency") -> float:
  """Smallest eps at which n examples can certify an exit.

  Hoeffding, binomial and hoeffding_bentkus with the consistency risk:
  (1 - eps)^n <= delta solved for eps, 1 - delta^(1/n); otherwise found by
  bisection on p0 (1.0 if not even eps -> 1 certifies).
  """
  closed = -math.expm1(math.log(delta) / n)
  bound = bounds.resolve(bound, risk == "consistency")
  if risk == "consistency" and bound in ("hoeffding", "hoeffding_bentkus",
                                         "binomial"):
    return closed
  top = 1.0 - 1e-9
  if _p0(n, top, delta, bound, risk) > delta:
    return 1.0
  lo, hi = 0.0, top
  for _ in range(60):
    mid = (lo + hi) / 2
    if _p0(n, mid, delta, bound, risk) <= delta:
      hi = mid
    else:
      lo = mid
  return hi


def _round_up(x: float, digits: int = 3) -> float:
  """x rounded up to `digits` significant digits (0.012711 -> 0.0128)."""
  scale = 10.0 ** (digits - 1 - math.floor(math.log10(x)))
  return math.ceil(x * scale - 1e-9) / scale


def ltt_note(n: int, eps: float, delta: float, p_values: np.ndarray,
             bound: str = bounds.DEFAULT_BOUND,
             risk: str = "consistency") -> Optional[str]:
  """Why LTT certified no early exit (None if it certified one).

  Args:
    n: validation examples; eps, delta, bound: as in
      `calibrate_accuracy_drop`.
    p_values: [L] p-values of the tested lambdas, most conservative first.
    risk: "consistency" or "accuracy_drop".
  """
  if p_values.size and p_values[0] <= delta:
    return None
  p0 = _p0(n, eps, delta, bound, risk)
  if p0 > delta:
    what = ("zero disagreements" if risk == "consistency" else
            "an accuracy drop of zero")
    return (f"no early exit can be certified: n = {n} validation examples "
            f"are too few for eps = {eps:g}, delta = {delta:g} (the smallest "
            f"p-value the {bound} bound can give, at {what}, is "
            f"{p0:.3g} > delta); it needs n >= "
            f"{ltt_min_n(eps, delta, bound, risk)} at this eps, or eps >= "
            f"{_round_up(ltt_min_eps(n, delta, bound, risk)):g} (or a larger "
            "delta) at this n; every example stays at the final exit")
  what = ("disagree with the final exit" if risk == "consistency" else
          "are wrong where the final exit is right")
  return (f"no early exit certified at eps = {eps:g}, delta = {delta:g}: the "
          f"most conservative lambda's p-value is {p_values[0]:.3g} > delta "
          f"(the early exits {what} too often on validation); every example "
          "stays at the final exit")
