"""Evaluates a trained run for early exit: `python -m mexd.evaluate --workdir=...`.

Loads the run's config and newest checkpoint, recomputes its seeded
validation and test splits, and writes `<workdir>/eval/`:

* eval.json — every number below;
* anytime.png, budget.png — per-exit accuracy and accuracy-vs-cost curves.

and `<workdir>/exit_policy.json`: the chosen exit rule (policy, thresholds,
per-exit costs, normalisation statistics, image shape, and the guarantee it
carries: bound, eps, delta, budget, n, certified and validation values)
that a deployment loads beside the checkpoint (`load_exit_policy`).

Both files are strict JSON (no `Infinity`/`NaN`, which most JSON readers
reject): a threshold of -inf or +inf is written as the string "-inf" or
"inf" (docs/early_exit.md); `load_exit_policy` and `load_eval` read them back
as floats.

Reported:
1. anytime: test accuracy of every exit and the cumulative cost of reaching
   it (MACs of the compiled cascade that runs stages 0..k with every head, per
   image, from XLA's cost analysis; see mexd/models/costs.py);
2. budgeted batch (MSDNet protocol, docs/methods.md §6.2): thresholds from
   validation for p = j/20, accuracy and average cost on test, per policy;
3. calibration to user targets on validation only: average-cost budgets
   (fractions of the full cost) and an accuracy-drop tolerance eps, with the
   Learn-then-Test guarantee at level delta (--bound, --risk); with
   --certify_budget, a rule certified to meet eps and an average-cost
   budget jointly; the violation rate of each guarantee over random
   calibration/test splits;
4. real early exit: staged inference with the chosen thresholds (its
   predictions are checked against the simulation) and its wall-clock against
   the one-pass network, next to the ideal speed-up of the cost model.

This module is the command line and its printed summary (`format_summary`);
the evaluation itself is `mexd.evaluation.evaluate_run`, its arguments'
checks `mexd.evaluation_args.check_args` (both re-exported here with the
other library functions).
"""

import re
import sys
from typing import Any, Dict

from absl import app
from absl import flags
from absl import logging

from mexd import errors
from mexd.cpu import hostmem
# The library API, importable from here as well.
from mexd.evaluation import checkpoint_report, evaluate_run  # pylint: disable=unused-import
from mexd.evaluation_args import _VALID, _valid, check_args  # pylint: disable=unused-import
from mexd.exit_policy import (decode_thresholds, encode_thresholds,  # pylint: disable=unused-import
                              load_eval, load_exit_policy)


FLAGS = flags.FLAGS


def format_summary(res: Dict[str, Any]) -> str:
  """A short text report of an evaluate_run result."""
  step = res.get("checkpoint", {}).get("step")
  lines = [f"{res['data']} / {res['model']} / {res['method']}"
           + (f" (checkpoint step {step})" if step is not None else ""),
           "exit   MACs        test acc"]
  for k, (m, a) in enumerate(zip(res["anytime"]["macs"],
                                 res["anytime"]["test_acc"])):
    lines.append(f"{k:>4}   {m:>10.3g}  {100 * a:6.2f}%")
  d = res["accuracy_drop"]
  g = d.get("guarantee", {})
  how = (f", {g['risk']} risk, {g['bound']} bound" if g else
         " (empirical, no guarantee)")
  lines.append(
      f"policy {d['policy']}, eps={d['eps']}, delta={d['delta']}{how}: test "
      f"acc {100 * d['test_acc']:.2f}% (drop {100 * d['test_drop']:.2f} "
      f"points), avg MACs {d['test_avg_macs']:.3g} (ideal speed-up "
      f"{d['ideal_speedup']:.2f}x)")
  if d.get("note"):
    lines.append(f"note: {d['note']}")
  if res.get("checkpoint", {}).get("warning"):
    lines.append(f"warning: {res['checkpoint']['warning']}")
  if "violation_rate" in d:
    lines.append(f"guarantee violated in {100 * d['violation_rate']:.1f}% of "
                 f"{d['violation_trials']} random splits")
  if "certified" in res:
    c, g = res["certified"], res["certified"]["guarantee"]
    head = (f"certified: drop <= {d['eps']} and avg MACs <= "
            f"{c['budget_macs']:.3g} ({100 * c['budget_fraction']:g}% of "
            f"full) w.p. >= {1 - d['delta']:g}")
    if not g["feasible"]:
      lines.append(f"{head}: infeasible, {g['binding']} binds; saved the "
                   "budget-only rule")
      lines.append(f"warning: {g['note']}")
    else:
      lines.append(f"{head} ({g['binding']} binds)")
    lines.append(
        f"  test acc {100 * c['test_acc']:.2f}% (drop "
        f"{100 * c['test_drop']:.2f} points), avg MACs "
        f"{c['test_avg_macs']:.3g} (ideal speed-up {c['ideal_speedup']:.2f}x)"
        + (f"; violated in {100 * c['violation_rate']:.1f}% of "
           f"{c['violation_trials']} random splits" if "violation_rate" in c
           else ""))
  if "staged" in res:
    s = res["staged"]
    lines.append(f"staged inference: {s['measured_speedup']:.2f}x measured "
                 f"vs {s['ideal_speedup']:.2f}x ideal "
                 f"({100 * s['fraction_of_ideal']:.0f}% of ideal); agrees "
                 f"with simulation on {100 * s['agreement_with_simulation']:.2f}%")
  return "\n".join(lines)


def define_flags():
  flags.DEFINE_string("workdir", None, "Work directory of a training run "
                      "(a local folder or gs://BUCKET/PATH).",
                      required=True)
  flags.DEFINE_list("policies", ["max_prob", "entropy", "margin", "patience"],
                    "Exit policies to compare.")
  flags.DEFINE_list("budgets", ["0.4", "0.5", "0.6", "0.7", "0.8", "0.9"],
                    "Average-cost budgets, fractions of the full cost.")
  flags.DEFINE_float("eps", 0.02, "Tolerated accuracy drop vs the final "
                     "exit, in (0, 1). The guarantee needs a minimum number "
                     "of validation images (158 at the defaults, 318 at "
                     "eps=0.01: more than digits' 180; mexd.early_exit."
                     "ltt_min_n).")
  flags.DEFINE_float("delta", 0.1, "Failure probability of the guarantee, "
                     "in (0, 1) (0: no guarantee, empirical rule).")
  flags.DEFINE_integer("trials", 100, "Random splits for the violation rate "
                       "(>= 0; 0: none).")
  flags.DEFINE_string("policy", "max_prob", "Policy saved in "
                      "exit_policy.json.")
  flags.DEFINE_bool("timing", True, "Measure staged inference wall-clock.")
  flags.DEFINE_string("bound", "auto", "Concentration bound of the "
                      "guarantees: auto (binomial for --risk=consistency, "
                      "wsr otherwise), hoeffding, hoeffding_bentkus, "
                      "binomial, empirical_bernstein, wsr.")
  flags.DEFINE_string("risk", "", "Certified risk: accuracy_drop (default) "
                      "or consistency (disagreement with the final exit; "
                      "needs no labels, bounds the drop from above).")
  flags.DEFINE_float("certify_budget", 0.0, "A certified compute budget, a "
                     "fraction of the full network's cost in (0, 1]: the "
                     "saved rule then meets drop <= eps and expected cost "
                     "<= this budget jointly, with probability >= 1 - "
                     "delta (0: none).")


def _usage_error(msg: str):
  """`mexd.evaluate: error: msg` on stderr and exit status 2."""
  print(f"mexd.evaluate: error: {' '.join(msg.split())}", file=sys.stderr)
  raise SystemExit(2)


def parse_flags(argv):
  """absl's flag parsing; a bad flag is one `mexd.evaluate: error:` line."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    m = re.match(r"flag --(\w+)=", str(e))
    flag = m and m.group(1)
    msg = str(e).rstrip(".")
    _usage_error(f"{msg}; --{flag} takes {_valid(flag, True)}" if flag
                 in _VALID else msg)


def _budgets(values) -> list:
  """--budgets strings -> floats; a word that is no number names the flag."""
  out = []
  for v in values:
    try:
      out.append(float(v))
    except ValueError:
      raise errors.InputError(
          f"--budgets must be {_valid('budgets', True)}; got "
          f"{v!r} (not a number)") from None
  return out


def main(argv):
  if len(argv) > 1:
    _usage_error(f"unexpected arguments {argv[1:]}; flags are --name=value")
  hostmem.tune_malloc()  # Before XLA's threads allocate; see mexd.cpu.hostmem.
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  with errors.one_line_errors("mexd.evaluate"):
    args = dict(policies=FLAGS.policies, budgets=_budgets(FLAGS.budgets),
                eps=FLAGS.eps, delta=FLAGS.delta or None, trials=FLAGS.trials,
                chosen_policy=FLAGS.policy, bound=FLAGS.bound,
                risk=FLAGS.risk or None,
                certify_budget=FLAGS.certify_budget or None)
    check_args(**args, cli=True)  # Before anything is loaded.
    res = evaluate_run(FLAGS.workdir, timing=FLAGS.timing, **args)
  print(format_summary(res))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
