"""Threshold calibration vs NumPy references and synthetic i.i.d. data."""

import math

import numpy as np
import pytest

from mexd.early_exit import calibrate
from mexd.early_exit import policies

ACC = (0.55, 0.75, 0.9)  # per-exit accuracies of the generative model
COSTS = (1.0, 2.5, 4.0)


def synthetic(n, rng, acc=ACC, num_classes=10):
  """Logits [E, n, C] whose exit k is right with probability acc[k].

  Exit k predicts the label with probability acc[k] (independently across
  exits), otherwise a uniform wrong class; the winning logit is larger when
  the prediction is right, so confidence carries information.
  """
  rng = np.random.default_rng(rng)
  y = rng.integers(0, num_classes, n)
  z = rng.normal(size=(len(acc), n, num_classes)) * 0.5
  for k, a in enumerate(acc):
    right = rng.random(n) < a
    wrong = (y + rng.integers(1, num_classes, n)) % num_classes
    pred = np.where(right, y, wrong)
    z[k, np.arange(n), pred] += 1.0 + 1.5 * right + rng.normal(size=n)
    z[k, np.arange(n), pred] = np.maximum(z[k, np.arange(n), pred],
                                          z[k].max(-1) + 1e-3)
  return z.astype(np.float32), y


def max_prob(z):
  """The library's scores (checked against NumPy in policies_test), so that
  the references below see bit-identical confidences."""
  return np.asarray(policies.scores(z, "max_prob"))


def ref_exits(s, thresholds):
  """Loop reference: first k with s[k] >= theta_k, else the final exit."""
  out = []
  for n in range(s.shape[1]):
    k = 0
    while k < s.shape[0] - 1 and not s[k, n] >= thresholds[k]:
      k += 1
    out.append(k)
  return np.array(out)


def ref_msdnet(c, p):
  """MSDNet-PyTorch dynamic_eval_find_threshold, transcribed loop by loop."""
  n_stage, n_sample = c.shape
  probs = np.array([p ** (k + 1) for k in range(n_stage)])
  probs /= probs.sum()
  sorted_idx = np.argsort(-c, axis=1, kind="stable")
  filtered = np.zeros(n_sample)
  t = np.full(n_stage, 1e8)
  for k in range(n_stage - 1):
    count = 0
    out_n = math.floor(n_sample * probs[k])
    for i in range(n_sample):
      ori = sorted_idx[k][i]
      if filtered[ori] == 0:
        count += 1
        if count == out_n:
          t[k] = c[k][ori]
          break
    filtered += c[k] >= t[k]
  t[-1] = -1e8
  return t


def test_msdnet_grid_and_thresholds_match_reference():
  assert calibrate.DEFAULT_PS[0] == 0.05 and len(calibrate.DEFAULT_PS) == 40
  assert calibrate.DEFAULT_PS[-1] == 2.0
  z, _ = synthetic(300, 0)
  z[:, :40] = z[:, 40:80]  # duplicated rows: ties in the confidences
  c = max_prob(z)
  ps, th = calibrate.msdnet_sweep(z)
  assert th.shape == (40, 3)
  for p, t in zip(ps, th):
    ref = ref_msdnet(c, p)
    ref = np.where(ref >= 1e8, np.inf, np.where(ref <= -1e8, -np.inf, ref))
    np.testing.assert_array_equal(t, ref.astype(np.float32), err_msg=str(p))
    np.testing.assert_array_equal(calibrate.msdnet_thresholds(z, p), t)


def test_msdnet_exit_proportions_on_validation():
  # Continuous scores (no ties): exactly floor(N q_k) images exit at k < E-1.
  z, _ = synthetic(500, 1)
  for p in (0.3, 1.0, 1.7):
    q = np.array([p, p ** 2, p ** 3]) / (p + p ** 2 + p ** 3)
    np.testing.assert_allclose(calibrate.msdnet_proportions(p, 3), q)
    ex = ref_exits(max_prob(z), calibrate.msdnet_thresholds(z, p))
    counts = np.bincount(ex, minlength=3)
    np.testing.assert_array_equal(counts[:2], np.floor(500 * q[:2]))


def _protocol(val, test):
  """The whole evaluation, thresholds from val; returns thresholds, metrics."""
  (vz, vy), (tz, ty) = val, test
  _, sweep = calibrate.msdnet_sweep(vz)
  budget = calibrate.calibrate_budget(vz, vy, 2.0, COSTS).thresholds
  drop = calibrate.calibrate_accuracy_drop(vz, vy, 0.05, delta=0.2).thresholds
  curve = policies.evaluate_curve(tz, ty, sweep, "max_prob", COSTS)
  return (sweep, budget, drop), np.asarray(curve["accuracy"])


def test_thresholds_come_from_validation_only():
  val, test = synthetic(400, 2), synthetic(400, 3)
  th1, acc1 = _protocol(val, test)
  other_z, _ = synthetic(400, 4)
  rng = np.random.default_rng(5)
  th2, acc2 = _protocol(val, (other_z, rng.permutation(test[1])))
  for a, b in zip(th1, th2):
    np.testing.assert_array_equal(a, b)
  assert np.abs(acc1 - acc2).max() > 0.05  # the test data did change
  th3, _ = _protocol(synthetic(400, 6), test)  # other validation data
  assert not np.array_equal(th1[1], th3[1])


def _brute_shared(z, y, costs):
  """(lambda, accuracy, avg cost) of every distinct shared threshold."""
  s = max_prob(z)
  cands = np.append(np.unique(s[:-1]), np.inf)
  rows = []
  for lam in cands:
    ex = ref_exits(s, [lam, lam, -np.inf])
    pred = z.argmax(-1)[ex, np.arange(len(y))]
    rows.append((lam, np.mean(pred == y), np.mean(np.asarray(costs)[ex])))
  return np.array(rows)


def test_budget_exact_on_validation_and_optimal_among_shared():
  z, y = synthetic(150, 7)
  table = _brute_shared(z, y, COSTS)
  for budget in (1.0, 1.7, 2.6, 3.3, 4.0):
    cal = calibrate.calibrate_budget(z, y, budget, COSTS, families=("shared",))
    out = policies.simulate(z, y, cal.thresholds, "max_prob", COSTS)
    assert cal.val_avg_cost <= budget
    assert float(out["avg_cost"]) <= budget + 1e-6
    assert float(out["accuracy"]) == pytest.approx(cal.val_accuracy)
    best = table[table[:, 2] <= budget + 1e-12, 1].max()
    assert cal.val_accuracy == pytest.approx(best)
    both = calibrate.calibrate_budget(z, y, budget, COSTS)
    assert both.val_avg_cost <= budget
    assert both.val_accuracy >= cal.val_accuracy


def test_budget_holds_on_iid_test_data():
  val, test = synthetic(4000, 8), synthetic(4000, 9)
  for budget in (1.6, 2.2, 3.0):
    cal = calibrate.calibrate_budget(*val, budget, COSTS)
    assert cal.val_avg_cost <= budget
    out = policies.simulate(*test, cal.thresholds, "max_prob", COSTS)
    # 4 standard errors of a difference of two means of 4000 exit costs.
    frac = np.asarray(out["exit_fraction"])
    sd = np.sqrt(frac @ np.square(COSTS) - (frac @ COSTS) ** 2)
    tol = 4 * np.sqrt(2 / 4000) * sd
    assert 0.03 < tol < 0.15
    assert float(out["avg_cost"]) <= budget + tol
    assert abs(float(out["avg_cost"]) - cal.val_avg_cost) < tol
    # Better than spending the budget on a random mix of fixed exits.
    assert float(out["accuracy"]) > np.interp(budget, COSTS, ACC)


def test_budget_out_of_range_raises():
  z, y = synthetic(50, 10)
  with pytest.raises(ValueError, match="outside"):
    calibrate.calibrate_budget(z, y, 4.5, COSTS)
  with pytest.raises(ValueError, match="outside"):
    calibrate.calibrate_budget(z, y, 0.9, COSTS)


def test_empirical_accuracy_drop_is_most_aggressive():
  z, y = synthetic(150, 11)
  table = _brute_shared(z, y, COSTS)
  final = np.mean(z[-1].argmax(-1) == y)
  for eps in (0.01, 0.05, 0.2):
    cal = calibrate.calibrate_accuracy_drop(z, y, eps)
    ok = table[final - table[:, 1] <= eps + 1e-12]
    assert cal.param == pytest.approx(ok[:, 0].min())
    assert final - cal.val_accuracy <= eps + 1e-12


def test_binomial_and_hb_pvalues():
  for n, k, p in ((20, 3, 0.1), (50, 0, 0.05), (30, 12, 0.4)):
    ref = sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i)
              for i in range(k + 1))
    assert calibrate.binom_cdf(k, n, p) == pytest.approx(ref, rel=1e-9)
  # Hoeffding: r = 0.02, alpha = 0.1, n = 500.
  h = 0.02 * math.log(0.2) + 0.98 * math.log(0.98 / 0.9)
  assert calibrate.hb_pvalue(0.02, 500, 0.1, "hoeffding") == pytest.approx(
      math.exp(-500 * h))
  bentkus = math.e * calibrate.binom_cdf(10, 500, 0.1)
  assert calibrate.hb_pvalue(0.02, 500, 0.1) == pytest.approx(
      min(math.exp(-500 * h), bentkus))
  assert calibrate.hb_pvalue(0.2, 500, 0.1) == 1.0  # above alpha: no evidence


def test_ltt_fixed_sequence_selection():
  z, y = synthetic(2000, 12)
  cal = calibrate.calibrate_accuracy_drop(z, y, 0.05, delta=0.1,
                                          risk="consistency")
  info = cal.info
  lams, pv = info["lambdas"], info["p_values"]
  assert np.all(np.diff(lams) <= 0)  # most conservative first
  r = info["num_rejected"]
  assert 0 < r < len(lams)
  assert np.all(pv[:r] <= 0.1) and pv[r] > 0.1
  assert cal.param == lams[r - 1]
  # Risk = disagreement with the final exit, recomputed directly.
  s = max_prob(z)
  ex = ref_exits(s, [cal.param, cal.param, -np.inf])
  pred = z.argmax(-1)[ex, np.arange(len(y))]
  assert info["risk"][r - 1] == pytest.approx(np.mean(pred != z[-1].argmax(
      -1)))
  # Empirical calibration at the same eps is more aggressive.
  assert calibrate.calibrate_accuracy_drop(z, y, 0.05).param < cal.param


def test_ltt_stops_at_first_non_rejection():
  # Disagreement risk is not monotone here: exit 1 disagrees with the final
  # exit, exit 0 agrees. lambda = 0.9: final exit (risk 0); 0.5: exit 1
  # (risk 1); 0.2: exit 0 (risk 0). Fixed-sequence testing must stop at 0.5.
  probs = np.array([[0.35, 0.33, 0.32], [0.175, 0.65, 0.175],
                    [0.8, 0.1, 0.1]])
  z = np.repeat(np.log(probs)[:, None], 200, axis=1).astype(np.float32)
  y = np.zeros(200, int)
  cal = calibrate.calibrate_accuracy_drop(z, y, 0.1, delta=0.05,
                                          lambdas=[0.2, 0.9, 0.5],
                                          risk="consistency")
  np.testing.assert_array_equal(cal.info["lambdas"], np.float32([0.9, 0.5,
                                                                 0.2]))
  np.testing.assert_allclose(cal.info["risk"], [0.0, 1.0, 0.0])
  assert cal.info["num_rejected"] == 1
  assert cal.param == np.float32(0.9)
  assert cal.val_avg_cost == 3.0


def test_violation_rate_within_delta():
  z, y = synthetic(3000, 13)
  eps, delta = 0.03, 0.1
  ltt = calibrate.violation_rate(z, y, eps, delta, n_trials=100, rng=0)
  # 100 Bernoulli trials: 3 standard deviations of sampling noise.
  assert ltt["rate"] <= delta + 3 * math.sqrt(delta * (1 - delta) / 100)
  assert np.all(ltt["avg_exit"] < 2)  # it does exit early
  # Without the guarantee the tolerance is broken about half of the time,
  # so this set-up can detect a violating rule.
  emp = calibrate.violation_rate(z, y, eps, None, n_trials=100, rng=0)
  assert emp["rate"] > 0.25


def test_ltt_population_risk_guarantee():
  # P(R(lambda_hat) > eps) <= delta with R the population disagreement rate,
  # estimated on a large independent sample.
  pool_z, _ = synthetic(40000, 14)
  pool_s, pool_pred = max_prob(pool_z), pool_z.argmax(-1)
  pool_pmax = np.maximum.accumulate(pool_s[:-1], axis=0)
  eps, delta, bad = 0.05, 0.2, 0
  for trial in range(40):
    z, y = synthetic(500, 100 + trial)
    lam = calibrate.calibrate_accuracy_drop(z, y, eps, delta=delta,
                                            risk="consistency").param
    ex = (pool_pmax < lam).sum(0)
    risk = np.mean(pool_pred[ex, np.arange(ex.size)] != pool_pred[-1])
    bad += risk > eps
  assert bad / 40 <= delta + 3 * math.sqrt(delta * (1 - delta) / 40)


def test_ltt_min_n_by_hand():
  # (1 - eps)^n <= delta  <=>  n >= log(delta) / log(1 - eps).
  # eps 0.01, delta 0.1: 2.302585 / 0.0100503 = 229.1 -> 230 (0.99^229 =
  # 0.1001 > 0.1 >= 0.99^230 = 0.0991); eps 0.02: 2.302585 / 0.0202027 =
  # 113.97 -> 114; eps 0.5, delta 0.25: 0.5^2 = 0.25 exactly -> 2.
  for bound in ("hoeffding_bentkus", "hoeffding"):
    assert calibrate.ltt_min_n(0.01, 0.1, bound) == 230
    assert calibrate.ltt_min_n(0.02, 0.1, bound) == 114
    assert calibrate.ltt_min_n(0.5, 0.25, bound) == 2
  # The smallest p-value at n = 180 is Hoeffding's 0.99^180 = 0.1638 (the
  # Bentkus term e * 0.99^180 = 0.445 is larger).
  assert calibrate.hb_pvalue(0.0, 180, 0.01) == pytest.approx(0.99 ** 180)
  assert 0.99 ** 180 == pytest.approx(0.1638, abs=1e-4)
  # eps at n = 180: 1 - 0.1^(1/180) = 0.012711.
  assert calibrate.ltt_min_eps(180, 0.1) == pytest.approx(0.0127107, abs=1e-7)
  with pytest.raises(ValueError, match="must lie in"):
    calibrate.ltt_min_n(0.0, 0.1)


# The consistency risk with the Hoeffding-Bentkus bound.
HB = dict(risk="consistency", bound="hoeffding_bentkus")


def _agreeing(n, num_exits=3, num_classes=10):
  """Logits [E, n, C] where every exit predicts the label, confidently."""
  y = np.arange(n) % num_classes
  z = np.zeros((num_exits, n, num_classes), np.float32)
  z[:, np.arange(n), y] = 10.0
  return z, y


def test_ltt_says_when_n_is_too_small():
  """Even with zero disagreement, n = 229 < 230 certifies nothing at
  eps = 0.01, delta = 0.1; n = 230 sends everyone to exit 0."""
  z, y = _agreeing(229)
  with pytest.warns(calibrate.CertificationWarning,
                    match=r"n = 229 validation examples are too few for "
                    r"eps = 0\.01, delta = 0\.1 \(the smallest p-value the "
                    r"hoeffding_bentkus bound can give, at zero "
                    r"disagreements, is 0\.1 > delta\); it needs n >= 230 at this eps, or eps >= "
                    r"0\.0101 "):
    cal = calibrate.calibrate_accuracy_drop(z, y, 0.01, delta=0.1, **HB)
  assert cal.param == np.inf and cal.info["num_rejected"] == 0
  assert cal.info["min_n"] == 230
  assert "too few" in cal.info["note"]
  z, y = _agreeing(230)
  cal = calibrate.calibrate_accuracy_drop(z, y, 0.01, delta=0.1, **HB)
  assert cal.info["note"] is None and cal.info["min_n"] == 230
  assert cal.val_avg_cost == 1.0  # everyone leaves at exit 0
  # The eps the note names works at n = 229.
  cal = calibrate.calibrate_accuracy_drop(*_agreeing(229), 0.0101, delta=0.1,
                                          **HB)
  assert cal.info["note"] is None and cal.val_avg_cost == 1.0


def test_ltt_says_when_early_exits_disagree():
  """Enough examples, but exit 0 is certain (max_prob = 1 in float32) and
  wrong for a fifth of them: even the most conservative lambda fails."""
  z, y = _agreeing(1000)
  z[0, :200] = np.roll(z[0, :200], 1, axis=-1) * 10  # sure and different
  with pytest.warns(calibrate.CertificationWarning,
                    match=r"most conservative lambda's p-value is 1 > delta "
                    r"\(the early exits disagree"):
    cal = calibrate.calibrate_accuracy_drop(z, y, 0.02, delta=0.1, **HB)
  assert cal.param == np.inf and cal.info["min_n"] == 114
  assert cal.info["risk"][0] == pytest.approx(0.2)
