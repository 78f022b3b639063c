"""p-values for "the mean loss exceeds alpha" (host-side NumPy).

Every exit-rule guarantee in mexd (`calibrate`, `certify`) rests on one test:
given n i.i.d. losses X_1..X_n in [0, 1] with mean mu, a p-value for

    H0: mu > alpha,

i.e. a statistic p with P(p <= delta) <= delta whenever H0 holds. A threshold
is certified when its p-value is <= delta. `pvalues` computes it, for many
candidate thresholds at once, with one of `BOUNDS` (docs/early_exit.md §2.4
has the formulas and their sources):

  hoeffding            exp(-n h(min(r, alpha), alpha)) (Hoeffding 1963)
  hoeffding_bentkus    min(hoeffding, e P(Binom(n, alpha) <= ceil(n r)))
                       (Bentkus 2004; Bates et al. 2021)
  binomial             P(Binom(n, alpha) <= n r), exact for {0, 1} losses
                       only (one-sided Clopper-Pearson)
  empirical_bernstein  the Maurer-Pontil (2009) bound solved for delta
  wsr                  1 / max_t K_t of the predictable-plug-in betting
                       capital (Waudby-Smith & Ramdas 2024)

The default, "auto", is the bound that certified most in
benchmarks/guarantees.py while holding its level: `binomial` for losses in
{0, 1} (the consistency risk), `wsr` for other bounded losses (the accuracy
drop, the cost).

Only `hoeffding`, `hoeffding_bentkus` and `binomial` depend on the losses
through their mean alone; `empirical_bernstein` uses the sample variance
and `wsr` the sequence (in the given order, which must not depend on the
losses' values: callers pass a seeded permutation).
"""

import math
from typing import Optional

import numpy as np

from mexd import errors

BOUNDS = ("hoeffding", "hoeffding_bentkus", "binomial", "empirical_bernstein",
          "wsr")
# The betting fraction is capped at WSR_C / (1 - alpha) < 1 / (1 - alpha), so
# one loss of 1 never sends the capital to 0 (Waudby-Smith & Ramdas, c = 3/4).
WSR_C = 0.75
# The bound `calibrate` and `certify` use unless told otherwise: `resolve`.
DEFAULT_BOUND = "auto"


def check_bound(bound: str) -> None:
  if bound not in BOUNDS + ("auto",):
    raise errors.InputError(f"unknown bound {bound!r}; valid: auto, "
                            f"{', '.join(BOUNDS)}")


def resolve(bound: str, binary: bool) -> str:
  """"auto" -> "binomial" for losses in {0, 1} (binary), else "wsr"; any
  other name is checked and returned."""
  check_bound(bound)
  if bound != "auto":
    return bound
  return "binomial" if binary else "wsr"


def _check_alpha(alpha: float) -> None:
  if not 0.0 < alpha < 1.0:
    raise errors.InputError(f"alpha must lie in (0, 1), got {alpha}")


def binom_cdfs(n: int, p: float) -> np.ndarray:
  """[n + 1] P(Binomial(n, p) <= k), k = 0..n, by the log-pmf recursion."""
  i = np.arange(n)
  logpmf = n * np.log1p(-p) + np.concatenate([[0.0], np.cumsum(
      np.log(n - i) - np.log(i + 1) + np.log(p) - np.log1p(-p))])
  m = logpmf.max()
  cdf = np.cumsum(np.exp(logpmf - m)) * np.exp(m)
  return np.minimum(cdf, 1.0)


def binom_cdf(k: int, n: int, p: float) -> float:
  """P(Binomial(n, p) <= k) (no SciPy)."""
  if k < 0:
    return 0.0
  if k >= n:
    return 1.0
  return float(binom_cdfs(n, p)[k])


def _hoeffding(r: np.ndarray, n: int, alpha: float) -> np.ndarray:
  a = np.minimum(r, alpha)
  with np.errstate(divide="ignore", invalid="ignore"):
    h = np.where(a > 0, a * np.log(a / alpha), 0.0) + (1 - a) * np.log(
        (1 - a) / (1 - alpha))
  return np.minimum(1.0, np.exp(-n * h))


def _bentkus(r: np.ndarray, n: int, alpha: float) -> np.ndarray:
  k = np.ceil(n * r - 1e-9).astype(np.int64)
  return np.minimum(1.0, np.e * binom_cdfs(n, alpha)[np.clip(k, 0, n)])


def hb_pvalue(risk_hat: float, n: int, alpha: float,
              bound: str = "hoeffding_bentkus") -> float:
  """Scalar p-value from the empirical risk alone (hoeffding[_bentkus])."""
  _check_alpha(alpha)
  r = np.asarray([float(risk_hat)])
  if bound == "hoeffding":
    return float(_hoeffding(r, n, alpha)[0])
  if bound != "hoeffding_bentkus":
    raise errors.InputError(f"unknown bound {bound!r}; valid: hoeffding, "
                            "hoeffding_bentkus")
  return float(min(_hoeffding(r, n, alpha)[0], _bentkus(r, n, alpha)[0]))


def _empirical_bernstein(x: np.ndarray, alpha: float) -> np.ndarray:
  """Maurer & Pontil (2009, Thm 4): with probability >= 1 - delta,

    mu <= mean + sqrt(2 V u / n) + 7 u / (3 (n - 1)),  u = log(2 / delta),

  V the unbiased sample variance. With s = sqrt(u) the bound is <= alpha iff
  a s^2 + b s <= g (a = 7 / (3 (n - 1)), b = sqrt(2 V / n), g = alpha -
  mean), i.e. s <= s* = (sqrt(b^2 + 4 a g) - b) / (2 a); the p-value is the
  smallest delta that certifies, 2 exp(-s*^2).
  """
  n = x.shape[-1]
  if n < 2:
    return np.ones(x.shape[:-1])
  g = alpha - x.mean(-1)
  a = 7.0 / (3.0 * (n - 1))
  b = np.sqrt(2.0 * x.var(-1, ddof=1) / n)
  s = (np.sqrt(b * b + 4 * a * np.maximum(g, 0.0)) - b) / (2 * a)
  return np.where(g > 0, np.minimum(1.0, 2.0 * np.exp(-s * s)), 1.0)


def _wsr(x: np.ndarray, alpha: float, delta: float) -> np.ndarray:
  """Betting p-value (Waudby-Smith & Ramdas 2024, predictable plug-in).

  Capital K_t = prod_{i<=t} (1 - lambda_i (X_i - alpha)) is a nonnegative
  supermartingale under H0 (E X_i >= alpha), so by Ville's inequality
  P(max_t K_t >= 1 / delta) <= delta, and p = min(1, 1 / max_t K_t). The bet
  lambda_i = min(WSR_C / (1 - alpha), sqrt(2 log(1 / delta) /
  (n sigma2_{i-1}))) uses only X_1..X_{i-1}: mu_i = (1/2 + sum_{j<=i} X_j) /
  (i + 1), sigma2_i = (1/4 + sum_{j<=i} (X_j - mu_j)^2) / (i + 1),
  sigma2_0 = 1/4.
  """
  n = x.shape[-1]
  i = np.arange(1, n + 1)
  mu = (0.5 + np.cumsum(x, -1)) / (i + 1)
  sig2 = (0.25 + np.cumsum((x - mu) ** 2, -1)) / (i + 1)
  prev = np.concatenate([np.full(x.shape[:-1] + (1,), 0.25),
                         sig2[..., :-1]], -1)
  lam = np.minimum(WSR_C / (1.0 - alpha),
                   np.sqrt(2.0 * math.log(1.0 / delta) / (n * prev)))
  log_k = np.cumsum(np.log1p(-lam * (x - alpha)), -1)
  return np.minimum(1.0, np.exp(-np.maximum(log_k.max(-1), 0.0)))


def pvalues(losses, alpha: float, bound: str = DEFAULT_BOUND,
            delta: Optional[float] = None) -> np.ndarray:
  """p-values of H0: E[loss] > alpha, one per row.

  Args:
    losses: [L, n] (or [n]) losses in [0, 1]; row l holds the n i.i.d.
      losses of candidate l.
    alpha: the tolerated mean, in (0, 1).
    bound: one of `BOUNDS`, or "auto" (`resolve`).
    delta: the level the p-value will be compared with; `wsr` tunes its bets
      to it (its p-value is valid at every level, most powerful at delta).

  Returns:
    [L] (or scalar) float64 p-values in [0, 1].

  Raises:
    InputError: alpha outside (0, 1), unknown bound, losses outside [0, 1],
      non-binary losses with `binomial`, `wsr` without delta.
  """
  _check_alpha(alpha)
  check_bound(bound)
  x = np.asarray(losses, np.float64)
  scalar = x.ndim == 1
  x = np.atleast_2d(x)
  if x.shape[-1] == 0:
    raise errors.InputError("no losses: need n >= 1 examples")
  if x.min() < 0 or x.max() > 1:
    raise errors.InputError(f"losses must lie in [0, 1], got [{x.min()}, "
                            f"{x.max()}]")
  n, r = x.shape[-1], x.mean(-1)
  if bound == "auto":
    bound = resolve(bound, bool(np.all((x == 0) | (x == 1))))
  if bound == "hoeffding":
    p = _hoeffding(r, n, alpha)
  elif bound == "hoeffding_bentkus":
    p = np.minimum(_hoeffding(r, n, alpha), _bentkus(r, n, alpha))
  elif bound == "binomial":
    if not np.all((x == 0) | (x == 1)):
      raise errors.InputError("bound 'binomial' is exact for losses in "
                              "{0, 1} only; use wsr or hoeffding_bentkus "
                              "for bounded losses")
    k = np.rint(x.sum(-1)).astype(np.int64)
    p = binom_cdfs(n, alpha)[k]
  elif bound == "empirical_bernstein":
    p = _empirical_bernstein(x, alpha)
  else:
    if delta is None or not 0 < delta < 1:
      raise errors.InputError(f"bound 'wsr' needs delta in (0, 1), got "
                              f"{delta}")
    p = _wsr(x, alpha, delta)
  return float(p[0]) if scalar else p
