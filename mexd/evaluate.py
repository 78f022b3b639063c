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
import re
import sys
import time
from typing import Any, Dict, Sequence
import warnings

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
from mexd import predict
from mexd import sharding
from mexd import steps
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
        raise errors.InputError(f"invalid threshold {v!r}: expected a number, "
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
  config = workdir_lib.load_config(workdir)
  ckpt = workdir_lib.read_checkpoint(workdir)
  variables = ckpt.variables
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
  tr = splits["train"]
  model = predict.build_model(config, tr.num_classes)
  mesh = sharding.make_mesh(1)
  predictor = predict.Predictor(model, tr.mean, tr.std, mesh, 500,
                                predict.compute_dtype(config), tr.image_shape)
  val, test = splits["val"], splits["test"]
  val_logits = predictor.logits(variables, val)
  test_logits = predictor.logits(variables, test)

  cost_rows = costs_lib.exit_costs(model, variables, tr.image_shape,
                                   cascade=True)
  macs = np.array([r["macs"] for r in cost_rows], np.float64)
  full = macs[-1]
  res: Dict[str, Any] = {
      "workdir": workdir, "checkpoint": checkpoint_info,
      "method": config.method,
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

  with warnings.catch_warnings():  # The note goes into res and the summary.
    warnings.simplefilter("ignore", ee.calibrate.CertificationWarning)
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
      "exit_fraction": _tolist(sim["exit_fraction"]),
      "val_examples": len(val)}
  if delta is not None:  # Fewest validation images that can certify an exit.
    res["accuracy_drop"]["min_val_examples"] = cal.info["min_n"]
    res["accuracy_drop"]["note"] = cal.info["note"]
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
    sp = staged_speedup(model, variables, x, cal.thresholds, chosen_policy,
                        mean=tr.mean, std=tr.std, image_shape=tr.image_shape)
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


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("workdir", None, "Work directory of a training run "
                      "(a local folder or gs://BUCKET/PATH).",
                      required=True)
  flags.DEFINE_list("policies", ["max_prob", "entropy", "margin", "patience"],
                    "Exit policies to compare.")
  flags.DEFINE_list("budgets", ["0.4", "0.5", "0.6", "0.7", "0.8", "0.9"],
                    "Average-cost budgets, fractions of the full cost.")
  flags.DEFINE_float("eps", 0.02, "Tolerated accuracy drop vs the final "
                     "exit, in (0, 1). The guarantee needs >= log(delta) / "
                     "log(1 - eps) validation images (114 at the defaults, "
                     "230 at eps=0.01: more than digits' 180).")
  flags.DEFINE_float("delta", 0.1, "Failure probability of the guarantee, "
                     "in (0, 1) (0: no guarantee, empirical rule).")
  flags.DEFINE_integer("trials", 100, "Random splits for the violation rate "
                       "(>= 0; 0: none).")
  flags.DEFINE_string("policy", "max_prob", "Policy saved in "
                      "exit_policy.json.")
  flags.DEFINE_bool("timing", True, "Measure staged inference wall-clock.")


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
  hostmem.tune_malloc()  # Before XLA's threads allocate; see mexd.hostmem.
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  with errors.one_line_errors("mexd.evaluate"):
    args = dict(policies=FLAGS.policies, budgets=_budgets(FLAGS.budgets),
                eps=FLAGS.eps, delta=FLAGS.delta or None, trials=FLAGS.trials,
                chosen_policy=FLAGS.policy)
    check_args(**args, cli=True)  # Before anything is loaded.
    res = evaluate_run(FLAGS.workdir, timing=FLAGS.timing, **args)
  print(format_summary(res))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
