"""benchmarks/deploy.py and benchmarks/serving.py end to end, tiny sizes."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _run(args, out):
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(
      f for f in env.get("XLA_FLAGS", "").split()
      if not f.startswith("--xla_force_host_platform_device_count"))
  proc = subprocess.run([sys.executable, "-m", *args, f"--out={out}"],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=900, check=False)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  return json.loads(out.read_text())


@pytest.mark.slow
def test_deploy_and_serving_benchmarks(trained, exported, tmp_path):
  workdir, run = trained
  rec = _run(["benchmarks.deploy", f"--cases=run:{workdir}", "--n=64",
              "--reps=1", "--latency_reps=1"], tmp_path / "deploy.json")
  row = rec["rows"][0]
  fractions = row["exit_fractions"]  # rounded to 3 decimals in the JSON
  assert row["n"] == 64 and abs(sum(fractions) - 1) <= 5e-4 * len(fractions)
  for k in ("exported_img_s", "staged_img_s", "one_pass_img_s"):
    assert row[k] > 0, k
  assert row["ideal_speedup"] >= 1
  assert [r["exit"] for r in rec["latency"]] == [0, 1, 2]
  rec = _run(["benchmarks.serving", f"--workdir={workdir}",
              f"--export={exported}", "--requests=40", "--concurrency=4",
              "--max_seconds=60"], tmp_path / "serving.json")
  modes = {r["mode"]: r for r in rec["rows"]}
  assert set(modes) == {"early_exit", "one_pass"}
  assert modes["early_exit"]["answers"] == 40
  assert modes["one_pass"]["exit_fractions"] == [0.0, 0.0, 1.0]
  assert modes["early_exit"]["mean_macs"] <= modes["one_pass"]["mean_macs"]
  # The answers are the runtime's: accuracy as the calibrated rule's.
  assert modes["one_pass"]["accuracy"] > 0.5
  assert "p50_vs_one_pass" in modes["early_exit"]
