"""Exit-rule guarantees: what each bound certifies, and whether it holds.

For one trained run (`--workdir`; default: the digits default run, trained
on the fly into `--train_dir` if it is not there yet, about 2 minutes):

* power: thresholds certified on the validation split
  (`mexd.early_exit.certify`), scored on the test split: the share of
  test images that leave early, their mean cost (a fraction of the full
  network's MACs) and the accuracy drop, for every bound and risk at each
  eps (delta fixed); the certified compute budget at each B; the joint rule.
* validity: over `--trials` random calibration / held-out splits of the
  validation + test pool, with n_cal calibration images each, how often the
  certified quantity is broken on the held-out images (the violation rate,
  which must be <= delta), with its exact (Clopper-Pearson) 95 % interval.

Writes benchmarks/results/guarantees_<name>.json and .png; prints the
tables of docs/early_exit.md §2.4.

  python -m benchmarks.guarantees
  python -m benchmarks.guarantees --workdir=RUN --name=fashion_mnist
"""

import os
import time
from typing import Any, Dict, List, Optional
import warnings

from absl import app
from absl import flags
import numpy as np

from benchmarks import claims
from benchmarks import common
from mexd import early_exit as ee
from mexd import evaluation
from mexd.early_exit import bounds as bounds_lib
from mexd.early_exit import certify
from mexd.early_exit import rules

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A trained run (python -m mexd.train); "
                    "default: the digits default run in --train_dir.")
flags.DEFINE_string("train_dir", "/tmp/mexd-guarantees/digits",
                    "Where the digits default run is trained if --workdir "
                    "is not given (reused once finished).")
flags.DEFINE_string("name", None, "Output name (default: the run's data).")
flags.DEFINE_list("eps", ["0.005", "0.01", "0.02"], "Tolerated accuracy "
                  "drops.")
flags.DEFINE_float("delta", 0.1, "Failure probability.")
flags.DEFINE_list("budgets", ["0.5", "0.7"], "Certified average-cost "
                  "budgets, fractions of the full network's MACs.")
flags.DEFINE_list("n_cal", ["200", "500", "1000"], "Calibration sizes of "
                  "the validity study (those >= 80 % of the pool skipped).")
flags.DEFINE_float("validity_eps", 0.01, "eps of the validity study.")
flags.DEFINE_integer("trials", 500, "Random splits per validity cell.")
flags.DEFINE_string("policy", "max_prob", "Exit score.")
flags.DEFINE_string("out", common.RESULTS, "Folder of the JSON and PNG.")

# (risk, bound) pairs: binomial is exact for 0/1 losses, i.e. only for the
# consistency risk.
ACCURACY = [(r, b) for r in certify.RISKS for b in bounds_lib.BOUNDS
            if not (b == "binomial" and r != "consistency")]
COST = [b for b in bounds_lib.BOUNDS if b != "binomial"]


def _run(workdir: Optional[str]) -> evaluation.Run:
  if workdir is None:
    workdir = FLAGS.train_dir
    if not os.path.exists(os.path.join(workdir, "results.json")):
      from mexd import trainer  # pylint: disable=import-outside-toplevel
      from mexd.configs import digits  # pylint: disable=import-outside-toplevel
      c = digits.get_config()
      c.progress_bar = False
      print(f"training the digits default run into {workdir}", flush=True)
      trainer.train_and_evaluate(c, workdir)
  return evaluation.load_run(workdir)


def _score(s, preds, labels, costs, thresholds) -> Dict[str, float]:
  """Held-out numbers of a rule: early share, cost fraction, drop,
  disagreement."""
  ex = rules.exits(s, thresholds)
  cols = np.arange(labels.size)
  right = preds == labels[None]
  return {"early": float(np.mean(ex < s.shape[0] - 1)),
          "cost": float(costs[ex].mean() / costs[-1]),
          "drop": float(right[-1].mean() - right[ex, cols].mean()),
          "disagree": float(np.mean(preds[ex, cols] != preds[-1]))}


def power(run: evaluation.Run, eps_list, budgets) -> Dict[str, List]:
  """Rules certified on validation, scored on test."""
  val = certify.Arrays.from_logits(run.val_logits, run.val.labels,
                                   FLAGS.policy, run.macs, None, 0)
  s, preds, costs = rules.prepare(run.test_logits, FLAGS.policy, run.macs)
  y = run.test.labels
  out: Dict[str, List] = {"accuracy": [], "cost": [], "joint": []}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ee.CertificationWarning)
    for risk, bound in ACCURACY:
      for eps in eps_list:
        cal = certify.accuracy_rule(val, eps, FLAGS.delta, risk, bound)
        out["accuracy"].append({"risk": risk, "bound": bound, "eps": eps,
                                "lambda": float(cal.param),
                                **_score(s, preds, y, costs,
                                         cal.thresholds)})
    full = float(run.macs[-1])
    for frac in budgets:
      b = max(frac * full, float(run.macs[0]))
      emp = ee.calibrate_budget(run.val_logits, run.val.labels, b, run.macs,
                                FLAGS.policy, families=("shared",))
      out["cost"].append({"bound": "none (empirical)", "budget": frac,
                          **_score(s, preds, y, costs, emp.thresholds)})
      for bound in COST:
        cal = certify.budget_rule(val, b, FLAGS.delta, bound)
        out["cost"].append({"bound": bound, "budget": frac,
                            "val_cost": cal.val_avg_cost / full,
                            **_score(s, preds, y, costs, cal.thresholds)})
      for eps in eps_list:
        cal = certify.joint_rule(val, eps, b, FLAGS.delta, None, "auto",
                                 "accuracy")
        out["joint"].append({"eps": eps, "budget": frac,
                             "feasible": cal.info["feasible"],
                             "binding": cal.info["binding"],
                             **_score(s, preds, y, costs, cal.thresholds)})
  return out


def validity(run: evaluation.Run, n_cals, eps: float,
             budgets) -> List[Dict[str, Any]]:
  """Violation rates over random splits of the validation + test pool."""
  z = np.concatenate([run.val_logits, run.test_logits], axis=1)
  y = np.concatenate([run.val.labels, run.test.labels])
  full, rows = float(run.macs[-1]), []
  cells = [("accuracy", risk, bound, None) for risk, bound in ACCURACY]
  cells += [("cost", None, bound, frac) for frac in budgets for bound in COST]
  for n_cal in n_cals:
    if n_cal >= 0.8 * y.size:
      print(f"skipping n_cal = {n_cal}: the pool has {y.size} images")
      continue
    for kind, risk, bound, frac in cells:
      t = time.time()
      b = None if frac is None else max(frac * full, float(run.macs[0]))
      vr = ee.violation_rate(
          z, y, eps if kind == "accuracy" else None, FLAGS.delta,
          FLAGS.policy, FLAGS.trials, 0, bound=bound, risk=risk, budget=b,
          n_cal=n_cal, exit_costs=run.macs)
      rate = vr["risk_rate"] if kind == "accuracy" else vr["cost_rate"]
      k = int(round(rate * FLAGS.trials))
      lo, hi = claims.clopper_pearson(k, FLAGS.trials)
      rows.append({"n_cal": n_cal, "kind": kind, "risk": risk,
                   "bound": bound, "eps": eps if kind == "accuracy" else None,
                   "budget": frac, "violations": k, "trials": FLAGS.trials,
                   "rate": rate, "ci95": [lo, hi],
                   "early": float(vr["early"].mean()),
                   "mean_cost": float(vr["costs"].mean() / full),
                   "seconds": time.time() - t})
      print(f"n_cal {n_cal:>5} {kind:>8} {risk or '':>13} {bound:>19}"
            f" {'' if frac is None else frac:>4}: violated {k}/"
            f"{FLAGS.trials} [{lo:.3f}, {hi:.3f}], early "
            f"{rows[-1]['early']:.3f}, mean cost {rows[-1]['mean_cost']:.3f}"
            f" ({rows[-1]['seconds']:.1f}s)", flush=True)
  return rows


def tables(res: Dict[str, Any]) -> str:
  """The markdown tables of docs/early_exit.md §2.4."""
  lines = [f"**{res['name']}** ({res['n_val']} validation, {res['n_test']}"
           f" test images; delta = {res['delta']}): share of test images "
           "certified to leave early, and their mean cost (fraction of the "
           "full network's MACs)", "",
           "| risk | bound | " + " | ".join(
               f"eps = {e:g}" for e in res["eps"]) + " |",
           "|---|---|" + "---:|" * len(res["eps"])]
  acc = res["power"]["accuracy"]
  for risk, bound in ACCURACY:
    cells = [r for r in acc if (r["risk"], r["bound"]) == (risk, bound)]
    lines.append(f"| {risk} | {bound} | " + " | ".join(
        f"{100 * r['early']:.1f} % ({r['cost']:.3f}; drop "
        f"{100 * r['drop']:+.2f})" for r in cells) + " |")
  lines += ["", "Certified compute budget B (fraction of the full cost): "
            "test mean cost, test accuracy drop", "",
            "| bound | " + " | ".join(f"B = {b:g}" for b in res["budgets"])
            + " |", "|---|" + "---:|" * len(res["budgets"])]
  for bound in ["none (empirical)"] + COST:
    cells = [r for r in res["power"]["cost"] if r["bound"] == bound]
    lines.append(f"| {bound} | " + " | ".join(
        f"{r['cost']:.3f} (drop {100 * r['drop']:+.2f})" for r in cells)
                 + " |")
  lines += ["", f"Violation rate over {res['trials']} random splits "
            f"(eps = {res['validity_eps']:g} for the accuracy risks), exact "
            "95 % interval; must be <= delta. In brackets after it: the "
            "mean share of held-out images that left early", "",
            "| certified | bound | " + " | ".join(
                f"n_cal = {n}" for n in res["n_cal_used"]) + " |",
            "|---|---|" + "---:|" * len(res["n_cal_used"])]
  keys = []
  for r in res["validity"]:
    key = (r["kind"], r["risk"], r["bound"], r["budget"])
    if key not in keys:
      keys.append(key)
  for key in keys:
    cells = [r for r in res["validity"]
             if (r["kind"], r["risk"], r["bound"], r["budget"]) == key]
    what = key[1] if key[0] == "accuracy" else f"cost <= {key[3]:g}"
    lines.append(f"| {what} | {key[2]} | " + " | ".join(
        f"{100 * r['rate']:.1f} % [{100 * r['ci95'][0]:.1f}, "
        f"{100 * r['ci95'][1]:.1f}] ({100 * r['early']:.0f} % early)"
        for r in cells) + " |")
  return "\n".join(lines)


def plot(res: Dict[str, Any], path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
  for risk, bound in ACCURACY:
    cells = [r for r in res["power"]["accuracy"]
             if (r["risk"], r["bound"]) == (risk, bound)]
    a.plot([100 * r["eps"] for r in cells],
           [100 * r["early"] for r in cells], "o-" if risk ==
           "accuracy_drop" else "s--", label=f"{risk} / {bound}")
  a.set(xlabel="eps (points of accuracy drop)",
        ylabel="test images leaving early (%)",
        title=f"{res['name']}: certified early exits, delta = "
              f"{res['delta']}")
  a.legend(fontsize=7)
  for key in sorted({(r["kind"], r["risk"], r["bound"], r["budget"])
                     for r in res["validity"]}, key=str):
    cells = [r for r in res["validity"]
             if (r["kind"], r["risk"], r["bound"], r["budget"]) == key]
    label = (f"{key[1]} / {key[2]}" if key[0] == "accuracy" else
             f"cost <= {key[3]:g} / {key[2]}")
    b.plot([r["n_cal"] for r in cells], [100 * r["rate"] for r in cells],
           "o-", label=label, alpha=0.8)
  b.axhline(100 * res["delta"], color="k", lw=1, ls=":", label="delta")
  b.set(xscale="log", xlabel="calibration images n_cal",
        ylabel="violation rate (%)",
        title=f"validity over {res['trials']} random splits")
  b.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  t0 = time.time()
  env = common.environment()
  run = _run(FLAGS.workdir)
  name = FLAGS.name or run.config.data.name
  eps_list = [float(e) for e in FLAGS.eps]
  budgets = [float(b) for b in FLAGS.budgets]
  n_cals = [int(n) for n in FLAGS.n_cal]
  pool = len(run.val) + len(run.test)
  res = {"name": name, "workdir": FLAGS.workdir or FLAGS.train_dir,
         "method": run.config.method, "model": run.config.model.name,
         "n_val": len(run.val), "n_test": len(run.test),
         "exit_macs": run.macs.tolist(), "policy": FLAGS.policy,
         "delta": FLAGS.delta, "eps": eps_list, "budgets": budgets,
         "validity_eps": FLAGS.validity_eps, "trials": FLAGS.trials,
         "n_cal_used": [n for n in n_cals if n < 0.8 * pool],
         "test_acc": ee.per_exit_accuracy(run.test_logits,
                                          run.test.labels).tolist()}
  res["power"] = power(run, eps_list, budgets)
  res["validity"] = validity(run, n_cals, FLAGS.validity_eps, budgets)
  res["seconds"] = time.time() - t0
  text = tables(res)
  print(text)
  os.makedirs(FLAGS.out, exist_ok=True)
  base = os.path.join(FLAGS.out, f"guarantees_{name}")
  plot(res, base + ".png")
  common.write_json(base + ".json", {"benchmark": "guarantees",
                                     "environment": env,
                                     "command": common.command_line(),
                                     **res})


if __name__ == "__main__":
  app.run(main)
