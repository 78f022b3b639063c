"""The arguments of `mexd.evaluation.evaluate_run` and `python -m mexd.evaluate`:
what each accepts, and one check of all of them before anything is loaded.

The same text serves both: `cli=True` names the --flags, `cli=False` the
keyword arguments.
"""

from typing import Optional, Sequence

from mexd import early_exit as ee
from mexd import errors


# What each argument accepts; the CLI flag of `chosen_policy` is --policy.
_VALID = {
    "policies": "a comma-separated list of exit policies ({policies})",
    "budgets": "comma-separated fractions of the full network's cost in "
               "(0, 1], e.g. 0.5,0.8",
    "eps": "a tolerated accuracy drop in (0, 1), e.g. 0.02",
    "delta": "a failure probability in (0, 1), or {none} for the empirical "
             "rule (no guarantee)",
    "trials": "an integer >= 0 (0 skips the violation rate)",
    "policy": "one exit policy ({policies})",
    "workdir": "the work directory of a training run",
    "bound": "a concentration bound ({bounds})",
    "risk": "the certified risk ({risks}), or {auto} (accuracy_drop: "
            "the labels are there)",
    "certify_budget": "a fraction of the full network's cost in (0, 1] "
                      "(a certified average-cost budget, with --delta), or "
                      "{none_budget} for none",
}


def _valid(flag: str, cli: bool) -> str:
  return _VALID[flag].format(
      policies=", ".join(ee.policy_names()), none="0" if cli else "None",
      bounds=", ".join(("auto",) + ee.bounds.BOUNDS),
      risks=", ".join(ee.certify.RISKS), auto="'' (empty)" if cli else "None",
      none_budget="0" if cli else "None")


def check_args(*, policies: Sequence[str], budgets: Sequence[float],
               eps: float, delta, trials: int, chosen_policy: str,
               bound: str = ee.bounds.DEFAULT_BOUND,
               risk: Optional[str] = None,
               certify_budget: Optional[float] = None,
               cli: bool = False) -> None:
  """Checks the arguments of `evaluate_run` before anything is loaded.

  Raises:
    InputError: naming the argument (its --flag if `cli`) and what it
      accepts.
  """
  def name(flag, arg=None):
    return f"--{flag}" if cli else (arg or flag)

  def bad(flag, got, arg=None):
    raise errors.InputError(
        f"{name(flag, arg)} must be {_valid(flag, cli)}; got "
        f"{got}")

  if not policies:
    bad("policies", "an empty list")
  for flag, arg, values in (("policies", None, policies),
                            ("policy", "chosen_policy", [chosen_policy])):
    for p in values:
      try:
        ee.policies.check_policy(p)
      except ValueError as e:
        raise errors.InputError(f"{name(flag, arg)}: {e}") from None
  if not budgets:
    bad("budgets", "an empty list")
  for b in budgets:
    if not 0 < b <= 1:
      bad("budgets", b)
  if not 0 < eps < 1:
    bad("eps", eps)
  if delta is not None and not 0 < delta < 1:
    bad("delta", delta)
  if isinstance(trials, bool) or int(trials) != trials or trials < 0:
    bad("trials", trials)
  if bound not in ("auto",) + ee.bounds.BOUNDS:
    bad("bound", repr(bound))
  if risk is not None and risk not in ee.certify.RISKS:
    bad("risk", repr(risk))
  if bound == "binomial" and (risk != "consistency"
                              or certify_budget is not None):
    raise errors.InputError(
        f"{name('bound')}=binomial is exact for 0/1 losses only: use it "
        f"with {name('risk')}=consistency and without "
        f"{name('certify_budget')} (the accuracy drop and the cost take "
        "values in between)")
  if certify_budget is not None:
    if not 0 < certify_budget <= 1:
      bad("certify_budget", certify_budget)
    if delta is None:
      raise errors.InputError(
          f"{name('certify_budget')} needs a guarantee level: give "
          f"{name('delta')} in (0, 1)")
