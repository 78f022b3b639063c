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
from typing import Any, Dict, NamedTuple, Sequence
import warnings

import jax
import numpy as np

from mexd import data as data_lib
from mexd import early_exit as ee
from mexd import errors
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
}


def _valid(flag: str, cli: bool) -> str:
  return _VALID[flag].format(policies=", ".join(ee.policy_names()),
                             none="0" if cli else "None")


def check_args(*, policies: Sequence[str], budgets: Sequence[float],
               eps: float, delta, trials: int, chosen_policy: str,
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
                 timing: bool = True) -> Dict[str, Any]:
  """Evaluates the run in `workdir`; returns (and writes) the results dict.

  Args:
    workdir: a finished (or checkpointed) training run.
    policies: exit policies to compare (mexd.early_exit.policy_names()).
    budgets: average-cost budgets as fractions of the full network's cost.
    eps: tolerated accuracy drop vs the final exit (absolute, e.g. 0.02).
      Learn-then-Test needs n >= log(delta) / log(1 - eps) validation
      images to certify any early exit (`ee.calibrate.ltt_min_n`): 230 for
      eps = 0.01, delta = 0.1, more than digits' 180; 114 for eps = 0.02.
      With fewer, the result's accuracy_drop "note" says so.
    delta: the guarantee's failure probability (None: empirical rule only).
    trials: random calibration/test splits for the violation rate (0: none).
    chosen_policy: the policy saved in exit_policy.json (calibrated to eps,
      delta).
    plots: write PNG plots.
    timing: measure staged vs one-pass wall-clock.
  """
  check_args(policies=policies, budgets=budgets, eps=eps, delta=delta,
             trials=trials, chosen_policy=chosen_policy)
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
  cal, sim = accuracy_drop_section(run, eps, delta, trials, chosen_policy,
                                   res)
  if timing:
    res["staged"] = staged_section(run, cal.thresholds, chosen_policy, sim,
                                   res["accuracy_drop"]["ideal_speedup"])
  write_outputs(run, res, curves, cal, chosen_policy, eps, delta, plots)
  return res


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


def accuracy_drop_section(run: Run, eps: float, delta, trials: int,
                          policy: str, res: Dict[str, Any]):
  """res["accuracy_drop"]: thresholds for a drop of at most eps (with the
  Learn-then-Test guarantee at delta), scored on test, and the guarantee's
  violation rate over `trials` random splits; returns (calibration,
  simulation on test)."""
  macs = run.macs
  with warnings.catch_warnings():  # The note goes into res and the summary.
    warnings.simplefilter("ignore", ee.calibrate.CertificationWarning)
    cal = ee.calibrate_accuracy_drop(run.val_logits, run.val.labels, eps=eps,
                                     policy=policy, delta=delta,
                                     exit_costs=macs)
  sim = ee.simulate(run.test_logits, run.test.labels, cal.thresholds, policy,
                    macs)
  final_acc = float(res["anytime"]["test_acc"][-1])
  d = res["accuracy_drop"] = {
      "policy": policy, "eps": eps, "delta": delta,
      "thresholds": _tolist(cal.thresholds),
      "val_acc": float(cal.val_accuracy),
      "test_acc": float(sim["accuracy"]),
      "test_drop": final_acc - float(sim["accuracy"]),
      "test_avg_macs": float(sim["avg_cost"]),
      "ideal_speedup": float(macs[-1] / sim["avg_cost"]),
      "exit_fraction": _tolist(sim["exit_fraction"]),
      "val_examples": len(run.val)}
  if delta is not None:  # Fewest validation images that can certify an exit.
    d["min_val_examples"] = cal.info["min_n"]
    d["note"] = cal.info["note"]
  if trials:
    pool_logits = np.concatenate([run.val_logits, run.test_logits], axis=1)
    pool_labels = np.concatenate([run.val.labels, run.test.labels])
    vr = ee.violation_rate(pool_logits, pool_labels, eps, delta=delta,
                           policy=policy, n_trials=trials, rng=0)
    d["violation_rate"] = float(vr["rate"])
    d["violation_trials"] = trials
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
  """<workdir>/eval/ (eval.json, plots) and <workdir>/exit_policy.json."""
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
  exit_policy.write_strict_json(paths.path(run.workdir) / "exit_policy.json", {
      "policy": policy, "thresholds": _tolist(cal.thresholds),
      "exit_macs": _tolist(run.macs), "eps": eps, "delta": delta,
      "val_accuracy": float(cal.val_accuracy),
      "image_shape": list(tr.image_shape), "mean": list(tr.mean),
      "std": list(tr.std), "num_classes": tr.num_classes,
      "model": run.config.model.name})


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
  lines.append(
      f"policy {d['policy']}, eps={d['eps']}, delta={d['delta']}: test acc "
      f"{100 * d['test_acc']:.2f}% (drop {100 * d['test_drop']:.2f} points),"
      f" avg MACs {d['test_avg_macs']:.3g} (ideal speed-up "
      f"{d['ideal_speedup']:.2f}x)")
  if d.get("note"):
    lines.append(f"note: {d['note']}")
  if res.get("checkpoint", {}).get("warning"):
    lines.append(f"warning: {res['checkpoint']['warning']}")
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
