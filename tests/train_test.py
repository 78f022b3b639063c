"""End-to-end training on the embedded digits set (reduced budget)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import helpers
from mexd import data as data_lib
from mexd import predict
from mexd import sharding
from mexd import train
from mexd import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(**overrides):
  return helpers.digits_config(**{"num_epochs": 3, "log_every_steps": 5,
                                  "eval_every_epochs": 1, **overrides})


@pytest.mark.slow
def test_digits_end_to_end_and_checkpoint_reload(tmp_path):
  config = small_config(num_epochs=6)
  res = train.train_and_evaluate(config, str(tmp_path))
  # 10 classes: chance is 10 %; every exit must be clearly above it.
  assert min(res["test"]["acc"]) > 0.3, res["test"]
  assert res["test"]["acc"][-1] > 0.8, res["test"]
  assert res["steps"] == 6 * ((1438 - 180) // 64)
  for name in ("config.json", "splits.npz", "metrics.jsonl", "results.json"):
    assert (tmp_path / name).exists(), name
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert {"loss", "loss/ce", "loss/kd", "temperature"} <= set(rows[0])
  # The checkpoint reloads to identical predictions.
  splits, _ = data_lib.load_splits(config.data)
  model = predict.build_model(config, 10)
  variables = workdir_lib.load_variables(str(tmp_path))
  mesh = sharding.make_mesh(1)
  pred = predict.Predictor(model, splits["train"].mean, splits["train"].std,
                         mesh, 256, np.float32)
  logits = pred.logits(variables, splits["test"])
  acc = (logits.argmax(-1) == splits["test"].labels[None]).mean(-1)
  np.testing.assert_allclose(acc, res["test"]["acc"], atol=0)
  # Re-running in the same workdir resumes at the end: nothing to train.
  res2 = train.train_and_evaluate(config, str(tmp_path))
  np.testing.assert_allclose(res2["test"]["acc"], res["test"]["acc"])


def test_workdir_with_other_config_is_refused(tmp_path):
  train.train_and_evaluate(small_config(num_epochs=1), str(tmp_path))
  other = small_config(num_epochs=1, method="ce")
  with pytest.raises(workdir_lib.WorkdirError, match="fields differ: method"):
    train.train_and_evaluate(other, str(tmp_path))


def test_run_saved_before_a_new_optional_field_resumes(tmp_path):
  """An unset (None) field missing from an older config.json is no change."""
  config = small_config(num_epochs=1)
  res = train.train_and_evaluate(config, str(tmp_path))
  saved = json.load(open(tmp_path / "config.json"))
  assert "image_size" in saved["data"] and saved["data"]["image_size"] is None
  del saved["data"]["image_size"]
  json.dump(saved, open(tmp_path / "config.json", "w"))
  again = train.train_and_evaluate(config, str(tmp_path))
  assert again["steps"] == res["steps"]
  saved["data"]["image_size"] = 32  # A set value is a change.
  json.dump(saved, open(tmp_path / "config.json", "w"))
  with pytest.raises(workdir_lib.WorkdirError, match="fields differ: data"):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.slow
def test_cli_overrides_reach_the_run(tmp_path):
  cmd = [sys.executable, "-m", "mexd.train",
         "--config=configs/digits.py", "--config.method=ce",
         "--config.num_epochs=1", "--config.progress_bar=False",
         "--config.num_devices=1", f"--workdir={tmp_path}"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "method ce" in out.stdout
  saved = json.load(open(tmp_path / "config.json"))
  assert saved["method"] == "ce" and saved["num_epochs"] == 1
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert "loss/kd" not in rows[0]  # CE has no distillation term.
  assert "exit" in out.stdout and "test acc" in out.stdout


@pytest.mark.slow
def test_teacher_student_erde(tmp_path):
  """Two-stage recipe: a CE teacher, then an ERDE student distilled from it."""
  teacher = small_config(num_epochs=2, method="ce")
  train.train_and_evaluate(teacher, str(tmp_path / "teacher"))
  student = small_config(num_epochs=2, method="erde")
  student.model.kwargs.widths = (16, 32, 64)
  student.teacher_workdir = str(tmp_path / "teacher")
  res = train.train_and_evaluate(student, str(tmp_path / "student"))
  assert res["test"]["acc"][-1] > 0.3, res["test"]
  rows = [json.loads(l) for l in open(tmp_path / "student" / "metrics.jsonl")]
  train_rows = [r for r in rows if r["split"] == "train"]
  assert {"loss/ce", "loss/kd", "loss/ent"} <= set(train_rows[0]), (
      sorted(train_rows[0]))


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nonfinite_loss_stops_or_skips(tmp_path, policy):
  # A denormal temperature overflows logits / T: the KD term is NaN.
  config = small_config(num_epochs=1, method="pl_const", nonfinite=policy)
  config.loss.pl_const.temperature = 1e-45
  if policy == "stop":
    with pytest.raises(FloatingPointError,
                       match=r"step \d+: non-finite loss term\(s\) .*loss/kd"):
      train.train_and_evaluate(config, str(tmp_path))
  else:
    res = train.train_and_evaluate(config, str(tmp_path))
    assert res["skipped_steps"] == res["steps"]
