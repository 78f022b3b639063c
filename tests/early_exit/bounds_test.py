"""The p-values of mexd.early_exit.bounds: hand values, the defining
inequality of each bound, and Monte Carlo coverage on synthetic data."""

import math

import numpy as np
import pytest

from mexd import errors
from mexd.early_exit import bounds

ALL = bounds.BOUNDS
BOUNDED = tuple(b for b in ALL if b != "binomial")  # valid for [0, 1] losses


def test_binom_cdfs_matches_math_comb():
  n, p = 30, 0.17
  ref = np.cumsum([math.comb(n, i) * p ** i * (1 - p) ** (n - i)
                   for i in range(n + 1)])
  np.testing.assert_allclose(bounds.binom_cdfs(n, p), ref, rtol=1e-12)
  assert bounds.binom_cdf(-1, n, p) == 0.0 and bounds.binom_cdf(n, n, p) == 1


def test_hoeffding_and_bentkus_by_hand():
  # 10 losses of 1 in 500: mean 0.02 against alpha 0.1.
  x = np.zeros(500)
  x[:10] = 1
  h = 0.02 * math.log(0.02 / 0.1) + 0.98 * math.log(0.98 / 0.9)
  assert bounds.pvalues(x, 0.1, "hoeffding") == pytest.approx(
      math.exp(-500 * h), rel=1e-12)
  bentkus = math.e * sum(math.comb(500, i) * 0.1 ** i * 0.9 ** (500 - i)
                         for i in range(11))
  assert bounds.pvalues(x, 0.1, "hoeffding_bentkus") == pytest.approx(
      min(math.exp(-500 * h), bentkus), rel=1e-9)
  # The exact binomial tail, without Bentkus' factor e.
  assert bounds.pvalues(x, 0.1, "binomial") == pytest.approx(
      bentkus / math.e, rel=1e-9)
  # A mean at or above alpha is no evidence: p = 1.
  for b in ALL:
    assert bounds.pvalues(np.ones(50), 0.5, b, 0.1) == pytest.approx(1.0)


def test_empirical_bernstein_solves_maurer_pontil_for_delta():
  # At delta = p the Maurer-Pontil upper bound of the mean equals alpha.
  x = np.random.default_rng(0).beta(2, 18, size=400)  # mean ~0.1
  alpha = 0.15
  p = bounds.pvalues(x, alpha, "empirical_bernstein")
  assert 0 < p < 0.01
  n, u = x.size, math.log(2 / p)
  upper = (x.mean() + math.sqrt(2 * x.var(ddof=1) * u / n)
           + 7 * u / (3 * (n - 1)))
  assert upper == pytest.approx(alpha, rel=1e-9)


def test_wsr_by_hand():
  # X = (0, 0), alpha = 1/2, delta = 0.1. Bet 1: variance 1/4, so
  # min(0.75 / 0.5, sqrt(2 log 10 / (2 * 0.25))) = min(1.5, 3.03) = 1.5 and
  # K_1 = 1 + 1.5 * 0.5 = 1.75. Then mu_1 = 0.25, sigma2_1 = (0.25 +
  # 0.0625) / 2 = 0.15625, bet min(1.5, 3.84) = 1.5: K_2 = 1.75^2.
  assert bounds.pvalues([0.0, 0.0], 0.5, "wsr", 0.1) == pytest.approx(
      1 / 1.75 ** 2)
  # X = (1, 0): K_1 = 1 - 1.5 * 0.5 = 0.25, K_2 = 0.25 * 1.75 < 1: p = 1.
  assert bounds.pvalues([1.0, 0.0], 0.5, "wsr", 0.1) == 1.0
  # The order matters for wsr only.
  x = np.r_[np.ones(5), np.zeros(95)]
  assert bounds.pvalues(x, 0.2, "wsr", 0.1) != pytest.approx(
      bounds.pvalues(x[::-1], 0.2, "wsr", 0.1))
  assert bounds.pvalues(x, 0.2, "hoeffding_bentkus") == pytest.approx(
      bounds.pvalues(x[::-1], 0.2, "hoeffding_bentkus"))


def test_auto_resolves_by_the_losses():
  binary = np.r_[np.ones(3), np.zeros(197)]
  assert bounds.pvalues(binary, 0.05, "auto", 0.1) == bounds.pvalues(
      binary, 0.05, "binomial")
  soft = binary * 0.5
  assert bounds.pvalues(soft, 0.05, "auto", 0.1) == bounds.pvalues(
      soft, 0.05, "wsr", 0.1)
  assert bounds.resolve("auto", True) == "binomial"
  assert bounds.resolve("hoeffding", False) == "hoeffding"


@pytest.mark.parametrize("bad, match", [
    (dict(losses=[0.5], alpha=1.5), "alpha must lie in"),
    (dict(losses=[1.5], alpha=0.5), r"losses must lie in \[0, 1\]"),
    (dict(losses=[], alpha=0.5), "no losses"),
    (dict(losses=[0.5], alpha=0.2, bound="binomial"), "exact for losses in"),
    (dict(losses=[0.5], alpha=0.2, bound="wsr"), "needs delta"),
    (dict(losses=[0.5], alpha=0.2, bound="chernoff"), "unknown bound"),
])
def test_bad_inputs(bad, match):
  with pytest.raises(errors.InputError, match=match):
    bounds.pvalues(**bad)


M, N, DELTA = 4000, 200, 0.1
# 3 standard deviations of the rejection rate of M trials at level DELTA.
SLACK = 3 * math.sqrt(DELTA * (1 - DELTA) / M)


def _rejection_rate(x, alpha, bound):
  return float(np.mean(bounds.pvalues(x, alpha, bound, DELTA) <= DELTA))


@pytest.mark.parametrize("bound", ALL)
def test_coverage_on_bernoulli_data(bound):
  """Under H0 at its edge (mean = alpha) every bound rejects at most DELTA
  of the time; at mean alpha / 2 it rejects most of the time (the test
  has power); the tight bounds are not trivially conservative."""
  rng = np.random.default_rng(1)
  alpha = 0.2
  at = (rng.random((M, N)) < alpha).astype(float)
  rate = _rejection_rate(at, alpha, bound)
  assert rate <= DELTA + SLACK
  above = (rng.random((M, N)) < 0.25).astype(float)  # deep inside H0
  assert _rejection_rate(above, alpha, bound) <= DELTA + SLACK
  below = (rng.random((M, N)) < alpha / 2).astype(float)
  assert _rejection_rate(below, alpha, bound) > 0.7
  if bound in ("binomial", "wsr"):
    assert rate > DELTA / 4  # coverage is not trivially 1


@pytest.mark.parametrize("bound", BOUNDED)
def test_coverage_on_bounded_data(bound):
  """Beta(2, 8) losses (mean 0.2, variance 0.0145, far below the 0.16 of a
  Bernoulli(0.2)): every bound holds its level at mean = alpha; the
  variance-adaptive ones use the small variance: at alpha = 0.25 wsr
  rejects almost always, empirical Bernstein (whose 7 u / (3 (n - 1)) term
  is large at n = 200) about 5x as often as Hoeffding."""
  rng = np.random.default_rng(2)
  x = rng.beta(2, 8, size=(M, N))
  assert _rejection_rate(x, 0.2, bound) <= DELTA + SLACK
  power = _rejection_rate(x, 0.25, bound)
  hoeffding = _rejection_rate(x, 0.25, "hoeffding")
  assert hoeffding < 0.1
  if bound == "wsr":
    assert power > 0.95
  elif bound == "empirical_bernstein":
    assert power > 4 * hoeffding
  else:
    assert power < 0.2


def test_wsr_beats_hoeffding_bentkus_on_ternary_drop_losses():
  """The accuracy-drop losses of `certify` are 1/2 for most images: wsr
  certifies a 1-point drop at n = 1,000, Hoeffding-Bentkus cannot."""
  rng = np.random.default_rng(3)
  drop = rng.choice([0.0, 0.5, 1.0], p=[0.01, 0.985, 0.005], size=1000)
  alpha = (0.01 + 1) / 2
  assert bounds.pvalues(drop, alpha, "wsr", DELTA) <= DELTA
  assert bounds.pvalues(drop, alpha, "hoeffding_bentkus") > 0.5
