"""Smoke test of the speed benchmarks: each script, tiny sizes, one step.

Each script runs as `python -m benchmarks.<name>` in a subprocess (one real
CPU device, not the 8 fake ones of conftest) and must write its JSON record
with the provenance fields and a non-empty table. The PyTorch comparison of
step_time runs only when torch (the optional `bench` extra) is installed.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_TORCH = importlib.util.find_spec("torch") is not None
ENV_KEYS = ("command", "date", "git", "jax", "torch", "device",
            "loadavg_start", "loadavg_end")


def _run(script, tmp_path, *args, timeout=300):
  out = tmp_path / f"{script}.json"
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(
      f for f in env.get("XLA_FLAGS", "").split()
      if not f.startswith("--xla_force_host_platform_device_count"))
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(
      [sys.executable, "-m", f"benchmarks.{script}", "--out", str(out),
       *args], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  record = json.loads(out.read_text())
  for k in ENV_KEYS:
    assert k in record["environment"], k
  assert record["environment"]["command"].startswith(
      f"python -m benchmarks.{script} --out ")
  assert record["benchmark"] and "out" not in record["settings"]
  assert record["environment"]["device"]["platform"] == "cpu"
  assert record["rows"]
  return record


@pytest.mark.slow
@pytest.mark.parametrize("net_args, net", [
    (["--configs", "4:4", "--stages", "1,1,1,1"], "resnet18"),
    (["--nets", "fashion_student", "--batch", "4"], "fashion_student")])
def test_step_time(tmp_path, net_args, net):
  args = net_args + ["--steps", "1", "--reps", "1", "--warmup", "0"]
  if not HAS_TORCH:
    args.append("--no_torch")
  row = _run("step_time", tmp_path, *args)["rows"][0]
  assert row["net"] == net and row["jax_img_s"] > 0
  if net != "resnet18":
    assert row["width"] is None  # the recipe's network, no width option
  if HAS_TORCH:
    assert row["params_jax"] == row["params_torch"]
    assert row["ratio_jax_over_torch"] > 0


@pytest.mark.slow
def test_overhead(tmp_path):
  rows = _run("overhead", tmp_path, "--methods", "ce,pl", "--batch", "4",
              "--width", "4", "--stages", "1,1,1,1", "--steps", "1",
              "--reps", "1", "--warmup", "0")["rows"]
  assert [r["method"] for r in rows] == ["ce", "pl"]
  assert rows[0]["overhead_pct"] == 0.0


@pytest.mark.slow
def test_early_exit_speed(tmp_path):
  rec = _run("early_exit_speed", tmp_path, "--models", "digits_cnn",
             "--fractions", "0.5", "--n", "64", "--batch", "16", "--reps", "1",
             "--latency_reps", "2")
  assert [(r["mode"], r["batch"]) for r in rec["rows"]] == [
      ("batch", 64), ("pooled", 16)]
  batch, pooled = rec["rows"]
  # Same thresholds, same exits in both modes; every stage ran on <= B rows.
  assert batch["exit_fractions"] == pooled["exit_fractions"]
  assert max(pooled["buckets"]) == 16
  for row in rec["rows"]:
    assert row["ideal_speedup"] >= 1.0 and row["wall_speedup"] > 0
    assert sum(row["exit_fractions"]) == pytest.approx(1.0, abs=1e-2)
    assert row["time_model_speedup"] >= 1.0
  assert [r["exit"] for r in rec["latency"]] == [0, 1, 2]
  cascade = rec["cascade"]["digits_cnn"]
  assert np.all(np.diff(cascade["flops"]) > 0)  # Deeper exits cost more,
  for mode in ("batch", "pooled"):  # in time too.
    assert np.all(np.diff(cascade["stage_seconds_per_image"][mode]) > 0)


@pytest.mark.slow
def test_recipes_drill_one_recipe(tmp_path):
  """benchmarks.recipes writes mock SVHN and runs its CE recipe."""
  pytest.importorskip("tensorflow_datasets")
  rec = _run("recipes", tmp_path, "--only", "svhn:ce",
             "--workroot", str(tmp_path / "runs"), timeout=1200)
  (row,) = rec["rows"]
  assert "error" not in row, row
  assert row["data"] == "tfds:svhn_cropped" and row["model"] == "resnet18"
  assert row["exits"] == 4 and row["steps"] == (400 - 40) // 16


def test_input_pipeline(tmp_path):
  rec = _run("input_pipeline", tmp_path, "--num", "512", "--batch", "32",
             "--steps", "4", "--reps", "1", "--no_feed",
             "--step_images_per_s", "100")
  assert {r["stage"] for r in rec["rows"]} == {
      "host_batch", "host_batch+make_global", "prefetch"}
  assert all(r["img_s"] > 0 for r in rec["rows"])


def test_stream_pipeline(tmp_path):
  rec = _run("stream_pipeline", tmp_path, "--num", "16", "--batch", "4",
             "--steps", "3", "--reps", "1", "--workers", "0,1",
             "--data_dir", str(tmp_path / "data"))
  stages = {r["stage"]: r for r in rec["rows"]}
  assert {"decode (full)", "random-resized crop (draft)",
          "pipeline, 0 workers", "pipeline, 1 workers"} <= set(stages)
  assert all(r["img_s"] > 0 for r in rec["rows"])
  assert rec["mean_jpeg_bytes"] > 50_000  # ImageNet-like files.
  assert all(c["host_cores"] > 0 for c in rec["chips"])


def test_memory(tmp_path):
  row = _run("memory", tmp_path, "--models", "digits_cnn", "--batch",
             "8")["rows"][0]
  assert row["peak_mib"] > 0 and row["argument_mib"] > 0


def test_batch_norm(tmp_path):
  row = _run("batch_norm", tmp_path, "--batch", "2", "--width", "4",
             "--per_stage", "1", "--reps", "1")["rows"][0]
  assert row["layers"] == 4
  assert row["flax_ms"] > 0 and row["mexd_ms"] > 0
  # Both implementations computed the same gradients.
  assert row["max_abs_grad_diff"] < 1e-4


def test_sharded_step_with_a_teacher(tmp_path):
  """The fixture's sharded step; erde also runs the frozen teacher."""
  rows = _run("sharded_step", tmp_path, "--model", "digits_cnn", "--image",
              "8,8,1", "--classes", "10", "--method", "erde", "--batch", "8",
              "--devices", "1,2", "--steps", "1")["rows"]
  assert [r["devices"] for r in rows] == [1, 2]
  # The same global batch on 1 and 2 devices: the same loss.
  assert rows[1]["loss"] == pytest.approx(rows[0]["loss"], rel=1e-4)


@pytest.mark.slow
def test_inference_speed(tmp_path):
  rows = _run("inference_speed", tmp_path, "--nets", "fashion_student",
              "--n", "64", "--batch", "32", "--reps", "1")["rows"]
  programs = {r["program"] for r in rows}
  assert programs == {"one_pass", "staged"}
  for r in rows:
    assert r["jax_img_s"] > 0
    if HAS_TORCH:
      # Same weights: PyTorch takes the same exits and predicts the same.
      assert r["same_exit"] >= 0.95, r
      assert r["ratio_jax_over_torch"] > 0


@pytest.mark.slow
def test_conv_layers(tmp_path):
  rows = _run("conv_layers", tmp_path, "--net", "fashion_student", "--batch",
              "2", "--reps", "1")["rows"]
  layers = [r for r in rows if r["layer"] != "total"]
  # 4 stages x 2 convs + 4 exit heads, at 28, 14, 7 and 4 pixels.
  assert len(layers) == 12
  assert [r["hw"] for r in layers if r["layer"].endswith("conv0")] == [
      28, 14, 7, 4]
  assert rows[-1]["jax_fwd_ms"] == pytest.approx(
      sum(r["jax_fwd_ms"] for r in layers))
