"""End-to-end early-exit evaluation of a trained digits run."""

import json
import re
import os
import subprocess
import sys

import numpy as np
import pytest

from mexd.configs import digits
from mexd import data as data_lib
from mexd import evaluate
from mexd import evaluation
from mexd import exit_policy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(digits_run):
  """A trained 5-epoch digits run (tests/conftest.py), this module's copy."""
  return digits_run


def test_evaluate_run(run_dir):
  res = evaluate.evaluate_run(run_dir, policies=("max_prob", "entropy"),
                              budgets=(0.5, 0.8), trials=20, timing=True)
  macs = np.asarray(res["exit_macs"])
  assert np.all(np.diff(macs) > 0), macs  # Cost grows with depth.
  results = json.load(open(os.path.join(run_dir, "results.json")))
  np.testing.assert_allclose(res["anytime"]["test_acc"],
                             results["test"]["acc"])
  for row in res["budget_calibration"]:
    # Budgets hold exactly on validation (thresholds come from it).
    assert row["val_avg_macs"] <= row["budget_macs"] + 1e-6, row
  # Real early exit predicts what the simulation predicts.
  assert res["staged"]["agreement_with_simulation"] >= 0.999
  d = res["accuracy_drop"]
  assert 0 <= d["violation_rate"] <= 1
  for name in ("eval/eval.json", "eval/anytime.png", "eval/budget.png",
               "exit_policy.json"):
    assert os.path.exists(os.path.join(run_dir, name)), name
  policy = json.load(open(os.path.join(run_dir, "exit_policy.json")))
  assert policy["thresholds"][-1] == "-inf"  # Strict JSON, see below.
  assert policy["image_shape"] == [8, 8, 1]
  np.testing.assert_array_equal(
      evaluate.load_exit_policy(run_dir)["thresholds"],
      np.asarray(d["thresholds"], np.float32))


def _strict_loads(text):
  def refuse(name):
    raise ValueError(f"non-standard JSON constant {name}")
  return json.loads(text, parse_constant=refuse)


def test_written_json_is_strict_and_thresholds_round_trip(run_dir):
  res = evaluate.evaluate_run(run_dir, policies=("max_prob",),
                              budgets=(0.3, 1.0), trials=0, timing=False,
                              plots=False)
  for name in ("eval/eval.json", "exit_policy.json"):
    with open(os.path.join(run_dir, name)) as f:
      _strict_loads(f.read())  # No Infinity / NaN.
  thresholds = res["accuracy_drop"]["thresholds"]
  assert thresholds[-1] == -np.inf
  policy = evaluate.load_exit_policy(
      os.path.join(run_dir, "exit_policy.json"))
  assert policy["thresholds"].dtype == np.float32
  np.testing.assert_array_equal(policy["thresholds"],
                                np.asarray(thresholds, np.float32))
  back = evaluate.load_eval(run_dir)
  assert back["accuracy_drop"]["thresholds"] == thresholds
  rows = back["budget_calibration"]
  assert [r["thresholds"] for r in rows] == [
      r["thresholds"] for r in res["budget_calibration"]]


def test_thresholds_encoding():
  enc = evaluate.encode_thresholds([0.5, np.inf, -np.inf])
  assert enc == [0.5, "inf", "-inf"]
  assert json.dumps(enc, allow_nan=False) == '[0.5, "inf", "-inf"]'
  assert evaluate.decode_thresholds(enc) == [0.5, np.inf, -np.inf]
  with pytest.raises(ValueError, match="NaN threshold"):
    evaluate.encode_thresholds([np.nan])
  with pytest.raises(ValueError, match="invalid threshold 'Infinity'"):
    evaluate.decode_thresholds(["Infinity"])
  # A non-finite float outside the thresholds raises instead of writing
  # Infinity (allow_nan=False).
  with pytest.raises(ValueError):
    exit_policy.write_strict_json("/nonexistent/x.json", {"speedup": np.inf})


def test_thresholds_do_not_depend_on_test_labels(run_dir, monkeypatch):
  base = evaluate.evaluate_run(run_dir, policies=("max_prob",),
                               budgets=(0.6,), trials=0, timing=False,
                               plots=False)
  # Scramble the test labels the evaluation sees: thresholds must not move.
  real = data_lib.load_splits

  def scrambled(cfg):
    splits, idx = real(cfg)
    t = splits["test"]
    labels = np.random.default_rng(0).permutation(t.labels)
    splits["test"] = t.take(np.arange(len(t)), labels)
    return splits, idx

  monkeypatch.setattr(data_lib, "load_splits", scrambled)
  other = evaluate.evaluate_run(run_dir, policies=("max_prob",),
                                budgets=(0.6,), trials=0, timing=False,
                                plots=False)
  assert other["accuracy_drop"]["thresholds"] == (
      base["accuracy_drop"]["thresholds"])
  assert other["budget_calibration"][0]["thresholds"] == (
      base["budget_calibration"][0]["thresholds"])
  assert other["anytime"]["test_acc"] != base["anytime"]["test_acc"]


def test_cascade_costs_include_earlier_heads():
  import jax
  import jax.numpy as jnp
  from mexd import models
  from mexd.models import costs
  m = models.get_model("digits_cnn", num_classes=10)
  v = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  prefix = np.array([r["macs"] for r in costs.exit_costs(m, v, (8, 8, 1))])
  cascade = np.array([r["macs"] for r in costs.exit_costs(
      m, v, (8, 8, 1), cascade=True)])
  assert cascade[0] == prefix[0]
  assert np.all(np.diff(cascade - prefix) > 0)  # One more head each exit.


# (mexd.evaluate arguments, regex of the one error line)
BAD_CLI = [
    (["--trials=-1"], r"--trials must be an integer >= 0 \(0 skips the "
                      r"violation rate\); got -1"),
    (["--trials=abc"], r"flag --trials=abc: invalid literal for int\(\).*; "
                       r"--trials takes an integer >= 0"),
    (["--trials=1.5"], r"flag --trials=1\.5: .*--trials takes an integer"),
    (["--budgets="], r"--budgets must be comma-separated fractions of the "
                     r"full network's cost in \(0, 1\], e\.g\. 0\.5,0\.8; "
                     r"got an empty list"),
    (["--budgets=abc"], r"--budgets must be .*; got 'abc' \(not a number\)"),
    (["--budgets=0.5,,0.8"], r"--budgets must be .*; got '' \(not a "
                             r"number\)"),
    (["--budgets=1.5"], r"--budgets must be .* in \(0, 1\].*; got 1\.5"),
    (["--budgets=0"], r"--budgets must be .*; got 0\.0"),
    (["--budgets=nan"], r"--budgets must be .*; got nan"),
    (["--eps=-0.1"], r"--eps must be a tolerated accuracy drop in \(0, 1\), "
                     r"e\.g\. 0\.02; got -0\.1"),
    (["--eps=0"], r"--eps must be .* in \(0, 1\).*; got 0\.0"),
    (["--eps=1"], r"--eps must be .*; got 1\.0"),
    (["--eps=nan"], r"--eps must be .*; got nan"),
    (["--eps=abc"], r"flag --eps=abc: could not convert .*; --eps takes a "
                    r"tolerated accuracy drop in \(0, 1\)"),
    (["--delta=1"], r"--delta must be a failure probability in \(0, 1\), or "
                    r"0 for the empirical rule \(no guarantee\); got 1\.0"),
    (["--delta=-0.1"], r"--delta must be .*; got -0\.1"),
    (["--delta=nan"], r"--delta must be .*; got nan"),
    (["--policies="], r"--policies must be a comma-separated list of exit "
                      r"policies \(entropy, margin, max_prob, patience\); "
                      r"got an empty list"),
    (["--policies=max_prob,oracle"],
     r"--policies: unknown exit policy 'oracle'; valid policies: .*max_prob"),
    (["--policy=oracle"], r"--policy: unknown exit policy 'oracle'"),
    (["--bound=chernoff"], r"--bound must be a concentration bound \(auto, "
                           r"hoeffding, .*wsr\); got 'chernoff'"),
    (["--bound=binomial"], r"--bound=binomial is exact for 0/1 losses only: "
                           r"use it with --risk=consistency"),
    (["--risk=error"], r"--risk must be the certified risk \(consistency, "
                       r"accuracy_drop\), or '' \(empty\).*; got 'error'"),
    (["--certify_budget=1.5"], r"--certify_budget must be a fraction of the "
                               r"full network's cost in \(0, 1\].*; got 1\.5"),
    (["--certify_budget=0.5", "--delta=0"],
     r"--certify_budget needs a guarantee level: give --delta in \(0, 1\)"),
    (["--frobnicate=1"], r"Unknown command line flag 'frobnicate'"),
    (["stray"], r"unexpected arguments \['stray'\]"),
]


def _tree(root):
  """{relative path: bytes} of every file under root."""
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      path = os.path.join(d, f)
      with open(path, "rb") as fh:
        out[os.path.relpath(path, root)] = fh.read()
  return out


@pytest.mark.parametrize("args,pattern", BAD_CLI,
                         ids=[" ".join(a) for a, _ in BAD_CLI])
def test_cli_bad_inputs(run_dir, args, pattern):
  """One `mexd.evaluate: error:` line, status 2, no traceback, the run
  untouched (checked before anything is loaded or written)."""
  before = _tree(run_dir)
  out = subprocess.run(
      [sys.executable, "-m", "mexd.evaluate", f"--workdir={run_dir}", *args],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  assert "Traceback" not in out.stderr, out.stderr[-2000:]
  errors = [l for l in out.stderr.splitlines() if "error:" in l]
  assert len(errors) == 1, out.stderr[-2000:]
  assert errors[0].startswith("mexd.evaluate: error: "), errors
  assert re.search(pattern, errors[0]), errors[0]
  assert _tree(run_dir) == before


def test_too_few_validation_images_for_eps_are_reported(run_dir):
  """digits' 180 validation images cannot certify a drop of eps = 0.01 at
  delta = 0.1 (318 needed with wsr); the result and the summary say so,
  with the fix."""
  res = evaluate.evaluate_run(run_dir, policies=("max_prob",),
                              budgets=(0.5,), eps=0.01, trials=0,
                              timing=False, plots=False)
  d = res["accuracy_drop"]
  assert (d["val_examples"], d["min_val_examples"]) == (180, 318)
  assert d["exit_fraction"][-1] == 1.0  # everyone at the final exit
  line = [l for l in evaluate.format_summary(res).splitlines()
          if l.startswith("note:")]
  assert len(line) == 1, line
  assert re.search(r"n = 180 validation examples are too few for eps = 0\.01, "
                   r"delta = 0\.1 \(the smallest p-value the wsr bound can "
                   r"give, at an accuracy drop of zero, is .*needs n >= 318 "
                   r"at this eps, or eps >= 0\.0176", line[0]), line
  # The default eps = 0.02 needs 158: no such note.
  res = evaluate.evaluate_run(run_dir, policies=("max_prob",),
                              budgets=(0.5,), trials=0, timing=False,
                              plots=False)
  assert res["accuracy_drop"]["eps"] == 0.02
  assert res["accuracy_drop"]["min_val_examples"] == 158
  assert "too few" not in (res["accuracy_drop"]["note"] or "")
  g = res["accuracy_drop"]["guarantee"]
  assert (g["rule"], g["risk"], g["bound"], g["n"]) == (
      "accuracy", "accuracy_drop", "wsr", 180)
  # The label-free risk with Hoeffding-Bentkus needs 114 at eps = 0.02.
  res = evaluate.evaluate_run(run_dir, policies=("max_prob",),
                              budgets=(0.5,), trials=0, timing=False,
                              plots=False, risk="consistency",
                              bound="hoeffding_bentkus")
  assert res["accuracy_drop"]["min_val_examples"] == 114
  assert res["accuracy_drop"]["guarantee"]["bound"] == "hoeffding_bentkus"


def test_certified_budget_is_saved_with_its_guarantee(run_dir):
  """--certify_budget: the saved rule is the joint one; exit_policy.json
  carries its guarantee, and the numbers agree with a direct call."""
  res = evaluate.evaluate_run(run_dir, policies=("max_prob",),
                              budgets=(0.5,), trials=20, timing=False,
                              plots=False, certify_budget=0.7)
  c = res["certified"]
  macs = np.asarray(res["exit_macs"])
  assert c["budget_macs"] == pytest.approx(max(0.7 * macs[-1], macs[0]))
  g = c["guarantee"]
  assert g["rule"] == "joint" and g["budget"] == c["budget_macs"]
  assert g["binding"] in ("cost", "accuracy", "both")
  assert g["val_avg_cost"] <= c["budget_macs"]
  assert 0 <= c["violation_rate"] <= 1 and c["violation_trials"] == 20
  policy = evaluate.load_exit_policy(run_dir)
  np.testing.assert_array_equal(policy["thresholds"],
                                np.asarray(c["thresholds"], np.float32))
  assert policy["guarantee"] == json.loads(json.dumps(g))
  from mexd.early_exit import certify  # pylint: disable=import-outside-toplevel
  run = evaluation.load_run(run_dir)
  ref = certify.certify_joint(run.val_logits, run.val.labels, 0.02,
                              c["budget_macs"], 0.1, exit_costs=run.macs)
  np.testing.assert_array_equal(ref.thresholds, policy["thresholds"])
  assert ref.info["feasible"] == g["feasible"]


def test_cli_certify_budget_prints_the_certified_rule(run_dir):
  out = subprocess.run(
      [sys.executable, "-m", "mexd.evaluate", f"--workdir={run_dir}",
       "--certify_budget=0.7", "--trials=0", "--timing=false",
       "--policies=max_prob", "--budgets=0.5"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  head = [l for l in lines if l.startswith("certified: drop <= 0.02 and avg "
                                           "MACs <=")]
  assert len(head) == 1 and "70% of full" in head[0], out.stdout
  assert any(l.startswith("  test acc ") for l in lines), out.stdout
  assert "guarantee" in evaluate.load_exit_policy(run_dir)


def test_check_args_names_the_parameter():
  """The Python API names its arguments (the CLI, its flags)."""
  good = dict(policies=["max_prob"], budgets=[0.5], eps=0.02, delta=0.1,
              trials=0, chosen_policy="max_prob")
  evaluate.check_args(**good)
  for bad, match in [
      (dict(trials=-1), r"^trials must be an integer >= 0"),
      (dict(trials=2.5), r"^trials must be"),
      (dict(budgets=[]), r"^budgets must be .*empty list"),
      (dict(delta=1.0), r"^delta must be .* or None for the empirical rule"),
      (dict(eps=0.0), r"^eps must be"),
      (dict(chosen_policy="x"), r"^chosen_policy: unknown exit policy 'x'"),
      (dict(risk="x"), r"^risk must be .*or None"),
      (dict(certify_budget=0.5, delta=None), r"^certify_budget needs .* "
                                             r"give delta"),
  ]:
    with pytest.raises(ValueError, match=match):
      evaluate.check_args(**{**good, **bad})


def test_cli_without_checkpoint(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(
      json.loads(digits.get_config().to_json())))
  out = subprocess.run(
      [sys.executable, "-m", "mexd.evaluate", f"--workdir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert "has no checkpoint" in out.stderr.splitlines()[-1]
