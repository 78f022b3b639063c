"""The statistics of the Learn-then-Test guarantee (host-side NumPy).

`calibrate.calibrate_accuracy_drop` certifies a threshold when the p-value
of "risk > eps" is below delta, with the Hoeffding-Bentkus bound
(`hb_pvalue`, Angelopoulos et al. 2021; docs/methods.md §6). `ltt_min_n` and
`ltt_min_eps` say how many validation images a guarantee needs, and
`ltt_note` explains a result that certifies no early exit.
"""

import math
from typing import Optional

import numpy as np

from mexd import errors

def binom_cdf(k: int, n: int, p: float) -> float:
  """P(Binomial(n, p) <= k), by the log-pmf recursion (no SciPy)."""
  if k < 0:
    return 0.0
  if k >= n:
    return 1.0
  i = np.arange(k)
  logpmf = n * np.log1p(-p) + np.concatenate([[0.0], np.cumsum(
      np.log(n - i) - np.log(i + 1) + np.log(p) - np.log1p(-p))])
  m = logpmf.max()
  return float(min(1.0, np.exp(m) * np.exp(logpmf - m).sum()))


def hb_pvalue(risk_hat: float, n: int, alpha: float,
              bound: str = "hoeffding_bentkus") -> float:
  """p-value of H0: risk > alpha for the mean of n i.i.d. losses in [0, 1].

  hoeffding: exp(-n h(min(r, alpha), alpha)) with
    h(a, b) = a log(a/b) + (1-a) log((1-a)/(1-b))   (Hoeffding 1963, Thm 1).
  hoeffding_bentkus: min(hoeffding, e * P(Binom(n, alpha) <= ceil(n r)))
    (Bates et al. 2021, Angelopoulos et al. 2021).
  """
  if not 0.0 < alpha < 1.0:
    raise errors.InputError(f"alpha must lie in (0, 1), got {alpha}")
  a = min(float(risk_hat), alpha)
  h = (a * np.log(a / alpha) if a > 0 else 0.0) + (1 - a) * np.log(
      (1 - a) / (1 - alpha))
  p = float(np.exp(-n * h))
  if bound == "hoeffding":
    return min(1.0, p)
  if bound != "hoeffding_bentkus":
    raise errors.InputError(f"unknown bound {bound!r}; valid: hoeffding, "
                            "hoeffding_bentkus")
  k = int(np.ceil(n * float(risk_hat) - 1e-9))
  return min(1.0, p, float(np.e * binom_cdf(k, n, alpha)))


class CertificationWarning(UserWarning):
  """Learn-then-Test certified no early exit (`info["note"]` says why)."""


def ltt_min_n(eps: float, delta: float,
              bound: str = "hoeffding_bentkus") -> int:
  """Fewest validation examples with which LTT can certify any early exit.

  `hb_pvalue(r, n, eps)` grows with the empirical risk r, so its smallest
  value, whatever the data, is at r = 0: Hoeffding gives
  exp(-n log(1 / (1 - eps))) = (1 - eps)^n and Bentkus e (1 - eps)^n
  (larger), so both bounds give p_min(n) = (1 - eps)^n. Fixed-sequence
  testing rejects a lambda only if its p-value is <= delta, hence nothing can
  be rejected (every example stays at the final exit) unless
  (1 - eps)^n <= delta, i.e.

    n >= n_min = ceil(log(delta) / log(1 - eps)),

  and at a given n unless eps >= `ltt_min_eps(n, delta)` = 1 - delta^(1/n).
  Both are necessary, not sufficient: at n_min only a lambda with no
  disagreement at all on validation passes. E.g. eps = 0.01, delta = 0.1:
  n_min = ceil(2.3026 / 0.01005) = 230.

  Returns:
    n_min, checked against `hb_pvalue` itself (no rounding slip).
  """
  if not (0 < eps < 1 and 0 < delta < 1):
    raise errors.InputError(f"eps and delta must lie in (0, 1), got eps={eps}, "
                            f"delta={delta}")
  n = max(1, math.ceil(math.log(delta) / math.log1p(-eps)))
  while n > 1 and hb_pvalue(0.0, n - 1, eps, bound) <= delta:
    n -= 1
  while hb_pvalue(0.0, n, eps, bound) > delta:
    n += 1
  return n


def ltt_min_eps(n: int, delta: float) -> float:
  """Smallest eps at which n examples can certify an exit: 1 - delta^(1/n).

  See `ltt_min_n`; (1 - eps)^n <= delta solved for eps.
  """
  return -math.expm1(math.log(delta) / n)


def _round_up(x: float, digits: int = 3) -> float:
  """x rounded up to `digits` significant digits (0.012711 -> 0.0128)."""
  scale = 10.0 ** (digits - 1 - math.floor(math.log10(x)))
  return math.ceil(x * scale - 1e-9) / scale


def ltt_note(n: int, eps: float, delta: float, p_values: np.ndarray,
             bound: str = "hoeffding_bentkus") -> Optional[str]:
  """Why LTT certified no early exit (None if it certified one).

  Args:
    n: validation examples; eps, delta, bound: as in
      `calibrate_accuracy_drop`.
    p_values: [L] p-values of the tested lambdas, most conservative first.
  """
  if p_values.size and p_values[0] <= delta:
    return None
  n_min = ltt_min_n(eps, delta, bound)
  if n < n_min:
    return (f"no early exit can be certified: n = {n} validation examples "
            f"are too few for eps = {eps:g}, delta = {delta:g} (the smallest "
            f"p-value the test can give is (1 - eps)^n = "
            f"{(1 - eps) ** n:.3g} > delta); it needs n >= {n_min} at this "
            f"eps, or eps >= {_round_up(ltt_min_eps(n, delta)):g} (or a "
            "larger delta) at this n; every example stays at the final exit")
  return (f"no early exit certified at eps = {eps:g}, delta = {delta:g}: the "
          f"most conservative lambda's p-value is {p_values[0]:.3g} > delta "
          "(the early exits disagree with the final exit too often on "
          f"validation); every example stays at the final exit")
