"""Exit scores, exit indices and simulate() on hand-built cases."""

import numpy as np
import pytest

from mexd.early_exit import policies

NEG_INF = -np.inf


def _logits_from_probs(probs):
  return np.log(np.asarray(probs, np.float64)).astype(np.float32)


def test_max_prob_hand_case():
  # E = 3 exits, N = 4 examples, C = 2 classes.
  probs = [
      [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45]],  # exit 0
      [[0.8, 0.2], [0.25, 0.75], [0.4, 0.6], [0.5, 0.5]],  # exit 1
      [[0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.45, 0.55]],  # exit 2
  ]
  labels = np.array([0, 1, 0, 1])
  out = policies.simulate(_logits_from_probs(probs), labels,
                          [0.85, 0.7, NEG_INF], "max_prob",
                          exit_costs=[1.0, 3.0, 6.0])
  # ex0: 0.9 >= 0.85 -> exit 0, pred 0 (right). ex1: 0.6 < 0.85, 0.75 >= 0.7
  # -> exit 1, pred 1 (right). ex2: 0.7, 0.6 -> exit 2, pred 1 (wrong).
  # ex3: 0.55, 0.5 -> exit 2, pred 1 (right).
  np.testing.assert_array_equal(out["exit"], [0, 1, 2, 2])
  np.testing.assert_array_equal(out["predictions"], [0, 1, 1, 1])
  assert float(out["accuracy"]) == pytest.approx(0.75)
  assert float(out["avg_cost"]) == pytest.approx((1 + 3 + 6 + 6) / 4)
  np.testing.assert_allclose(out["exit_fraction"], [0.25, 0.25, 0.5])


def test_scores_match_numpy():
  z = np.random.default_rng(0).normal(size=(3, 7, 5)).astype(np.float32) * 3
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  srt = np.sort(p, -1)
  np.testing.assert_allclose(policies.scores(z, "max_prob"), p.max(-1),
                             rtol=1e-5)
  np.testing.assert_allclose(policies.scores(z, "entropy"),
                             (p * np.log(p)).sum(-1), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(policies.scores(z, "margin"),
                             srt[..., -1] - srt[..., -2], rtol=1e-5,
                             atol=1e-6)


def test_entropy_score_and_threshold():
  # Example 0 is one-hot at exit 0 (H = 0, a -inf logit), example 1 uniform
  # (H = log 2): with H <= 0.1 only example 0 leaves early.
  z = np.array([[[0.0, -np.inf], [0.0, 0.0]],
                [[0.0, 0.0], [5.0, 0.0]]], np.float32)
  q = 1 / (1 + np.exp(-5.0))
  h5 = -(q * np.log(q) + (1 - q) * np.log(1 - q))
  s = np.asarray(policies.scores(z, "entropy"))
  np.testing.assert_allclose(s, [[0.0, -np.log(2)], [-np.log(2), -h5]],
                             rtol=1e-5)
  np.testing.assert_array_equal(
      policies.exit_index(s, [-0.1, NEG_INF]), [0, 1])


def test_patience_hand_case():
  # Argmax per exit (E = 4) of 4 examples, C = 4.
  preds = np.array([[1, 1, 2, 2],    # runs 1 2 1 2
                    [0, 1, 2, 3],    # runs 1 1 1 1
                    [2, 2, 2, 0],    # runs 1 2 3 1
                    [3, 0, 3, 3]])   # runs 1 1 1 2
  logits = np.where(np.arange(4)[None, None] == preds.T[:, :, None], 2.0,
                    0.0).astype(np.float32)  # [E, N, C]
  runs = np.asarray(policies.scores(logits, "patience"))
  np.testing.assert_array_equal(runs.T, [[1, 2, 1, 2], [1, 1, 1, 1],
                                         [1, 2, 3, 1], [1, 1, 1, 2]])
  labels = np.array([1, 3, 0, 3])
  out2 = policies.simulate(logits, labels, policies.uniform_thresholds(2, 4),
                           "patience")
  np.testing.assert_array_equal(out2["exit"], [1, 3, 1, 3])
  np.testing.assert_array_equal(out2["predictions"], [1, 3, 2, 3])
  assert float(out2["accuracy"]) == pytest.approx(0.75)
  out3 = policies.simulate(logits, labels, policies.uniform_thresholds(3, 4),
                           "patience")
  np.testing.assert_array_equal(out3["exit"], [3, 3, 2, 3])
  assert float(out3["accuracy"]) == pytest.approx(0.5)  # ex0, ex2 wrong


def test_final_exit_always_taken():
  s = np.array([[0.1, 0.9], [0.2, 0.3]], np.float32)
  # Even a +inf last threshold lets everybody left answer at the end.
  np.testing.assert_array_equal(policies.exit_index(s, [0.5, np.inf]),
                                [1, 0])
  with pytest.raises(ValueError, match="one entry per exit"):
    policies.exit_index(s, [0.5])


def test_unknown_policy_lists_valid_names():
  with pytest.raises(ValueError, match="valid policies: entropy, margin, "
                     "max_prob, patience"):
    policies.scores(np.zeros((2, 3, 4)), "confidence")
  with pytest.raises(ValueError, match="depends on earlier exits"):
    policies.get_score_fn("patience")


def test_evaluate_curve_matches_simulate_and_costs():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(3, 40, 6)).astype(np.float32) * 2
  y = rng.integers(0, 6, 40)
  costs = [2.0, 5.0, 7.0]
  th = np.array([[0.5, 0.4, NEG_INF], [0.3, 0.9, NEG_INF],
                 [1.1, 1.1, NEG_INF]], np.float32)
  curve = policies.evaluate_curve(z, y, th, "max_prob", costs)
  for i, t in enumerate(th):
    out = policies.simulate(z, y, t, "max_prob", costs)
    assert float(curve["accuracy"][i]) == pytest.approx(float(
        out["accuracy"]))
    frac = np.asarray(out["exit_fraction"])
    assert frac.sum() == pytest.approx(1.0)
    assert float(curve["avg_cost"][i]) == pytest.approx(frac @ costs)
  # Thresholds above 1 never fire: the final exit's accuracy and cost.
  final = np.mean(z[-1].argmax(-1) == y)
  assert float(curve["accuracy"][2]) == pytest.approx(final)
  assert float(curve["avg_cost"][2]) == pytest.approx(7.0)
  np.testing.assert_allclose(policies.per_exit_accuracy(z, y)[-1], final)
