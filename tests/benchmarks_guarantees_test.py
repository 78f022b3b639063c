"""benchmarks/guarantees.py end to end on a short digits run: the JSON it
writes, its violation intervals and its tables."""

import json
import os
import subprocess
import sys

import pytest

from mexd import train
from mexd.configs import digits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_guarantees_benchmark(tmp_path):
  workdir = str(tmp_path / "run")
  c = digits.get_config()
  c.num_epochs = 3
  c.progress_bar = False
  c.num_devices = 1
  train.train_and_evaluate(c, workdir)
  out = tmp_path / "out"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = " ".join(
      f for f in env.get("XLA_FLAGS", "").split()
      if not f.startswith("--xla_force_host_platform_device_count"))
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.guarantees", f"--workdir={workdir}",
       f"--out={out}", "--trials=20", "--n_cal=200,1000", "--eps=0.02",
       "--validity_eps=0.02"], cwd=ROOT, env=env, capture_output=True,
      text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  rec = json.loads((out / "guarantees_digits.json").read_text())
  assert (out / "guarantees_digits.png").stat().st_size > 0
  assert rec["n_val"] == 180 and rec["n_cal_used"] == [200]  # 1000 skipped
  # Every (risk, bound) pair and every cost bound at each budget.
  assert len(rec["power"]["accuracy"]) == 9
  assert len(rec["power"]["cost"]) == 2 * 5  # 4 bounds + the empirical rule
  assert len(rec["validity"]) == 9 + 2 * 4
  for row in rec["validity"]:
    assert row["trials"] == 20
    assert row["rate"] == row["violations"] / 20
    lo, hi = row["ci95"]
    assert lo <= row["rate"] <= hi
  for row in rec["power"]["cost"]:
    assert 0 < row["cost"] <= 1
  assert "| consistency | binomial |" in proc.stdout
  assert "Violation rate over 20 random splits" in proc.stdout
