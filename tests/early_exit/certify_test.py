"""Certified exit rules (mexd.early_exit.certify): the cost guarantee on
cascades whose true mean cost is known, the accuracy guarantee against a
large independent sample, the joint rule, label-free calibration and the
degenerate inputs."""

import math
import warnings

import numpy as np
import pytest

from mexd import errors
from mexd.early_exit import certify
from mexd.early_exit import ltt
from mexd.early_exit import rules

COSTS = np.array([1.0, 2.0, 3.0])
# A fine grid over the cascade's max-prob range [0.5, 1] (the default grid
# is logarithmic in 1 - lambda, too coarse near B for a sharp check).
GRID = np.linspace(0.5, 1.0, 501)


def uniform_cascade(n, rng):
  """Two-class logits [3, n, 2] whose max-prob at each exit is
  0.5 + U / 2, U ~ Uniform(0, 1), independently across exits.

  With a shared threshold lambda, q = 2 lambda - 1 is the probability that
  an exit's score is below it, so an image leaves at exit 0 w.p. 1 - q, at
  exit 1 w.p. q (1 - q) and at exit 2 w.p. q^2; with costs (1, 2, 3) the
  expected cost is 1 + q + q^2.
  """
  p = 0.5 + 0.5 * rng.random((3, n))
  z = np.stack([np.log(p), np.log1p(-p)], -1)
  return z.astype(np.float32)


def true_cost(lam):
  q = np.clip(2.0 * np.float64(lam) - 1.0, 0.0, 1.0)
  return 1.0 + q + q * q


def test_uniform_cascade_cost_formula():
  rng = np.random.default_rng(0)
  z = uniform_cascade(200_000, rng)
  s, _, costs = rules.prepare(z, "max_prob", COSTS)
  for lam in (0.6, 0.8, 0.95):
    ex = rules.exits(s, np.float32([lam, lam, -np.inf]))
    assert costs[ex].mean() == pytest.approx(true_cost(lam), abs=0.01)


@pytest.mark.parametrize("bound", ["wsr", "hoeffding_bentkus",
                                   "empirical_bernstein"])
def test_budget_guarantee_on_a_known_cascade(bound):
  """P(true expected cost of the rule > B) <= delta over the calibration
  draw, and the rule is not trivially cheap: its true cost is near B."""
  rng = np.random.default_rng(1)
  budget, delta, trials, bad, got = 2.0, 0.2, 200, 0, []
  for _ in range(trials):
    cal = certify.certify_budget(uniform_cascade(500, rng), budget, delta,
                                 bound, exit_costs=COSTS, lambdas=GRID)
    c = true_cost(cal.param)
    bad += c > budget
    got.append(c)
  assert bad / trials <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)
  # With n = 500 the certified rule's true cost is within 0.12 of B.
  assert np.mean(got) > budget - 0.12
  # Without a guarantee (the empirical rule on the same sample size) the
  # budget is broken about half of the time: the check can fail.
  emp = 0
  for _ in range(trials):
    z = uniform_cascade(500, rng)
    lam = certify.Arrays.from_logits(z, None, "max_prob", COSTS, GRID, 0)
    costs = lam.costs[lam.exits].mean(-1)  # [L] empirical cost per lambda
    emp += true_cost(lam.lambdas[costs <= budget].max()) > budget
  assert emp / trials > 0.3


def test_budget_edges():
  rng = np.random.default_rng(2)
  z = uniform_cascade(300, rng)
  with pytest.raises(errors.InputError, match="below the cost 1.0 of the "
                     "first exit"):
    certify.certify_budget(z, 0.9, exit_costs=COSTS)
  full = certify.certify_budget(z, 3.0, exit_costs=COSTS)
  assert full.param == np.inf and full.val_avg_cost == 3.0
  assert "every image takes the final exit" in full.info["note"]
  first = certify.certify_budget(z, 1.0, exit_costs=COSTS)
  assert first.param == -np.inf and first.val_avg_cost == 1.0
  assert "leaves at exit 0" in first.info["note"]
  # n = 3 cannot certify any cost above c0 below B = 1.1.
  tiny = certify.certify_budget(z[:, :3], 1.1, exit_costs=COSTS)
  assert tiny.param == -np.inf and "no threshold of the grid" in tiny.info[
      "note"]
  ok = certify.certify_budget(z, 2.0, exit_costs=COSTS)
  assert ok.info["bound"] == "wsr" and ok.info["n"] == 300
  assert ok.info["certified_cost"] == 2.0
  assert 1.0 < ok.val_avg_cost <= 2.0


def synthetic(n, rng, acc=(0.6, 0.8, 0.92), num_classes=10):
  """Logits [E, n, C]: exit k right w.p. acc[k], confidence informative."""
  y = rng.integers(0, num_classes, n)
  z = rng.normal(size=(len(acc), n, num_classes)) * 0.5
  for k, a in enumerate(acc):
    right = rng.random(n) < a
    pred = np.where(right, y, (y + rng.integers(1, num_classes, n))
                    % num_classes)
    z[k, np.arange(n), pred] += 1.5 + 2.0 * right + rng.normal(size=n)
  return z.astype(np.float32), y


def _population(pool_z, pool_y, lam):
  """(drop, disagreement, cost) of the shared rule lambda on the pool."""
  s, preds, costs = rules.prepare(pool_z, "max_prob", COSTS)
  ex = rules.exits(s, np.float32([lam, lam, -np.inf]))
  cols = np.arange(pool_y.size)
  right = preds == pool_y[None]
  return (right[-1].mean() - right[ex, cols].mean(),
          np.mean(preds[ex, cols] != preds[-1]), costs[ex].mean())


@pytest.mark.parametrize("risk, bound", [
    ("consistency", "binomial"), ("consistency", "wsr"),
    ("accuracy_drop", "wsr"), ("accuracy_drop", "empirical_bernstein")])
def test_accuracy_guarantee_against_the_population(risk, bound):
  rng = np.random.default_rng(3)
  pool_z, pool_y = synthetic(100_000, rng)
  eps, delta, trials, bad, early = 0.02, 0.2, 60, 0, []
  for _ in range(trials):
    z, y = synthetic(1000, rng)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", ltt.CertificationWarning)
      cal = certify.certify_accuracy(z, y, eps, delta, risk, bound,
                                     exit_costs=COSTS)
    drop, disagree, cost = _population(pool_z, pool_y, cal.param)
    bad += (disagree if risk == "consistency" else drop) > eps
    early.append(cost < 3.0)
  assert bad / trials <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)
  assert np.mean(early) > 0.9  # it does exit early


def test_accuracy_drop_risk_recomputed():
  rng = np.random.default_rng(4)
  z, y = synthetic(2000, rng)
  cal = certify.certify_accuracy(z, y, 0.03, 0.1, "accuracy_drop", "wsr",
                                 exit_costs=COSTS)
  r = cal.info["num_rejected"]
  assert r > 0 and cal.param == cal.info["lambdas"][r - 1]
  drop, disagree, cost = _population(z, y, cal.param)
  assert cal.info["risk"][r - 1] == pytest.approx(drop)
  assert cal.info["val_drop"] == pytest.approx(drop)
  assert cal.info["val_consistency_risk"] == pytest.approx(disagree)
  assert cal.val_avg_cost == pytest.approx(cost)
  for key in ("bound", "eps", "delta", "n", "certified_risk", "risk_name"):
    assert key in cal.info
  assert cal.info["risk_name"] == "accuracy_drop" and cal.info["n"] == 2000


def test_label_free_calibration():
  rng = np.random.default_rng(5)
  z, y = synthetic(1500, rng)
  free = certify.certify_accuracy(z, None, 0.02, 0.1, exit_costs=COSTS)
  labelled = certify.certify_accuracy(z, y, 0.02, 0.1, "consistency",
                                      exit_costs=COSTS)
  assert free.info["risk_name"] == "consistency"
  assert free.info["bound"] == "binomial"
  np.testing.assert_array_equal(free.thresholds, labelled.thresholds)
  assert np.isnan(free.val_accuracy) and "val_drop" not in free.info
  with pytest.raises(errors.InputError, match="needs labels"):
    certify.certify_accuracy(z, None, 0.02, 0.1, "accuracy_drop")
  # With labels the default risk is the accuracy drop, with wsr.
  auto = certify.certify_accuracy(z, y, 0.02, 0.1, exit_costs=COSTS)
  assert (auto.info["risk_name"], auto.info["bound"]) == ("accuracy_drop",
                                                          "wsr")


def test_too_few_examples_fall_back_to_the_final_exit():
  z, y = synthetic(100, np.random.default_rng(6))
  for risk in ("consistency", "accuracy_drop"):
    with pytest.warns(ltt.CertificationWarning, match=r"n = 100 validation "
                      r"examples are too few"):
      cal = certify.certify_accuracy(z, y, 0.01, 0.1, risk,
                                     exit_costs=COSTS)
    assert cal.param == np.inf and cal.val_avg_cost == 3.0
    assert cal.info["min_n"] > 100


def test_all_exits_equally_accurate():
  """Every exit predicts the same class: the drop and the disagreement are
  0 at every lambda, so every image is certified to leave at exit 0."""
  rng = np.random.default_rng(7)
  z1, y = synthetic(1000, rng, acc=(0.8,))
  z = np.repeat(z1, 3, axis=0)
  for risk in ("consistency", "accuracy_drop"):
    cal = certify.certify_accuracy(z, y, 0.01, 0.1, risk, exit_costs=COSTS)
    assert cal.val_avg_cost == 1.0 and cal.info["val_drop"] == 0.0


def test_joint_rule_meets_both_or_says_which_binds():
  rng = np.random.default_rng(8)
  z, y = synthetic(3000, rng)
  acc = certify.certify_accuracy(z, y, 0.02, 0.05, exit_costs=COSTS)
  # A generous budget: the accuracy rule is affordable, and with prefer =
  # "accuracy" the joint rule exits later (more accurate) than it, up to B.
  joint = certify.certify_joint(z, y, 0.02, 2.8, 0.1, exit_costs=COSTS)
  assert joint.info["feasible"] and joint.info["binding"] == "cost"
  assert joint.param >= acc.param and joint.val_avg_cost <= 2.8
  assert joint.info["lambda_accuracy"] == acc.param  # same test at delta/2
  cheap = certify.certify_joint(z, y, 0.02, 2.8, 0.1, exit_costs=COSTS,
                          prefer="cost")
  assert cheap.param == acc.param and cheap.info["binding"] == "accuracy"
  # A budget the accuracy-certified rules exceed.
  tight = certify.certify_joint(z, y, 0.02, 1.05, 0.1, exit_costs=COSTS)
  assert not tight.info["feasible"] and tight.info["binding"] == "both"
  assert tight.info["certified_risk"] is None
  assert tight.val_avg_cost <= 1.05 and "meets the budget only" in \
      tight.info["note"]
  # Too few examples for any accuracy guarantee.
  few = certify.certify_joint(z[:, :50], y[:50], 0.01, 2.0, 0.1, exit_costs=COSTS)
  assert not few.info["feasible"] and few.info["binding"] == "accuracy"


def test_joint_violation_rate_within_delta():
  """Over random calibration/test splits the joint rule breaks eps or B at
  most delta of the time (up to sampling noise)."""
  from mexd.early_exit import calibrate  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(9)
  z, y = synthetic(6000, rng)
  delta, trials = 0.2, 100
  vr = calibrate.violation_rate(z, y, 0.02, delta, n_trials=trials, rng=0,
                                n_cal=1000, budget=2.2, exit_costs=COSTS)
  assert vr["rate"] <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)
  assert vr["costs"].mean() > 1.5  # not trivially at exit 0
  assert vr["risk_rate"] <= vr["rate"] and vr["cost_rate"] <= vr["rate"]
