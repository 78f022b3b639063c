"""Choosing exit thresholds on validation data (host-side NumPy).

Every function here takes validation arrays only and returns thresholds `[E]`
(float32, last entry -inf) that `policies.simulate` or `staged.StagedPredictor`
then apply to test data. Three protocols:

  * `msdnet_sweep`: MSDNet budgeted batch classification (docs/methods.md
    §6.2), one threshold vector per geometric exit distribution
    q_k ~ p^(k+1).
  * `calibrate_budget`: best validation accuracy with validation average cost
    <= B, over a shared threshold and the MSDNet geometric family.
  * `calibrate_accuracy_drop`: the most aggressive shared threshold whose
    accuracy drop vs the final exit is <= eps, either empirically or with the
    Learn-then-Test guarantee P(risk > eps) <= delta (Angelopoulos et al. 2021).

A *shared threshold* lambda means thresholds (lambda, ..., lambda, -inf). For
every score a larger lambda delays every example's exit (monotone family), so
the exit of example n is #{k < E-1 : max_{j<=k} s[j, n] < lambda}; the sweep
below evaluates all distinct lambdas exactly in O(EN log EN).
"""

from typing import Any, Dict, NamedTuple, Optional, Sequence

import numpy as np

from mexd import errors
from mexd.early_exit import bounds
from mexd.early_exit import certify
from mexd.early_exit import policies
from mexd.early_exit import rules
from mexd.early_exit.rules import Calibration, default_lambdas  # pylint: disable=unused-import
# The Learn-then-Test statistics, importable from here as well.
from mexd.early_exit.ltt import (CertificationWarning, binom_cdf,  # pylint: disable=unused-import
                                 hb_pvalue, ltt_min_eps, ltt_min_n, ltt_note)

Array = Any

# docs/methods.md §6.2: p = j / 20, j = 1..40.
DEFAULT_PS = tuple(j / 20 for j in range(1, 41))


def _avg_cost(counts: np.ndarray, costs: np.ndarray) -> np.ndarray:
  """Counts per exit [..., E] -> average cost [...].

  One formula, with one summation order, for every candidate and for the
  reported cost, so that a budget check on validation is exact.
  """
  return (counts * costs).sum(-1) / counts.sum(-1)


def _evaluate(s, correct, costs, thresholds):
  """(accuracy, avg cost) of one threshold vector on precomputed arrays."""
  ex = rules.exits(s, thresholds)
  counts = np.bincount(ex, minlength=s.shape[0]).astype(np.float64)
  return float(correct[ex, np.arange(s.shape[1])].mean()), float(
      _avg_cost(counts, costs))


def _sweep(s: np.ndarray, values: np.ndarray):
  """Sums of per-(exit, example) values under every shared threshold.

  Args:
    s: [E, N] scores.
    values: [Q, E, N] quantity q of example n if it exits at k.

  Returns:
    (lambdas [T] ascending distinct candidates, last = +inf; sums [Q, T] with
    sums[q, t] = sum_n values[q, exit_n(lambdas[t]), n]).
  """
  num_exits, n = s.shape
  pmax = np.maximum.accumulate(s[:-1], axis=0)  # [E-1, N]
  # Event (k, n): once lambda > pmax[k, n] example n moves from exit k to k+1.
  ev = pmax.ravel()
  k = np.repeat(np.arange(num_exits - 1), n)
  col = np.tile(np.arange(n), num_exits - 1)
  order = np.argsort(ev, kind="stable")
  delta = values[:, k + 1, col] - values[:, k, col]  # [Q, M]
  cum = np.concatenate([np.zeros((values.shape[0], 1)),
                        np.cumsum(delta[:, order], axis=1)], axis=1)
  cum += values[:, 0, :].sum(-1, keepdims=True)  # everybody at exit 0
  ev_sorted = ev[order]
  lambdas = np.append(np.unique(ev_sorted), np.float32(np.inf))
  # Events strictly below lambda have fired (exit test is s >= lambda).
  idx = np.searchsorted(ev_sorted, lambdas, side="left")
  return lambdas.astype(np.float32), cum[:, idx]


def _shared_table(s, correct, costs):
  """Accuracy [T], avg cost [T] of every shared lambda."""
  num_exits, n = s.shape
  onehot = np.broadcast_to(np.eye(num_exits)[:, :, None], (num_exits,) * 2
                           + (n,))
  rows = [correct[None].astype(np.float64), onehot]
  lambdas, sums = _sweep(s, np.concatenate(rows, axis=0))
  counts = sums[1:1 + num_exits].T  # [T, E]
  return lambdas, sums[0] / n, _avg_cost(counts, costs)


def _result(s, correct, costs, thresholds, family, param, **info):
  acc, cost = _evaluate(s, correct, costs, thresholds)
  return Calibration(np.asarray(thresholds, np.float32), acc, cost, family,
                     float(param), info)


# ----------------------------------------------------------------------------
# MSDNet budgeted batch classification (docs/methods.md §6.2).


def msdnet_proportions(p: float, num_exits: int) -> np.ndarray:
  """q_k = p^(k+1) / sum_{m=1..E} p^m, k = 0..E-1."""
  q = float(p) ** np.arange(1, num_exits + 1)
  return q / q.sum()


def _msdnet_walk(s: np.ndarray, q: np.ndarray) -> np.ndarray:
  num_exits, n = s.shape
  thresholds = np.full(num_exits, np.inf, np.float32)
  exited = np.zeros(n, bool)
  for k in range(num_exits - 1):
    out_n = int(np.floor(n * q[k]))
    order = np.argsort(-s[k], kind="stable")
    ranked = order[~exited[order]]  # not yet exited, descending score
    # As the reference code: if fewer than out_n remain, nobody exits here.
    if 1 <= out_n <= ranked.size:
      thresholds[k] = s[k, ranked[out_n - 1]]
    exited |= s[k] >= thresholds[k]
  thresholds[-1] = -np.inf
  return thresholds


def msdnet_thresholds(val_logits: Array, p: float,
                      policy: str = "max_prob") -> np.ndarray:
  """MSDNet thresholds for one p, from validation logits only.

  For k = 0..E-2: walk the validation images in descending score s[k],
  skipping those already exited; theta_k is the score of the floor(N q_k)-th
  remaining image (+inf if that count is 0 or exceeds the remaining images,
  as in MSDNet-PyTorch `dynamic_eval_find_threshold`); every image with
  s[k] >= theta_k exits. theta_{E-1} = -inf.

  Args:
    val_logits: [E, N, C] validation logits.
    p: geometric ratio (p < 1 favours early exits).
    policy: score; MSDNet uses "max_prob".

  Returns:
    [E] float32 thresholds.
  """
  s = rules.scores_np(val_logits, policy)
  return _msdnet_walk(s, msdnet_proportions(p, s.shape[0]))


def msdnet_sweep(val_logits: Array, ps: Sequence[float] = DEFAULT_PS,
                 policy: str = "max_prob"):
  """MSDNet thresholds for every p (default p = j/20, j = 1..40).

  Returns:
    (ps [P], thresholds [P, E]); evaluate on test with
    `policies.evaluate_curve(test_logits, test_labels, thresholds, policy,
    exit_costs)` to get the (avg cost, accuracy) curve.
  """
  s = rules.scores_np(val_logits, policy)
  ps = np.asarray(ps, np.float64)
  return ps, np.stack([_msdnet_walk(s, msdnet_proportions(p, s.shape[0]))
                       for p in ps])


# ----------------------------------------------------------------------------
# Average-cost budget.


def calibrate_budget(val_logits: Array, val_labels: Array, budget: float,
                     exit_costs: Optional[Sequence[float]] = None,
                     policy: str = "max_prob",
                     families: Sequence[str] = ("shared", "geometric"),
                     ps: Sequence[float] = DEFAULT_PS) -> Calibration:
  """Thresholds with the best validation accuracy at validation cost <= B.

  Candidates: every distinct shared threshold (exact sweep; it reaches every
  cost from exit 0 only to the full network) and the MSDNet thresholds for
  each p in `ps`. Among candidates whose validation average cost is <= B the
  most accurate wins (ties: lower cost, then "shared"). The budget holds
  exactly on validation; on test it holds up to sampling noise.

  Args:
    val_logits: [E, N, C]; val_labels: [N].
    budget: B, in the units of `exit_costs`.
    exit_costs: [E] cumulative cost of each exit (default k + 1).
    policy: score name.
    families: subset of ("shared", "geometric").
    ps: p grid of the geometric family.

  Raises:
    InputError: B above the full cost exit_costs[-1] or below exit_costs[0].
  """
  s, preds, costs = rules.prepare(val_logits, policy, exit_costs)
  if not costs[0] <= budget <= costs[-1]:
    raise errors.InputError(
        f"budget {budget} is outside [{costs[0]}, {costs[-1]}], "
        "the costs of the first and the last exit")
  bad = set(families) - {"shared", "geometric"}
  if bad or not families:
    raise errors.InputError(f"unknown families {sorted(bad)}; valid: shared, "
                            "geometric")
  correct = preds == np.asarray(val_labels)[None]
  best = None  # (accuracy, -cost, family rank, thresholds, family, param)
  if "shared" in families:
    lambdas, acc, cost = _shared_table(s, correct, costs)
    ok = np.flatnonzero(cost <= budget)  # never empty: lambda=min -> exit 0
    i = ok[np.lexsort((cost[ok], -acc[ok]))[0]]
    best = (acc[i], -cost[i], 1, policies.uniform_thresholds(
        lambdas[i], s.shape[0]), "shared", lambdas[i])
  if "geometric" in families:
    for p in ps:
      t = _msdnet_walk(s, msdnet_proportions(p, s.shape[0]))
      acc, cost = _evaluate(s, correct, costs, t)
      cand = (acc, -cost, 0, t, "geometric", p)
      if cost <= budget and (best is None or cand[:3] > best[:3]):
        best = cand
  if best is None:
    raise errors.InputError(
        f"no geometric p in {tuple(ps)} meets budget {budget}; "
        "add 'shared' to families")
  return _result(s, correct, costs, best[3], best[4], best[5], budget=budget)


# ----------------------------------------------------------------------------
# Accuracy-drop tolerance, empirical or with Learn-then-Test.


def calibrate_accuracy_drop(val_logits: Array, val_labels: Optional[Array],
                            eps: float, policy: str = "max_prob",
                            delta: Optional[float] = None,
                            bound: str = bounds.DEFAULT_BOUND,
                            lambdas: Optional[Sequence[float]] = None,
                            exit_costs: Optional[Sequence[float]] = None,
                            risk: Optional[str] = None, seed: int = 0
                            ) -> Calibration:
  """The most aggressive shared threshold with accuracy drop <= eps.

  delta=None (empirical): the smallest lambda over all distinct candidates
  with acc_final - acc(lambda) <= eps on validation. No guarantee.

  delta given (Learn-then-Test, `certify.certify_accuracy`): the grid
  `default_lambdas` (or `lambdas`) is tested from the most conservative
  lambda down for H0: R(lambda) > eps with `bound`; the last rejected lambda
  is returned (+inf, the final exit only, if none is). With risk
  "consistency" the loss is the disagreement 1{pred(lambda) != pred_final}:
  it needs no labels (val_labels may be None) and, since 1{pred wrong} -
  1{final wrong} <= it, bounds the accuracy drop from above; with
  "accuracy_drop" the loss is that difference itself. Guarantee: over the
  draw of n i.i.d. validation examples, P(R(lambda_hat) > eps) <= delta,
  hence P(expected accuracy drop of lambda_hat > eps) <= delta.

  Sample size: with n < `ltt_min_n(eps, delta, bound, risk)` (at eps =
  0.01, delta = 0.1: 230 for the consistency risk with the binomial bound,
  318 for the accuracy drop with wsr) nothing can be rejected; then
  `info["note"]` says why (too few examples: the n or eps that would do)
  and a `CertificationWarning` is issued.

  Args:
    val_logits: [E, N, C]; val_labels: [N] (None: only with delta given
      and risk "consistency").
    eps: tolerated accuracy drop in (0, 1).
    policy: score name.
    delta: error level of the guarantee, or None.
    bound: one of `bounds.BOUNDS`, or "auto" (`bounds.resolve`).
    lambdas: LTT grid (default `default_lambdas`); tested in descending
      order, i.e. most conservative first.
    exit_costs: [E] costs, only for the reported validation cost.
    risk: "consistency" or "accuracy_drop" (with delta); None:
      accuracy_drop with labels, consistency without.
    seed: example order of the `wsr` bound.
  """
  if delta is not None:
    return certify.certify_accuracy(val_logits, val_labels, eps, delta, risk,
                                    bound, policy, lambdas, exit_costs, seed)
  if val_labels is None:
    raise errors.InputError("the empirical rule (delta=None) needs labels; "
                            "give delta for the label-free guarantee")
  s, preds, costs = rules.prepare(val_logits, policy, exit_costs)
  return _empirical_drop(s, preds, preds == np.asarray(val_labels)[None],
                         costs, eps)


def _empirical_drop(s, preds, correct, costs, eps):
  """The empirical rule on scores [E, N], argmax and correct [E, N]."""
  del preds
  if not 0.0 < eps < 1.0:
    raise errors.InputError(f"eps must lie in (0, 1), got {eps}")
  grid, acc, _ = _shared_table(s, correct, costs)
  lam = grid[np.flatnonzero(acc[-1] - acc <= eps + 1e-12)[0]]
  return _result(s, correct, costs, policies.uniform_thresholds(
      lam, s.shape[0]), "shared", lam, eps=eps)


def violation_rate(logits: Array, labels: Array,
                   eps: Optional[float] = None,
                   delta: Optional[float] = None, policy: str = "max_prob",
                   n_trials: int = 100, rng: Any = 0,
                   calib_fraction: float = 0.5,
                   bound: str = bounds.DEFAULT_BOUND,
                   lambdas: Optional[Sequence[float]] = None, *,
                   risk: Optional[str] = None,
                   budget: Optional[float] = None,
                   n_cal: Optional[int] = None,
                   exit_costs: Optional[Sequence[float]] = None
                   ) -> Dict[str, Any]:
  """How often a calibrated rule breaks its target on held-out data.

  Each trial splits the labelled pool at random, calibrates on n_cal
  examples (default `calib_fraction` of them) and scores the rule on the
  rest. The rule: with eps and no delta the empirical one; with eps and
  delta `certify_accuracy` (risk, bound); with budget and delta
  `certify_budget`; with both `certify_joint`.

  Args:
    logits: [E, N, C]; labels: [N] (a labelled pool, e.g. the test set).
    eps, delta, policy, bound, lambdas, risk: as in
      `calibrate_accuracy_drop`; budget, exit_costs: as in
      `certify.certify_budget`.
    n_trials: number of random splits.
    rng: seed or `np.random.Generator`.

  Returns:
    dict of [n_trials] arrays on the held-out part: "drops" (acc_final -
    acc_rule), "consistency" (disagreement with the final exit), "costs"
    (mean cost), "avg_exit" (mean exit index), "early" (share leaving
    before the final exit), "lambdas"; and the rates:
    "rate" (trials with drop > eps; with a budget only, cost > B; with
    both, either), "risk_rate" (the certified risk > eps: the
    disagreement for "consistency", the drop for "accuracy_drop"),
    "cost_rate" (cost > B).
  """
  if eps is None and budget is None:
    raise errors.InputError("violation_rate needs eps, budget or both")
  if budget is not None and delta is None:
    raise errors.InputError("a budget guarantee needs delta")
  logits, labels = np.asarray(logits), np.asarray(labels)
  risk = certify.resolve_risk(risk, True)
  rng = np.random.default_rng(rng)
  s, preds, costs = rules.prepare(logits, policy, exit_costs)
  correct = preds == labels[None]
  if lambdas is None:
    lambdas = default_lambdas(policy, s.shape[0], logits.shape[-1])
  n = labels.shape[0]
  n_cal = int(round(calib_fraction * n)) if n_cal is None else int(n_cal)
  if not 0 < n_cal < n:
    raise errors.InputError(f"n_cal must lie in (0, {n}), got {n_cal}")
  out = {k: [] for k in ("drops", "consistency", "costs", "avg_exit",
                         "early", "lambdas")}
  for _ in range(n_trials):
    perm = rng.permutation(n)
    cal, test = perm[:n_cal], perm[n_cal:]
    if delta is None:
      c = _empirical_drop(s[:, cal], preds[:, cal], correct[:, cal], costs,
                          eps)
    else:
      a = certify.Arrays(s[:, cal], preds[:, cal], costs, labels[cal],
                         lambdas, 0)
      if budget is None:
        c = certify.accuracy_rule(a, eps, delta, risk, bound)
      elif eps is None:
        c = certify.budget_rule(a, budget, delta, bound)
      else:
        c = certify.joint_rule(a, eps, budget, delta, risk, bound,
                               "accuracy")
    ex = rules.exits(s[:, test], c.thresholds)
    out["drops"].append(correct[-1, test].mean() - correct[ex, test].mean())
    out["consistency"].append(np.mean(preds[ex, test] != preds[-1, test]))
    out["costs"].append(costs[ex].mean())
    out["avg_exit"].append(ex.mean())
    out["early"].append(np.mean(ex < s.shape[0] - 1))
    out["lambdas"].append(c.param)
  out = {k: np.asarray(v) for k, v in out.items()}
  tol = 1e-12
  if eps is not None:
    risk_vals = out["consistency"] if (delta is not None and risk ==
                                       "consistency") else out["drops"]
    out["risk_rate"] = float(np.mean(risk_vals > eps + tol))
  if budget is not None:
    out["cost_rate"] = float(np.mean(out["costs"] > budget * (1 + tol)))
  bad = np.zeros(n_trials, bool)
  if eps is not None:
    bad |= out["drops"] > eps + tol
  if budget is not None:
    bad |= out["costs"] > budget * (1 + tol)
  out["rate"] = float(np.mean(bad))
  return out
