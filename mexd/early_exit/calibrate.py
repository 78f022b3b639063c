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
import warnings

import numpy as np

from mexd import errors
from mexd.early_exit import policies
# The Learn-then-Test statistics, importable from here as well.
from mexd.early_exit.ltt import (CertificationWarning, binom_cdf,  # pylint: disable=unused-import
                                 hb_pvalue, ltt_min_eps, ltt_min_n, ltt_note)

Array = Any

# docs/methods.md §6.2: p = j / 20, j = 1..40.
DEFAULT_PS = tuple(j / 20 for j in range(1, 41))


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


def _scores(logits, policy) -> np.ndarray:
  """[E, N, C] -> float32 scores [E, N] (NumPy), as `simulate` sees them."""
  return np.asarray(policies.scores(np.asarray(logits), policy), np.float32)


def _prepare(logits, policy, exit_costs=None):
  """-> scores [E, N] f32, argmax [E, N], costs [E] f64 (NumPy)."""
  logits = np.asarray(logits)
  s = _scores(logits, policy)
  costs = np.asarray(policies.default_costs(logits.shape[0])
                     if exit_costs is None else exit_costs, np.float64)
  if costs.shape != (logits.shape[0],):
    raise errors.InputError(f"exit_costs {costs.shape} must have E = "
                            f"{logits.shape[0]} entries")
  return s, np.argmax(logits, -1), costs


def _exits(s: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
  """NumPy twin of `policies.exit_index`: [E, N], [E] -> [N]."""
  ok = s >= np.asarray(thresholds, np.float32)[:, None]
  ok[-1] = True
  return np.argmax(ok, axis=0)


def _avg_cost(counts: np.ndarray, costs: np.ndarray) -> np.ndarray:
  """Counts per exit [..., E] -> average cost [...].

  One formula, with one summation order, for every candidate and for the
  reported cost, so that a budget check on validation is exact.
  """
  return (counts * costs).sum(-1) / counts.sum(-1)


def _evaluate(s, correct, costs, thresholds):
  """(accuracy, avg cost) of one threshold vector on precomputed arrays."""
  ex = _exits(s, thresholds)
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


def _shared_table(s, correct, costs, extra=None):
  """Accuracy [T], avg cost [T] (+ extra sums) of every shared lambda."""
  num_exits, n = s.shape
  onehot = np.broadcast_to(np.eye(num_exits)[:, :, None], (num_exits,) * 2
                           + (n,))
  rows = [correct[None].astype(np.float64), onehot]
  if extra is not None:
    rows.append(extra[None])
  lambdas, sums = _sweep(s, np.concatenate(rows, axis=0))
  counts = sums[1:1 + num_exits].T  # [T, E]
  return lambdas, sums[0] / n, _avg_cost(counts, costs), sums[1 + num_exits:]


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
  s = _scores(val_logits, policy)
  return _msdnet_walk(s, msdnet_proportions(p, s.shape[0]))


def msdnet_sweep(val_logits: Array, ps: Sequence[float] = DEFAULT_PS,
                 policy: str = "max_prob"):
  """MSDNet thresholds for every p (default p = j/20, j = 1..40).

  Returns:
    (ps [P], thresholds [P, E]); evaluate on test with
    `policies.evaluate_curve(test_logits, test_labels, thresholds, policy,
    exit_costs)` to get the (avg cost, accuracy) curve.
  """
  s = _scores(val_logits, policy)
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
  s, preds, costs = _prepare(val_logits, policy, exit_costs)
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
    lambdas, acc, cost, _ = _shared_table(s, correct, costs)
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


def calibrate_accuracy_drop(val_logits: Array, val_labels: Array,
                            eps: float, policy: str = "max_prob",
                            delta: Optional[float] = None,
                            bound: str = "hoeffding_bentkus",
                            lambdas: Optional[Sequence[float]] = None,
                            exit_costs: Optional[Sequence[float]] = None
                            ) -> Calibration:
  """The most aggressive shared threshold with accuracy drop <= eps.

  delta=None (empirical): the smallest lambda over all distinct candidates
  with acc_final - acc(lambda) <= eps on validation.

  delta given (Learn-then-Test with fixed-sequence testing): the loss of an
  example is the disagreement l(lambda) = 1{pred(lambda) != pred_final} in
  {0, 1}; since 1{pred wrong} - 1{final wrong} <= l, its risk
  R(lambda) = E[l(lambda)] bounds the expected accuracy drop from above.
  The lambdas of a fixed, data-independent grid (`default_lambdas`) are
  tested from the most conservative (largest) down with `hb_pvalue` for
  H0: R(lambda) > eps; testing stops at the first p-value > delta and the
  last rejected lambda is returned (+inf, i.e. the final exit only, if none
  is rejected; there l = 0). Guarantee: over the draw of n i.i.d. validation
  examples, P(R(lambda_hat) > eps) <= delta, hence
  P(expected accuracy drop of lambda_hat > eps) <= delta.

  Sample size: the smallest p-value is (1 - eps)^n (at zero disagreements),
  so with n < ceil(log(delta) / log(1 - eps)) (`ltt_min_n`) nothing can be
  rejected. If nothing is, `info["note"]` says why (too few examples: the n
  or eps that would do) and a `CertificationWarning` is issued;
  `info["min_n"]` is that bound.

  Args:
    val_logits: [E, N, C]; val_labels: [N].
    eps: tolerated accuracy drop in (0, 1).
    policy: score name.
    delta: error level of the guarantee, or None.
    bound: "hoeffding_bentkus" or "hoeffding" (see `hb_pvalue`).
    lambdas: LTT grid (default `default_lambdas`); tested in descending
      order, i.e. most conservative first.
    exit_costs: [E] costs, only for the reported validation cost.
  """
  if delta is not None and not 0.0 < delta < 1.0:
    raise errors.InputError(f"delta must lie in (0, 1), got {delta}")
  s, preds, costs = _prepare(val_logits, policy, exit_costs)
  if delta is not None and lambdas is None:
    lambdas = default_lambdas(policy, s.shape[0], np.shape(val_logits)[-1])
  cal = _calibrate_drop(s, preds, preds == np.asarray(val_labels)[None],
                        costs, eps, delta, bound, lambdas)
  if delta is not None:
    cal.info["min_n"] = ltt_min_n(eps, delta, bound)
    cal.info["note"] = ltt_note(s.shape[1], eps, delta, cal.info["p_values"],
                                bound)
    if cal.info["note"]:
      warnings.warn(cal.info["note"], CertificationWarning, stacklevel=2)
  return cal


def _calibrate_drop(s, preds, correct, costs, eps, delta, bound, lambdas):
  """`calibrate_accuracy_drop` on scores [E, N], argmax and correct [E, N]."""
  if not 0.0 < eps < 1.0:
    raise errors.InputError(f"eps must lie in (0, 1), got {eps}")
  num_exits, n = s.shape
  disagree = (preds != preds[-1]).astype(np.float64)  # [E, N] loss
  grid, acc, _, loss_sum = _shared_table(s, correct, costs, disagree)
  if delta is None:
    lam = grid[np.flatnonzero(acc[-1] - acc <= eps + 1e-12)[0]]
    return _result(s, correct, costs, policies.uniform_thresholds(
        lam, num_exits), "shared", lam, eps=eps)
  lambdas = np.sort(np.asarray(lambdas, np.float32))[::-1]  # conservative 1st
  # Risk at each tested lambda: the state of the next candidate >= lambda.
  risk = loss_sum[0][np.searchsorted(grid, lambdas, side="left")] / n
  pvals = np.array([hb_pvalue(r, n, eps, bound) for r in risk])
  rejected = np.cumprod(pvals <= delta).astype(bool)
  lam = lambdas[rejected][-1] if rejected.any() else np.float32(np.inf)
  return _result(s, correct, costs, policies.uniform_thresholds(
      lam, num_exits), "shared", lam, eps=eps, delta=delta, bound=bound,
                 lambdas=lambdas, risk=risk, p_values=pvals,
                 num_rejected=int(rejected.sum()))


def violation_rate(logits: Array, labels: Array, eps: float,
                   delta: Optional[float] = None, policy: str = "max_prob",
                   n_trials: int = 100, rng: Any = 0,
                   calib_fraction: float = 0.5,
                   bound: str = "hoeffding_bentkus",
                   lambdas: Optional[Sequence[float]] = None
                   ) -> Dict[str, Any]:
  """How often the calibrated rule breaks the tolerance on held-out data.

  Each trial splits the examples at random, calibrates with
  `calibrate_accuracy_drop` on `calib_fraction` of them and measures the
  accuracy drop acc_final - acc_policy on the rest.

  Args:
    logits: [E, N, C]; labels: [N] (a labelled pool, e.g. the test set).
    eps, delta, policy, bound, lambdas: as in
      `calibrate_accuracy_drop`.
    n_trials: number of random splits.
    rng: seed or `np.random.Generator`.

  Returns:
    dict with "rate" (fraction of trials with test drop > eps), "drops"
    [n_trials], "lambdas" [n_trials], "avg_exit" [n_trials] mean exit index.
  """
  logits, labels = np.asarray(logits), np.asarray(labels)
  rng = np.random.default_rng(rng)
  s, preds, costs = _prepare(logits, policy)
  correct = preds == labels[None]
  if delta is not None and lambdas is None:
    lambdas = default_lambdas(policy, s.shape[0], logits.shape[-1])
  n = labels.shape[0]
  n_cal = int(round(calib_fraction * n))
  drops, lams, avg_exit = [], [], []
  for _ in range(n_trials):
    perm = rng.permutation(n)
    cal, test = perm[:n_cal], perm[n_cal:]
    c = _calibrate_drop(s[:, cal], preds[:, cal], correct[:, cal], costs,
                        eps, delta, bound, lambdas)
    ex = _exits(s[:, test], c.thresholds)
    acc = correct[ex, test].mean()
    drops.append(correct[-1, test].mean() - acc)
    lams.append(c.param)
    avg_exit.append(ex.mean())
  drops = np.asarray(drops)
  return {"rate": float(np.mean(drops > eps + 1e-12)), "drops": drops,
          "lambdas": np.asarray(lams), "avg_exit": np.asarray(avg_exit)}
