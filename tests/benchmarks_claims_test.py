"""benchmarks/claims.py: paired intervals and claim verdicts by hand."""

import math

import numpy as np
import pytest

from benchmarks import claims

# Student t quantiles t_{0.975, dof} from a printed table.
T975 = {2: 4.303, 4: 2.776, 5: 2.571, 6: 2.447}


def test_paired_diff_by_hand():
  a = [[0.80, 0.90], [0.84, 0.90], [0.82, 0.93]]
  b = [[0.78, 0.91], [0.80, 0.90], [0.81, 0.91]]
  out = claims.paired_diff(a, b)
  # exit 0: d = (0.02, 0.04, 0.01): mean 0.023333, sd 0.015275.
  # exit 1: d = (-0.01, 0.00, 0.02): mean 0.003333, sd 0.015275.
  assert out["n"] == 3
  np.testing.assert_allclose(out["mean"], [0.0233333, 0.0033333], atol=1e-6)
  np.testing.assert_allclose(out["sd"], [0.0152753, 0.0152753], atol=1e-6)
  half = T975[2] * 0.0152753 / math.sqrt(3)  # 0.03795
  np.testing.assert_allclose(out["lo"], [0.0233333 - half, 0.0033333 - half],
                             atol=2e-4)
  np.testing.assert_allclose(out["hi"], [0.0233333 + half, 0.0033333 + half],
                             atol=2e-4)
  one = claims.paired_diff([[0.5, 0.6]], [[0.4, 0.7]])
  np.testing.assert_allclose(one["mean"], [0.1, -0.1])
  assert one["lo"] == [-math.inf] * 2 and one["hi"] == [math.inf] * 2
  with pytest.raises(ValueError, match="seeds, exits"):
    claims.paired_diff([[0.1, 0.2]], [[0.1]])


def test_welch_difference_of_two_paired_means():
  x = {"mean": [0.02], "sd": [0.01], "n": 5}
  y = {"mean": [0.005], "sd": [0.02], "n": 5}
  out = claims.diff_of_diffs(x, y, 0)
  # se = sqrt(0.01^2/5 + 0.02^2/5) = 0.01; Welch dof = 5.88.
  assert out["mean"] == pytest.approx(0.015)
  half = (out["hi"] - out["lo"]) / 2
  assert T975[6] * 0.01 < half < T975[5] * 0.01
  assert out["lo"] + half == pytest.approx(0.015)


def test_verdicts():
  r, nr, inc = claims.REPRODUCED, claims.NOT_REPRODUCED, claims.INCONCLUSIVE
  assert claims.verdict(0.001, 0.02, "gain") == r
  assert claims.verdict(-0.02, -0.001, "gain") == nr
  assert claims.verdict(-0.01, 0.02, "gain") == inc
  # No loss, margin 0.5 points: a CI above -0.5 points is non-inferior even
  # if it lies below 0; one below 0 that reaches past -0.5 is a loss.
  assert claims.verdict(-0.004, -0.001, "no_loss") == r
  assert claims.verdict(-0.02, -0.006, "no_loss") == nr
  assert claims.verdict(-0.02, 0.01, "no_loss") == inc
  assert claims.summarize([r, r]) == r
  assert claims.summarize([r, inc, nr]) == "mixed (1/3 reproduced)"
  with pytest.raises(ValueError):
    claims.verdict(0, 1, "better")


def test_evaluate_claims_on_constructed_runs():
  rng = np.random.default_rng(0)
  ce = {s: [0.60 + 0.01 * s, 0.75, 0.80] for s in range(5)}
  # P&L: +3 points at the early exits, -2 at the final, small noise.
  pl = {s: [a + 0.03 + 0.002 * rng.standard_normal(),
            b + 0.03 + 0.002 * rng.standard_normal(),
            c - 0.02 + 0.002 * rng.standard_normal()]
        for s, (a, b, c) in ce.items()}
  rows = claims.evaluate_claims({"limited": {"ce": ce, "pl": pl}})
  got = {r["claim"]: r for r in rows}
  early = got["early exits gain over CE (data-limited)"]
  assert early["verdict"] == claims.REPRODUCED
  assert [t["exit"] for t in early["tests"]] == [0, 1]
  assert early["tests"][0]["mean"] == pytest.approx(0.03, abs=0.003)
  late = got["late exits are not hurt (data-limited; margin 0.5 points)"]
  assert late["verdict"] == claims.NOT_REPRODUCED
  assert late["tests"][0]["n"] == 5
  # Claims without their runs (EED, full data, ...) are left out.
  assert all(r["setting"] == "limited" for r in rows)
  assert not any(r["paper"].startswith("EED") for r in rows)
  table = claims.claims_markdown(rows).splitlines()
  assert table[0].startswith("| paper | claim |")
  assert "**reproduced**" in table[2] and "exit 1: +3.0 [" in table[2]


def test_clopper_pearson_by_hand():
  # 5 of 50: the exact interval [0.03327, 0.21814] (Clopper & Pearson
  # 1934; e.g. R's binom.test(5, 50)).
  lo, hi = claims.clopper_pearson(5, 50)
  assert lo == pytest.approx(0.033275, abs=1e-5)
  assert hi == pytest.approx(0.218135, abs=1e-5)
  # k = 0: upper limit 1 - (a)^(1/n) with a = 0.025 (P(X = 0) = a).
  assert claims.clopper_pearson(0, 500) == (0.0, pytest.approx(
      1 - 0.025 ** (1 / 500)))
  assert claims.clopper_pearson(50, 50)[1] == 1.0
  # The limits solve P(X >= k; lo) = a and P(X <= k; hi) = a.
  k, n = 17, 500
  lo, hi = claims.clopper_pearson(k, n)
  cdf = lambda j, p: sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i)
                         for i in range(j + 1))
  assert 1 - cdf(k - 1, lo) == pytest.approx(0.025, abs=1e-9)
  assert cdf(k, hi) == pytest.approx(0.025, abs=1e-9)
