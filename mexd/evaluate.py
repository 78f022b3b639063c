"""Evaluates a trained run for early exit: `python -m mexd.evaluate --workdir=...`.

Loads the run's config and newest checkpoint, recomputes its seeded
validation and test splits, and writes `<workdir>/eval/`:

* eval.json — every number below;
* anytime.png, budget.png — per-exit accuracy and accuracy-vs-cost curves.

and `<workdir>/exit_policy.json`: the chosen exit rule (policy, thresholds,
per-exit costs, normalisation statistics, image shape) that a deployment
loads beside the checkpoint (`load_exit_policy`).

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
   Learn-then-Test guarantee at level delta; the violation rate of that
   guarantee over random calibration/test splits;
4. real early exit: staged inference with the chosen thresholds (its
   predictions are checked against the simulation) and its wall-clock against
   the one-pass network, next to the ideal speed-up of the cost model.
"""

import os
import time
from typing import Any, Dict, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from mexd import data as data_lib
from mexd import early_exit as ee
from mexd import errors
from mexd import hostmem
from mexd import paths
from mexd import sharding
from mexd import steps
from mexd import train
from mexd import workdir as workdir_lib
from mexd import xla_options
from mexd.models import costs as costs_lib


def _tolist(x):
  return np.asarray(x).tolist()


_NONFINITE = {"inf": float("inf"), "-inf": float("-inf")}


def encode_thresholds(thresholds) -> list:
  """Thresholds as a JSON list: -inf / inf become the strings "-inf" / "inf".

  Raises:
    ValueError: a threshold is NaN (no exit rule has one).
  """
  out = []
  for t in np.asarray(thresholds, np.float64).tolist():
    if np.isnan(t):
      raise ValueError(f"NaN threshold in {thresholds}")
    out.append(t if np.isfinite(t) else ("inf" if t > 0 else "-inf"))
  return out


def decode_thresholds(values) -> list:
  """The floats of `encode_thresholds`' list ("-inf" / "inf" read back)."""
  out = []
  for v in values:
    if isinstance(v, str):
      if v not in _NONFINITE:
        raise ValueError(f"invalid threshold {v!r}: expected a number, "
                         "\"-inf\" or \"inf\"")
      v = _NONFINITE[v]
    out.append(float(v))
  return out


def _map_thresholds(obj, fn):
  """`obj` with fn applied to the value of every "thresholds" key."""
  if isinstance(obj, dict):
    return {k: fn(v) if k == "thresholds" else _map_thresholds(v, fn)
            for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_map_thresholds(v, fn) for v in obj]
  return obj


def _write_strict_json(path, obj) -> None:
  """Writes obj as strict JSON; a non-finite float other than a threshold
  raises (allow_nan=False) instead of writing `Infinity`/`NaN`."""
  paths.write_json(path, _map_thresholds(obj, encode_thresholds), indent=2,
                   allow_nan=False)


def load_exit_policy(path) -> Dict[str, Any]:
  """exit_policy.json (a file, or the workdir holding it), thresholds as
  float32 [E] (so they can go to StagedPredictor / simulate)."""
  p = paths.path(path)
  if p.is_dir():
    p = p / "exit_policy.json"
  policy = paths.read_json(p)
  policy["thresholds"] = np.asarray(decode_thresholds(policy["thresholds"]),
                                    np.float32)
  return policy


def load_eval(path) -> Dict[str, Any]:
  """eval.json (a file, or the workdir whose eval/ holds it), every
  "thresholds" list read back to floats."""
  p = paths.path(path)
  if p.is_dir():
    p = p / "eval" / "eval.json"
  return _map_thresholds(paths.read_json(p), decode_thresholds)


def _time(fn, repeats: int = 3) -> float:
  """Best-of-`repeats` wall-clock seconds of fn() (after one warm-up)."""
  fn()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def staged_speedup(model, variables, images: np.ndarray, thresholds,
                   policy: str, batch_size: int = 256) -> Dict[str, Any]:
  """Wall-clock of staged inference vs the one-pass network on `images`.

  Both run batches of `batch_size`: the one-pass forward chunk by chunk,
  the staged predictor in its pooled mode (`StagedPredictor.run_pooled`:
  survivors pooled across batches so that every stage runs on full
  batches).

  Args:
    images: [N, H, W, C] preprocessed float32 images.

  Returns:
    dict with predictions/exits of the staged run, seconds of both paths and
    the measured speed-up.
  """
  full = xla_options.jit(lambda v, x: model.apply(v, x, train=False)[0][-1])
  staged = ee.StagedPredictor(model, variables, thresholds, policy)
  chunks = [images[i:i + batch_size] for i in range(0, len(images),
                                                    batch_size)]
  def run_full():
    for c in chunks:
      jax.block_until_ready(full(variables, c))
  out = {}

  def run_staged():  # every stage on full batches of batch_size
    res = staged.run_pooled(images, batch_size)
    out["pred"], out["exit"] = res.predictions, res.exits

  t_full, t_staged = _time(run_full), _time(run_staged)
  return {"predictions": out["pred"], "exits": out["exit"],
          "seconds_full": t_full, "seconds_staged": t_staged,
          "speedup": t_full / t_staged}


def evaluate_run(workdir: str, *, policies: Sequence[str] = (
    "max_prob", "entropy", "margin", "patience"),
                 budgets: Sequence[float] = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                 eps: float = 0.01, delta: float = 0.1, trials: int = 100,
                 chosen_policy: str = "max_prob", plots: bool = True,
                 timing: bool = True) -> Dict[str, Any]:
  """Evaluates the run in `workdir`; returns (and writes) the results dict.

  Args:
    workdir: a finished (or checkpointed) training run.
    policies: exit policies to compare (mexd.early_exit.policy_names()).
    budgets: average-cost budgets as fractions of the full network's cost.
    eps: tolerated accuracy drop vs the final exit (absolute, e.g. 0.01).
    delta: the guarantee's failure probability (None: empirical rule only).
    trials: random calibration/test splits for the violation rate.
    chosen_policy: the policy saved in exit_policy.json (calibrated to eps,
      delta).
    plots: write PNG plots.
    timing: measure staged vs one-pass wall-clock.
  """
  for p in list(policies) + [chosen_policy]:
    ee.policies.check_policy(p)
  for b in budgets:
    if not 0 < b <= 1:
      raise ValueError(f"budget fractions must be in (0, 1] (fractions of "
                       f"the full network's cost), got {b}")
  if not 0 <= eps < 1:
    raise ValueError(f"eps must be in [0, 1), got {eps}")
  if delta is not None and not 0 < delta < 1:
    raise ValueError(f"delta must be in (0, 1), got {delta}")
  config = workdir_lib.load_config(workdir)
  variables = workdir_lib.load_variables(workdir)
  splits, indices = data_lib.load_splits(config.data)
  saved = paths.load_npz(paths.path(workdir) / "splits.npz")
  if not np.array_equal(saved["val"], indices["val"]):
    raise ValueError(f"the validation split recomputed for {workdir} differs "
                     "from the one saved in splits.npz; the data set changed")
  tr = splits["train"]
  model = train.build_model(config, tr.num_classes)
  mesh = sharding.make_mesh(1)
  predictor = train.Predictor(model, tr.mean, tr.std, mesh, 500,
                              train.compute_dtype(config), tr.image_shape)
  val, test = splits["val"], splits["test"]
  val_logits = predictor.logits(variables, val)
  test_logits = predictor.logits(variables, test)

  cost_rows = costs_lib.exit_costs(model, variables, tr.image_shape,
                                   cascade=True)
  macs = np.array([r["macs"] for r in cost_rows], np.float64)
  full = macs[-1]
  res: Dict[str, Any] = {
      "workdir": workdir, "method": config.method,
      "model": config.model.name, "data": config.data.name,
      "exit_macs": _tolist(macs),
      "cost_rule": "MACs per image of the compiled cascade (stages 0..k, "
                   "every head) = XLA flops / 2",
      "anytime": {"test_acc": _tolist(ee.per_exit_accuracy(
          test_logits, test.labels)), "val_acc": _tolist(
              ee.per_exit_accuracy(val_logits, val.labels)),
                  "macs": _tolist(macs)}}

  curves, budget_rows = {}, []
  for policy in policies:
    ps, th = ee.msdnet_sweep(val_logits, policy=policy)
    c = ee.evaluate_curve(test_logits, test.labels, th, policy, macs)
    curves[policy] = (np.asarray(c["avg_cost"]), np.asarray(c["accuracy"]))
    res.setdefault("budgeted_batch", {})[policy] = {
        "p": _tolist(ps), "avg_macs": _tolist(c["avg_cost"]),
        "test_acc": _tolist(c["accuracy"])}
    for frac in budgets:
      budget = max(frac * full, macs[0])
      cal = ee.calibrate_budget(val_logits, val.labels, budget, macs, policy)
      sim = ee.simulate(test_logits, test.labels, cal.thresholds, policy,
                        macs)
      budget_rows.append({
          "policy": policy, "budget_fraction": frac, "budget_macs": budget,
          "val_avg_macs": float(cal.val_avg_cost),
          "val_acc": float(cal.val_accuracy),
          "test_avg_macs": float(sim["avg_cost"]),
          "test_acc": float(sim["accuracy"]),
          "thresholds": _tolist(cal.thresholds)})
  res["budget_calibration"] = budget_rows

  cal = ee.calibrate_accuracy_drop(val_logits, val.labels, eps=eps,
                                   policy=chosen_policy, delta=delta,
                                   exit_costs=macs)
  sim = ee.simulate(test_logits, test.labels, cal.thresholds, chosen_policy,
                    macs)
  final_acc = float(res["anytime"]["test_acc"][-1])
  res["accuracy_drop"] = {
      "policy": chosen_policy, "eps": eps, "delta": delta,
      "thresholds": _tolist(cal.thresholds),
      "val_acc": float(cal.val_accuracy),
      "test_acc": float(sim["accuracy"]),
      "test_drop": final_acc - float(sim["accuracy"]),
      "test_avg_macs": float(sim["avg_cost"]),
      "ideal_speedup": float(full / sim["avg_cost"]),
      "exit_fraction": _tolist(sim["exit_fraction"])}
  if trials:
    pool_logits = np.concatenate([val_logits, test_logits], axis=1)
    pool_labels = np.concatenate([val.labels, test.labels])
    vr = ee.violation_rate(pool_logits, pool_labels, eps, delta=delta,
                           policy=chosen_policy, n_trials=trials, rng=0)
    res["accuracy_drop"]["violation_rate"] = float(vr["rate"])
    res["accuracy_drop"]["violation_trials"] = trials

  if timing:
    x = np.asarray(steps.preprocess(None, test.images, mean=tr.mean,
                                    std=tr.std, train=False))
    sp = staged_speedup(model, variables, x, cal.thresholds, chosen_policy)
    same = float(np.mean(sp["predictions"] == sim["predictions"]))
    res["staged"] = {
        "seconds_full": sp["seconds_full"],
        "seconds_staged": sp["seconds_staged"],
        "measured_speedup": sp["speedup"],
        "ideal_speedup": res["accuracy_drop"]["ideal_speedup"],
        "fraction_of_ideal": sp["speedup"]
                             / res["accuracy_drop"]["ideal_speedup"],
        "agreement_with_simulation": same}

  out = paths.path(workdir) / "eval"
  out.mkdir(parents=True, exist_ok=True)
  if plots:
    ee.plot_exit_accuracy(res["anytime"]["test_acc"],
                          os.fspath(out / "anytime.png"))
    ee.plot_accuracy_cost(curves, os.fspath(out / "budget.png"),
                          xlabel="average MACs per image",
                          anytime=(macs, np.asarray(
                              res["anytime"]["test_acc"])))
  _write_strict_json(out / "eval.json", res)
  policy = {"policy": chosen_policy, "thresholds": _tolist(cal.thresholds),
            "exit_macs": _tolist(macs), "eps": eps, "delta": delta,
            "val_accuracy": float(cal.val_accuracy),
            "image_shape": list(tr.image_shape), "mean": list(tr.mean),
            "std": list(tr.std), "num_classes": tr.num_classes,
            "model": config.model.name}
  _write_strict_json(paths.path(workdir) / "exit_policy.json", policy)
  return res


def format_summary(res: Dict[str, Any]) -> str:
  """A short text report of an evaluate_run result."""
  lines = [f"{res['data']} / {res['model']} / {res['method']}",
           "exit   MACs        test acc"]
  for k, (m, a) in enumerate(zip(res["anytime"]["macs"],
                                 res["anytime"]["test_acc"])):
    lines.append(f"{k:>4}   {m:>10.3g}  {100 * a:6.2f}%")
  d = res["accuracy_drop"]
  lines.append(
      f"policy {d['policy']}, eps={d['eps']}, delta={d['delta']}: test acc "
      f"{100 * d['test_acc']:.2f}% (drop {100 * d['test_drop']:.2f} points),"
      f" avg MACs {d['test_avg_macs']:.3g} (ideal speed-up "
      f"{d['ideal_speedup']:.2f}x)")
  if "violation_rate" in d:
    lines.append(f"guarantee violated in {100 * d['violation_rate']:.1f}% of "
                 f"{d['violation_trials']} random splits")
  if "staged" in res:
    s = res["staged"]
    lines.append(f"staged inference: {s['measured_speedup']:.2f}x measured "
                 f"vs {s['ideal_speedup']:.2f}x ideal "
                 f"({100 * s['fraction_of_ideal']:.0f}% of ideal); agrees "
                 f"with simulation on {100 * s['agreement_with_simulation']:.2f}%")
  return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("workdir", None, "Work directory of a training run "
                      "(a local folder or gs://BUCKET/PATH).",
                      required=True)
  flags.DEFINE_list("policies", ["max_prob", "entropy", "margin", "patience"],
                    "Exit policies to compare.")
  flags.DEFINE_list("budgets", ["0.4", "0.5", "0.6", "0.7", "0.8", "0.9"],
                    "Average-cost budgets, fractions of the full cost.")
  flags.DEFINE_float("eps", 0.01, "Tolerated accuracy drop vs the final exit.")
  flags.DEFINE_float("delta", 0.1, "Failure probability of the guarantee "
                     "(0: no guarantee, empirical rule).")
  flags.DEFINE_integer("trials", 100, "Random splits for the violation rate.")
  flags.DEFINE_string("policy", "max_prob", "Policy saved in "
                      "exit_policy.json.")
  flags.DEFINE_bool("timing", True, "Measure staged inference wall-clock.")


def main(argv):
  del argv
  hostmem.tune_malloc()  # Before XLA's threads allocate; see mexd.hostmem.
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  with errors.one_line_errors("mexd.evaluate"):
    res = evaluate_run(
        FLAGS.workdir, policies=FLAGS.policies,
        budgets=[float(b) for b in FLAGS.budgets], eps=FLAGS.eps,
        delta=FLAGS.delta or None, trials=FLAGS.trials,
        chosen_policy=FLAGS.policy, timing=FLAGS.timing)
  print(format_summary(res))


if __name__ == "__main__":
  define_flags()
  app.run(main)
