"""End-to-end early-exit evaluation of a trained digits run."""

import json
import re
import os
import subprocess
import sys

import numpy as np
import pytest

from mexd.configs import digits
from mexd import evaluate
from mexd import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  c = digits.get_config()
  c.num_epochs = 5
  c.progress_bar = False
  c.num_devices = 1
  train.train_and_evaluate(c, workdir)
  return workdir


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
    evaluate._write_strict_json("/nonexistent/x.json", {"speedup": np.inf})


def test_thresholds_do_not_depend_on_test_labels(run_dir, monkeypatch):
  base = evaluate.evaluate_run(run_dir, policies=("max_prob",),
                               budgets=(0.6,), trials=0, timing=False,
                               plots=False)
  # Scramble the test labels the evaluation sees: thresholds must not move.
  real = train.data_lib.load_splits

  def scrambled(cfg):
    splits, idx = real(cfg)
    t = splits["test"]
    labels = np.random.default_rng(0).permutation(t.labels)
    splits["test"] = t.take(np.arange(len(t)), labels)
    return splits, idx

  monkeypatch.setattr(evaluate.data_lib, "load_splits", scrambled)
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


@pytest.mark.parametrize("args,pattern", [
    (["--policies=max_prob,oracle"], "unknown exit policy 'oracle'.*max_prob"),
    (["--budgets=1.5"], r"budget fractions must be in \(0, 1\]"),
    (["--eps=-0.1"], r"eps must be in \[0, 1\)"),
])
def test_cli_bad_inputs(run_dir, args, pattern):
  out = subprocess.run(
      [sys.executable, "-m", "mexd.evaluate", f"--workdir={run_dir}",
       "--trials=0", "--notiming", *args], cwd=REPO, capture_output=True,
      text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]

  assert re.search(pattern, out.stderr.splitlines()[-1]), out.stderr[-500:]


def test_cli_without_checkpoint(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(
      json.loads(digits.get_config().to_json())))
  out = subprocess.run(
      [sys.executable, "-m", "mexd.evaluate", f"--workdir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert "has no checkpoint" in out.stderr.splitlines()[-1]
