"""Early-exit evaluation of a trained run: `evaluate_run(workdir)`.

The library side of `python -m mexd.evaluate` (whose docstring lists what is
reported). `evaluate_run` reads as its sections: `load_run` (config, newest
readable checkpoint, recomputed splits, logits, per-exit costs), the
anytime numbers, `budget_sections`, `accuracy_drop_section`,
`staged_section`, `write_outputs`.
"""

import os
import sys
import time
from typing import Any, Dict, NamedTuple, Optional, Sequence
import warnings

import jax
import numpy as np

from mexd import data as data_lib
from mexd import early_exit as ee
from mexd import errors
from mexd.evaluation_args import check_args
from mexd import exit_policy
from mexd import paths
from mexd import predict
from mexd import sharding
from mexd import steps
from mexd import workdir as workdir_lib
from mexd.cpu import xla_options
from mexd.models import costs as costs_lib


def _tolist(x):
  return np.asarray(x).tolist()


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
                   policy: str, batch_size: int = 256,
                   **predictor_kwargs) -> Dict[str, Any]:
  """Wall-clock of staged inference vs the one-pass network on `images`.

  Both run batches of `batch_size`: the one-pass forward chunk by chunk,
  the staged predictor in its pooled mode (`StagedPredictor.run_pooled`:
  survivors pooled across batches so that every stage runs on full
  batches).

  Args:
    images: [N, H, W, C] preprocessed float32 images.
    **predictor_kwargs: mean, std, image_shape for the `StagedPredictor`'s
      input checks.

  Returns:
    dict with predictions/exits of the staged run, seconds of both paths and
    the measured speed-up.
  """
  full = xla_options.jit(lambda v, x: model.apply(v, x, train=False)[0][-1])
  staged = ee.StagedPredictor(model, variables, thresholds, policy,
                              **predictor_kwargs)
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


def checkpoint_report(workdir: str, ckpt: workdir_lib.RunCheckpoint
                      ) -> Dict[str, Any]:
  """Which checkpoint is evaluated, and a warning if it is not the final one.

  Returns {"step": evaluated step, "final_step": the step training ended at
  (results.json; None while the run has not finished), "unreadable": [[step,
  reason]...] newer checkpoints skipped, "warning": text or None}.
  """
  res_path = paths.path(workdir) / "results.json"
  final = None
  if res_path.exists():
    try:
      done = paths.read_json(res_path)
      final = int(done.get("checkpoint_step", done.get("steps")))
    except (ValueError, TypeError):
      final = None
  warning = None
  if ckpt.unreadable:
    warning = (f"evaluating checkpoint {ckpt.step}: the newer checkpoint(s) "
               f"{[s for s, _ in ckpt.unreadable]} could not be read "
               f"({ckpt.unreadable[0][1][:120]}); rerun python -m mexd.train "
               "on this work directory to write them again")
  elif final is None:
    warning = (f"evaluating checkpoint {ckpt.step}: the run has not finished "
               "(no results.json; it may still be training)")
  elif ckpt.step != final:
    warning = (f"evaluating checkpoint {ckpt.step}, not the final step "
               f"{final} of results.json")
  return {"step": ckpt.step, "final_step": final,
          "unreadable": [list(u) for u in ckpt.unreadable],
          "warning": warning}


def evaluate_run(workdir: str, *, policies: Sequence[str] = (
    "max_prob", "entropy", "margin", "patience"),
                 budgets: Sequence[float] = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                 eps: float = 0.02, delta: float = 0.1, trials: int = 100,
                 chosen_policy: str = "max_prob", plots: bool = True,
                 timing: bool = True, bound: str = ee.bounds.DEFAULT_BOUND,
                 risk: Optional[str] = None,
                 certify_budget: Optional[float] = None) -> Dict[str, Any]:
  """Evaluates the run in `workdir`; returns (and writes) the results dict.

  Args:
    workdir: a finished (or checkpointed) training run.
    policies: exit policies to compare (mexd.early_exit.policy_names()).
    budgets: average-cost budgets as fractions of the full network's cost.
    eps: tolerated accuracy drop vs the final exit (absolute, e.g. 0.02).
      Learn-then-Test needs a minimum number of validation images to
      certify any early exit (`ee.ltt_min_n`): with the defaults 158 for
      eps = 0.02, delta = 0.1, and 318 for eps = 0.01, more than digits'
      180. With fewer, the result's accuracy_drop "note" says so.
    delta: the guarantee's failure probability (None: empirical rule only).
    trials: random calibration/test splits for the violation rate (0: none).
    chosen_policy: the policy saved in exit_policy.json (calibrated to eps,
      delta).
    plots: write PNG plots.
    timing: measure staged vs one-pass wall-clock.
    bound: the concentration bound of the guarantees (`ee.bounds`; "auto":
      binomial for the consistency risk, wsr otherwise).
    risk: "accuracy_drop" (the default: validation has labels) or
      "consistency" (disagreement with the final exit, label-free).
    certify_budget: a fraction of the full cost; with it the saved rule is
      `ee.certify_joint`'s: accuracy drop <= eps and expected cost <= this
      budget, jointly with probability >= 1 - delta (res["certified"]).
  """
  check_args(policies=policies, budgets=budgets, eps=eps, delta=delta,
             trials=trials, chosen_policy=chosen_policy, bound=bound,
             risk=risk, certify_budget=certify_budget)
  run = load_run(workdir)
  macs = run.macs
  res: Dict[str, Any] = {
      "workdir": workdir, "checkpoint": run.checkpoint,
      "method": run.config.method,
      "model": run.config.model.name, "data": run.config.data.name,
      "exit_macs": _tolist(macs),
      "cost_rule": "MACs per image of the compiled cascade (stages 0..k, "
                   "every head) = XLA flops / 2",
      "anytime": {"test_acc": _tolist(ee.per_exit_accuracy(
          run.test_logits, run.test.labels)), "val_acc": _tolist(
              ee.per_exit_accuracy(run.val_logits, run.val.labels)),
                  "macs": _tolist(macs)}}
  curves = budget_sections(run, policies, budgets, res)
  target = Target(eps, delta, bound, risk, chosen_policy, trials)
  cal, sim = accuracy_drop_section(run, target, res)
  if certify_budget is not None:
    cal, sim = certified_section(run, target, certify_budget, res)
  if timing:
    res["staged"] = staged_section(run, cal.thresholds, chosen_policy, sim,
                                   float(macs[-1] / sim["avg_cost"]))
  write_outputs(run, res, curves, cal, chosen_policy, eps, delta, plots)
  return res


class Target(NamedTuple):
  """What the saved rule is calibrated to (the arguments of
  `evaluate_run`)."""
  eps: float
  delta: Optional[float]
  bound: str
  risk: Optional[str]
  policy: str
  trials: int


class Run(NamedTuple):
  """A trained run loaded for evaluation (`load_run`).

  val_logits, test_logits: [E, N, C] one-pass logits; macs: [E] cumulative
  MACs per image of the cascade up to exit k.
  """
  workdir: str
  config: Any
  checkpoint: Dict[str, Any]
  model: Any
  variables: Dict[str, Any]
  train: Any
  val: Any
  test: Any
  val_logits: np.ndarray
  test_logits: np.ndarray
  macs: np.ndarray


def load_run(workdir: str) -> Run:
  """Config, newest readable checkpoint (warning if not the final one),
  the recomputed splits (checked against splits.npz), logits and costs."""
  config = workdir_lib.load_config(workdir)
  ckpt = workdir_lib.read_checkpoint(workdir)
  checkpoint_info = checkpoint_report(workdir, ckpt)
  if checkpoint_info["warning"]:
    print(f"mexd.evaluate: warning: {checkpoint_info['warning']}",
          file=sys.stderr, flush=True)
  splits, indices = data_lib.load_splits(config.data)
  saved = workdir_lib.load_splits(workdir)
  if not np.array_equal(saved["val"], indices["val"]):
    raise errors.InputError(
        f"the validation split recomputed for {workdir} differs "
        "from the one saved in splits.npz; the data set changed")
  tr, val, test = splits["train"], splits["val"], splits["test"]
  model = predict.build_model(config, tr.num_classes)
  predictor = predict.Predictor(model, tr.mean, tr.std,
                                sharding.make_mesh(1), 500,
                                predict.compute_dtype(config), tr.image_shape)
  variables = ckpt.variables
  cost_rows = costs_lib.exit_costs(model, variables, tr.image_shape,
                                   cascade=True)
  return Run(workdir, config, checkpoint_info, model, variables, tr, val,
             test, predictor.logits(variables, val),
             predictor.logits(variables, test),
             np.array([r["macs"] for r in cost_rows], np.float64))


def budget_sections(run: Run, policies: Sequence[str],
                    budgets: Sequence[float], res: Dict[str, Any]):
  """res["budgeted_batch"] (MSDNet sweep per policy) and
  res["budget_calibration"] (thresholds for each budget on validation,
  scored on test); returns {policy: (avg cost [P], accuracy [P])}."""
  macs, full = run.macs, run.macs[-1]
  curves, rows = {}, []
  for policy in policies:
    ps, th = ee.msdnet_sweep(run.val_logits, policy=policy)
    c = ee.evaluate_curve(run.test_logits, run.test.labels, th, policy, macs)
    curves[policy] = (np.asarray(c["avg_cost"]), np.asarray(c["accuracy"]))
    res.setdefault("budgeted_batch", {})[policy] = {
        "p": _tolist(ps), "avg_macs": _tolist(c["avg_cost"]),
        "test_acc": _tolist(c["accuracy"])}
    for frac in budgets:
      budget = max(frac * full, macs[0])
      cal = ee.calibrate_budget(run.val_logits, run.val.labels, budget, macs,
                                policy)
      sim = ee.simulate(run.test_logits, run.test.labels, cal.thresholds,
                        policy, macs)
      rows.append({
          "policy": policy, "budget_fraction": frac, "budget_macs": budget,
          "val_avg_macs": float(cal.val_avg_cost),
          "val_acc": float(cal.val_accuracy),
          "test_avg_macs": float(sim["avg_cost"]),
          "test_acc": float(sim["accuracy"]),
          "thresholds": _tolist(cal.thresholds)})
  res["budget_calibration"] = rows
  return curves


def _guarantee(cal, kind: str) -> Dict[str, Any]:
  """The guarantee record of a certified rule (eval.json and
  exit_policy.json): what was certified, by which bound, on how many
  validation images, and the rule's empirical values on validation."""
  keys = ("bound", "cost_bound", "risk_name", "eps", "delta", "budget", "n",
          "certified_risk", "certified_cost", "feasible", "binding",
          "val_avg_cost", "val_consistency_risk", "val_accuracy", "val_drop",
          "note")
  g = {"rule": kind, **{k: cal.info[k] for k in keys if k in cal.info}}
  if "risk_name" in g:
    g["risk"] = g.pop("risk_name")
  g["val_exit_fraction"] = _tolist(cal.info["val_exit_fraction"])
  return g


def _scored(run: Run, cal, policy: str, res: Dict[str, Any]):
  """The rule's numbers on test: (fields, simulation)."""
  macs = run.macs
  sim = ee.simulate(run.test_logits, run.test.labels, cal.thresholds, policy,
                    macs)
  final_acc = float(res["anytime"]["test_acc"][-1])
  return {"thresholds": _tolist(cal.thresholds),
          "val_acc": float(cal.val_accuracy),
          "test_acc": float(sim["accuracy"]),
          "test_drop": final_acc - float(sim["accuracy"]),
          "test_avg_macs": float(sim["avg_cost"]),
          "ideal_speedup": float(macs[-1] / sim["avg_cost"]),
          "exit_fraction": _tolist(sim["exit_fraction"]),
          "val_examples": len(run.val)}, sim


def _violations(run: Run, t: Target, budget=None) -> Dict[str, Any]:
  """The guarantee's violation rate over t.trials random splits of the
  validation + test pool (calibrated on as many images as validation)."""
  pool_logits = np.concatenate([run.val_logits, run.test_logits], axis=1)
  pool_labels = np.concatenate([run.val.labels, run.test.labels])
  vr = ee.violation_rate(pool_logits, pool_labels, t.eps, delta=t.delta,
                         policy=t.policy, n_trials=t.trials, rng=0,
                         bound=t.bound, risk=t.risk, budget=budget,
                         n_cal=len(run.val), exit_costs=run.macs)
  out = {"violation_rate": float(vr["rate"]), "violation_trials": t.trials}
  for k in ("risk_rate", "cost_rate"):
    if k in vr:
      out[f"violation_{k}"] = float(vr[k])
  return out


def accuracy_drop_section(run: Run, t: Target, res: Dict[str, Any]):
  """res["accuracy_drop"]: thresholds for a drop of at most eps (with the
  Learn-then-Test guarantee at delta), scored on test, and the guarantee's
  violation rate over `trials` random splits; returns (calibration,
  simulation on test)."""
  with warnings.catch_warnings():  # The note goes into res and the summary.
    warnings.simplefilter("ignore", ee.calibrate.CertificationWarning)
    cal = ee.calibrate_accuracy_drop(
        run.val_logits, run.val.labels, eps=t.eps, policy=t.policy,
        delta=t.delta, exit_costs=run.macs, bound=t.bound, risk=t.risk)
  fields, sim = _scored(run, cal, t.policy, res)
  d = res["accuracy_drop"] = {"policy": t.policy, "eps": t.eps,
                              "delta": t.delta, **fields}
  if t.delta is not None:  # Fewest validation images that can certify.
    d["min_val_examples"] = cal.info["min_n"]
    d["note"] = cal.info["note"]
    d["guarantee"] = _guarantee(cal, "accuracy")
  if t.trials:
    d.update(_violations(run, t))
  return cal, sim


def certified_section(run: Run, t: Target, fraction: float,
                      res: Dict[str, Any]):
  """res["certified"]: the joint rule (drop <= eps and average cost <= the
  budget, with probability >= 1 - delta), scored on test; returns
  (calibration, simulation on test)."""
  macs = run.macs
  budget = max(fraction * float(macs[-1]), float(macs[0]))
  cal = ee.certify_joint(run.val_logits, run.val.labels, t.eps, budget,
                         t.delta, t.risk, t.bound, t.policy, macs)
  fields, sim = _scored(run, cal, t.policy, res)
  res["certified"] = {"policy": t.policy, "budget_fraction": fraction,
                      "budget_macs": budget, **fields,
                      "guarantee": _guarantee(cal, "joint")}
  if t.trials:
    res["certified"].update(_violations(run, t, budget))
  return cal, sim


def staged_section(run: Run, thresholds, policy: str, sim,
                   ideal_speedup: float) -> Dict[str, Any]:
  """res["staged"]: real early exit on the test images, timed against the
  one-pass network, and its agreement with the simulation `sim`."""
  tr = run.train
  x = np.asarray(steps.preprocess(None, run.test.images, mean=tr.mean,
                                  std=tr.std, train=False))
  sp = staged_speedup(run.model, run.variables, x, thresholds, policy,
                      mean=tr.mean, std=tr.std, image_shape=tr.image_shape)
  return {
      "seconds_full": sp["seconds_full"],
      "seconds_staged": sp["seconds_staged"],
      "measured_speedup": sp["speedup"], "ideal_speedup": ideal_speedup,
      "fraction_of_ideal": sp["speedup"] / ideal_speedup,
      "agreement_with_simulation": float(np.mean(
          sp["predictions"] == sim["predictions"]))}


def write_outputs(run: Run, res: Dict[str, Any], curves, cal, policy: str,
                  eps: float, delta, plots: bool) -> None:
  """<workdir>/eval/ (eval.json, plots) and <workdir>/exit_policy.json
  (the saved rule and, if certified, its "guarantee")."""
  out = paths.path(run.workdir) / "eval"
  out.mkdir(parents=True, exist_ok=True)
  if plots:
    ee.plot_exit_accuracy(res["anytime"]["test_acc"],
                          os.fspath(out / "anytime.png"))
    ee.plot_accuracy_cost(curves, os.fspath(out / "budget.png"),
                          xlabel="average MACs per image",
                          anytime=(run.macs, np.asarray(
                              res["anytime"]["test_acc"])))
  exit_policy.write_strict_json(out / "eval.json", res)
  tr = run.train
  saved = res.get("certified", res["accuracy_drop"])
  policy_json = {
      "policy": policy, "thresholds": _tolist(cal.thresholds),
      "exit_macs": _tolist(run.macs), "eps": eps, "delta": delta,
      "val_accuracy": float(cal.val_accuracy),
      "image_shape": list(tr.image_shape), "mean": list(tr.mean),
      "std": list(tr.std), "num_classes": tr.num_classes,
      "model": run.config.model.name}
  if "guarantee" in saved:
    policy_json["guarantee"] = saved["guarantee"]
  exit_policy.write_strict_json(paths.path(run.workdir) / "exit_policy.json",
                                policy_json)
