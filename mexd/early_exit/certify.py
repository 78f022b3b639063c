"""Exit thresholds with guarantees on new data (host-side NumPy).

Learn-then-Test (Angelopoulos, Bates, Candes, Jordan, Lei 2021) over a
data-independent grid of shared thresholds lambda (docs/early_exit.md §2.4):

  * `certify_accuracy`: the most aggressive lambda with
    P(risk(lambda_hat) > eps) <= delta, for the risk
      "consistency"    1{pred_lambda != pred_final}: needs no labels, and
                       bounds the accuracy drop from above;
      "accuracy_drop"  1{pred_lambda wrong} - 1{pred_final wrong}, the drop
                       itself (needs labels).
  * `certify_budget`: the most accurate (latest-exiting) lambda with
    P(expected cost per image > B) <= delta, a certified compute budget.
  * `certify_joint`: both at once, P(drop > eps or cost > B) <= delta.

Every function takes validation arrays only; the guarantee holds when
validation and future images are exchangeable (i.i.d. from one
distribution). The returned `rules.Calibration` records in `info` the
bound, eps, delta, B, n, the certified targets and the empirical values.
"""

from typing import Any, Dict, Optional, Sequence
import warnings

import numpy as np

from mexd import errors
from mexd.early_exit import bounds as bounds_lib
from mexd.early_exit import ltt
from mexd.early_exit import policies
from mexd.early_exit import rules

Array = Any
RISKS = ("consistency", "accuracy_drop")
PREFER = ("accuracy", "cost")


def check_risk(risk: str) -> None:
  if risk not in RISKS:
    raise errors.InputError(f"unknown risk {risk!r}; valid: "
                            f"{', '.join(RISKS)}")


def resolve_risk(risk: Optional[str], has_labels: bool) -> str:
  """None -> "accuracy_drop" with labels (it certifies more, see
  docs/early_exit.md §2.4), "consistency" without; a name is checked."""
  if risk is None:
    return "accuracy_drop" if has_labels else "consistency"
  check_risk(risk)
  return risk


def _check_delta(delta) -> None:
  if delta is None or not 0.0 < delta < 1.0:
    raise errors.InputError(f"delta must lie in (0, 1), got {delta}")


class Arrays:
  """Validation scores, predictions and costs, and the grid's exits.

  Args:
    s: [E, N] scores; preds: [E, N] argmax; costs: [E] cumulative costs;
    labels: [N] or None; lambdas: the grid; seed: `wsr`'s example order.
  """

  def __init__(self, s, preds, costs, labels, lambdas, seed):
    self.s, self.preds, self.costs = s, preds, costs
    self.num_exits, self.n = self.s.shape
    if self.num_exits < 2:
      raise errors.InputError("a guarantee needs E >= 2 exits")
    self.labels = None if labels is None else np.asarray(labels)
    if self.labels is not None and self.labels.shape != (self.n,):
      raise errors.InputError(f"labels {self.labels.shape} must be "
                              f"[{self.n}]")
    self.lambdas = np.unique(np.asarray(lambdas, np.float32))  # ascending
    pmax = np.maximum.accumulate(self.s[:-1], axis=0)  # [E-1, N]
    # exits[l, n] = #{k < E-1 : max_{j<=k} s[j, n] < lambda_l}, as
    # `rules.exits` (an exit is taken when s >= lambda).
    self.exits = (pmax[None] < self.lambdas[:, None, None]).sum(1)  # [L, N]
    # The bets of `wsr` see the examples in a seeded order that does not
    # depend on their values.
    self.order = np.random.default_rng(seed).permutation(self.n)

  @classmethod
  def from_logits(cls, logits, labels, policy, exit_costs, lambdas, seed):
    logits = np.asarray(logits)
    s, preds, costs = rules.prepare(logits, policy, exit_costs)
    if lambdas is None:
      lambdas = rules.default_lambdas(policy, s.shape[0], logits.shape[-1])
    return cls(s, preds, costs, labels, lambdas, seed)

  def pick(self, table):
    """table [E, N] -> [L, N]: the value at each lambda's exit."""
    return table[self.exits, np.arange(self.n)]

  def risk(self, risk: str, eps: float):
    """(losses [L, N] in [0, 1], alpha) of an accuracy risk at eps."""
    check_risk(risk)
    if risk == "consistency":
      return (self.pick(self.preds != self.preds[-1]).astype(np.float64),
              eps)
    if self.labels is None:
      raise errors.InputError("risk 'accuracy_drop' needs labels; "
                              "'consistency' needs none")
    wrong = (self.preds != self.labels[None]).astype(np.float64)
    # In {-1, 0, 1}, mapped to [0, 1]: drop <= eps <=> (l + 1) / 2 <= ...
    return (self.pick(wrong) - wrong[-1] + 1.0) / 2.0, (eps + 1.0) / 2.0

  def cost(self, budget: float):
    """(losses [L, N] in [0, 1], alpha) of the cost at budget B."""
    c0, c1 = self.costs[0], self.costs[-1]
    return ((self.costs[self.exits] - c0) / (c1 - c0),
            (budget - c0) / (c1 - c0))

  def pvalues(self, losses, alpha, bound, delta):
    return bounds_lib.pvalues(losses[:, self.order], alpha, bound, delta)

  def rule(self, lam):
    return np.asarray(policies.uniform_thresholds(lam, self.num_exits),
                      np.float32)

  def describe(self, thresholds) -> Dict[str, Any]:
    """Validation values of a rule: cost, exit fractions, consistency risk,
    accuracy and drop (the last two only with labels)."""
    ex = rules.exits(self.s, thresholds)
    cols = np.arange(self.n)
    d = {"val_avg_cost": float(self.costs[ex].mean()),
         "val_exit_fraction": np.bincount(
             ex, minlength=self.num_exits).astype(float) / self.n,
         "val_consistency_risk": float(np.mean(
             self.preds[ex, cols] != self.preds[-1]))}
    if self.labels is not None:
      correct = self.preds == self.labels[None]
      d["val_accuracy"] = float(correct[ex, cols].mean())
      d["val_drop"] = float(correct[-1].mean() - d["val_accuracy"])
    return d


def _leading(pv: np.ndarray, delta: float) -> int:
  """Fixed-sequence testing: how many leading p-values are <= delta."""
  return int(np.cumprod(pv <= delta).sum())


def _accuracy_search(a: Arrays, eps, delta, risk, bound):
  """Grid from +inf down; returns (lambda or +inf, info)."""
  if not 0.0 < eps < 1.0:
    raise errors.InputError(f"eps must lie in (0, 1), got {eps}")
  losses, alpha = a.risk(risk, eps)
  losses, lams = losses[::-1], a.lambdas[::-1]  # most conservative first
  pv = a.pvalues(losses, alpha, bound, delta)
  r = _leading(pv, delta)
  lam = lams[r - 1] if r else np.float32(np.inf)
  mean = losses.mean(-1)
  if risk == "accuracy_drop":
    mean = 2.0 * mean - 1.0
  return lam, {"lambdas": lams, "risk": mean, "p_values": pv,
               "num_rejected": r}


def _budget_search(a: Arrays, budget, delta, bound):
  """Grid from -inf up; returns (lambda, info)."""
  c0, c1 = a.costs[0], a.costs[-1]
  if not c0 <= budget:
    raise errors.InputError(
        f"budget {budget} is below the cost {c0} of the first exit: no exit "
        "rule can meet it")
  if budget >= c1:  # Every rule meets it; the final exit is the best.
    return np.float32(np.inf), {"lambdas": a.lambdas, "num_rejected": 0,
                                "note": f"budget {budget} >= the full cost "
                                        f"{c1}: every image takes the final "
                                        "exit, with certainty"}
  if budget == c0:
    pv = np.ones(a.lambdas.size)
  else:
    losses, alpha = a.cost(budget)
    pv = a.pvalues(losses, alpha, bound, delta)
  r = _leading(pv, delta)
  # Nothing certified: lambda = -inf sends every image to exit 0, whose
  # cost c0 <= B holds with certainty.
  lam = a.lambdas[r - 1] if r else np.float32(-np.inf)
  info = {"lambdas": a.lambdas, "p_values": pv, "num_rejected": r}
  if not r:
    info["note"] = (f"no threshold of the grid certified at budget {budget}"
                    f" (n = {a.n}); every image leaves at exit 0, whose "
                    f"cost {c0} meets it with certainty")
  return lam, info


def _calibration(a: Arrays, lam, info):
  thresholds = a.rule(lam)
  desc = a.describe(thresholds)
  info.update(desc)
  return rules.Calibration(thresholds, desc.get("val_accuracy",
                                                    float("nan")),
                               desc["val_avg_cost"], "shared", float(lam),
                               info)


def certify_accuracy(val_logits: Array, val_labels: Optional[Array],
                     eps: float, delta: float = 0.1,
                     risk: Optional[str] = None,
                     bound: str = bounds_lib.DEFAULT_BOUND,
                     policy: str = "max_prob",
                     lambdas: Optional[Sequence[float]] = None,
                     exit_costs: Optional[Sequence[float]] = None,
                     seed: int = 0) -> rules.Calibration:
  """The most aggressive shared threshold with P(risk > eps) <= delta.

  The grid (`rules.default_lambdas`, or `lambdas`) is tested from the
  most conservative lambda down; testing stops at the first p-value > delta
  (fixed-sequence testing controls the family-wise error at delta, for any
  risk curve) and the last rejected lambda is returned, or +inf (the final
  exit only, risk 0) if none is.

  Args:
    val_logits: [E, N, C] validation (or unlabeled held-out) logits.
    val_labels: [N] labels, or None (risk "consistency" needs none).
    eps: tolerated risk in (0, 1) (an accuracy drop, e.g. 0.01 = 1 point).
    delta: failure probability in (0, 1).
    risk: "consistency" or "accuracy_drop" (`RISKS`); None: accuracy_drop
      with labels, consistency without (`resolve_risk`).
    bound: one of `bounds.BOUNDS`, or "auto" (binomial for the consistency
      risk, wsr for the accuracy drop; `bounds.resolve`).
    policy: exit score.
    lambdas: the grid (must not depend on the validation data).
    exit_costs: [E] cumulative costs (default k + 1), for the reported cost.
    seed: order of the examples for `wsr`'s bets.

  Returns:
    Calibration; `info` holds lambdas (tested order), risk (empirical, per
    lambda), p_values, num_rejected, min_n, note, and the validation values
    of the chosen rule (`val_avg_cost`, `val_consistency_risk`,
    `val_accuracy` and `val_drop` with labels, `val_exit_fraction`).
  """
  _check_delta(delta)
  cal = accuracy_rule(Arrays.from_logits(val_logits, val_labels, policy,
                                         exit_costs, lambdas, seed),
                      eps, delta, risk, bound)
  if cal.info["note"]:
    warnings.warn(cal.info["note"], ltt.CertificationWarning, stacklevel=2)
  return cal


def accuracy_rule(a: Arrays, eps: float, delta: float,
                  risk: Optional[str], bound: str) -> rules.Calibration:
  """`certify_accuracy` on prepared arrays (no warning)."""
  risk = resolve_risk(risk, a.labels is not None)
  bound = bounds_lib.resolve(bound, risk == "consistency")
  lam, info = _accuracy_search(a, eps, delta, risk, bound)
  info.update(bound=bound, risk_name=risk, eps=eps, delta=delta, n=a.n,
              certified_risk=eps,
              min_n=ltt.ltt_min_n(eps, delta, bound, risk),
              note=ltt.ltt_note(a.n, eps, delta, info["p_values"], bound,
                                risk))
  return _calibration(a, lam, info)


def certify_budget(val_logits: Array, budget: float, delta: float = 0.1,
                   bound: str = bounds_lib.DEFAULT_BOUND,
                   policy: str = "max_prob",
                   exit_costs: Optional[Sequence[float]] = None,
                   lambdas: Optional[Sequence[float]] = None,
                   val_labels: Optional[Array] = None,
                   seed: int = 0) -> rules.Calibration:
  """A certified compute budget: P(E[cost per image] > B) <= delta.

  The per-image cost of a rule lies in [c_0, c_{E-1}] (the first and the
  full cascade's cost) and grows with lambda, so the grid is tested from
  the cheapest lambda up, on the normalised cost (c - c_0) / (c_{E-1} -
  c_0) against (B - c_0) / (c_{E-1} - c_0); the last certified lambda (the
  latest-exiting, most accurate rule that is still certified) is returned.
  B = c_0 or no certified lambda: every image leaves at exit 0 (lambda =
  -inf, cost c_0 with certainty); B >= c_{E-1}: the final exit.
  No labels are needed (they only add `val_accuracy`).

  Args:
    val_logits: [E, N, C]; budget: B in the units of `exit_costs` (default
      k + 1); delta, bound, policy, lambdas, seed: as in `certify_accuracy`.

  Raises:
    InputError: B below the first exit's cost.
  """
  _check_delta(delta)
  return budget_rule(Arrays.from_logits(val_logits, val_labels, policy,
                                        exit_costs, lambdas, seed),
                     budget, delta, bound)


def budget_rule(a: Arrays, budget: float, delta: float,
                bound: str) -> rules.Calibration:
  """`certify_budget` on prepared arrays."""
  bound = bounds_lib.resolve(bound, False)
  lam, info = _budget_search(a, float(budget), delta, bound)
  info.update(bound=bound, delta=delta, budget=float(budget), n=a.n,
              certified_cost=float(budget))
  return _calibration(a, lam, info)


def certify_joint(val_logits: Array, val_labels: Optional[Array], eps: float,
            budget: float, delta: float = 0.1, risk: Optional[str] = None,
            bound: str = bounds_lib.DEFAULT_BOUND, policy: str = "max_prob",
            exit_costs: Optional[Sequence[float]] = None,
            lambdas: Optional[Sequence[float]] = None,
            prefer: str = "accuracy", seed: int = 0) -> rules.Calibration:
  """Accuracy drop <= eps and expected cost <= B, jointly w.p. >= 1 - delta.

  The accuracy risk is certified at delta / 2 from the conservative end
  (the set S_acc of lambdas at or above the last rejected one) and the cost
  at delta / 2 from the cheap end (S_cost, at or below its last certified
  lambda); by the union bound every lambda in S_acc and S_cost meets both
  with probability >= 1 - delta. `prefer="accuracy"` returns the
  latest-exiting such lambda (the cost constraint binds), "cost" the
  cheapest (the accuracy constraint binds). If the two sets do not meet,
  `info["feasible"]` is False, the returned rule is the cost-certified one
  (a deployment is sized by B) and `info["binding"]` says which constraint
  fails: "accuracy" (nothing is accuracy-certified: too few examples or
  early exits that disagree), or "both" (each alone is certified, but the
  accuracy-certified rules cost more than B).

  Args: as in `certify_accuracy` and `certify_budget`; prefer: `PREFER`.
  """
  _check_delta(delta)
  return joint_rule(Arrays.from_logits(val_logits, val_labels, policy,
                                       exit_costs, lambdas, seed),
                    eps, budget, delta, risk, bound, prefer)


def joint_rule(a: Arrays, eps: float, budget: float, delta: float,
               risk: Optional[str], bound: str,
               prefer: str) -> rules.Calibration:
  """`certify_joint` on prepared arrays ("auto" resolves per test: the accuracy
  risk's bound is recorded in `info["bound"]`, the cost's in
  `info["cost_bound"]`)."""
  if prefer not in PREFER:
    raise errors.InputError(f"prefer must be one of {PREFER}, got "
                            f"{prefer!r}")
  risk = resolve_risk(risk, a.labels is not None)
  cost_bound = bounds_lib.resolve(bound, False)
  bound = bounds_lib.resolve(bound, risk == "consistency")
  lam_acc, acc_info = _accuracy_search(a, eps, delta / 2, risk, bound)
  lam_cost, cost_info = _budget_search(a, float(budget), delta / 2,
                                       cost_bound)
  feasible = lam_acc <= lam_cost
  if not feasible:
    lam = lam_cost
    binding = "accuracy" if not acc_info["num_rejected"] else "both"
  elif prefer == "accuracy":
    lam, binding = lam_cost, "cost"
  else:
    lam, binding = lam_acc, "accuracy"
  info = {"bound": bound, "cost_bound": cost_bound, "risk_name": risk,
          "eps": eps, "delta": delta,
          "budget": float(budget), "n": a.n, "feasible": bool(feasible),
          "binding": binding, "prefer": prefer, "lambda_accuracy":
          float(lam_acc), "lambda_cost": float(lam_cost),
          "accuracy_test": acc_info, "cost_test": cost_info,
          "certified_risk": eps if feasible else None,
          "certified_cost": float(budget)}
  if not feasible:
    info["note"] = (
        f"no threshold meets both eps = {eps:g} and budget {budget:g} at "
        f"delta = {delta:g} (n = {a.n}): the accuracy guarantee needs "
        f"lambda >= {float(lam_acc):.4g}, the budget lambda <= "
        f"{float(lam_cost):.4g}; the rule returned meets the budget only")
  return _calibration(a, lam, info)
