"""Crash safety: SIGKILL/SIGTERM mid-run, damaged checkpoints, determinism."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mexd import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--config=configs/digits.py", "--config.num_epochs=3",
         "--config.ckpt_every_steps=6", "--config.keep_checkpoints=4",
         "--config.eval_every_epochs=100", "--config.num_devices=1",
         "--config.progress_bar=False"]


def _cmd(workdir):
  return [sys.executable, "-m", "mexd.train", *FLAGS, f"--workdir={workdir}"]


def _run(workdir):
  out = subprocess.run(_cmd(workdir), cwd=REPO, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out


def _steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def _start_and_wait_for_checkpoint(workdir, min_step, log=None):
  proc = subprocess.Popen(_cmd(workdir), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=log or subprocess.DEVNULL)
  deadline = time.time() + 400
  while time.time() < deadline and not any(
      s >= min_step for s in _steps(workdir)):
    assert proc.poll() is None, "the run ended before it could be killed"
    time.sleep(0.2)
  return proc


def _assert_same_params(a, b):
  va, vb = workdir_lib.load_variables(a), workdir_lib.load_variables(b)
  for x, y in zip(jax.tree.leaves(va), jax.tree.leaves(vb)):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run."""
  workdir = str(tmp_path_factory.mktemp("ref"))
  _run(workdir)
  return workdir


@pytest.mark.slow
def test_sigkill_then_rerun_finishes_bitwise_equal(tmp_path, reference):
  workdir = str(tmp_path)
  proc = _start_and_wait_for_checkpoint(workdir, 12)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  out = _run(workdir)
  assert "Resuming from step" in out.stdout
  _assert_same_params(reference, workdir)


@pytest.mark.slow
def test_sigterm_checkpoints_before_exit(tmp_path, reference):
  workdir = str(tmp_path / "run")
  with open(tmp_path / "stderr.txt", "w") as log:
    proc = _start_and_wait_for_checkpoint(workdir, 6, log)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
  assert proc.returncode == 143
  # The step it stopped at was checkpointed (not only the periodic ones).
  err = open(tmp_path / "stderr.txt").read()
  m = re.search(r"Stopped at step (\d+) after SIGTERM", err)
  assert m, err[-2000:]
  assert "resume with the same command" in err
  assert _steps(workdir)[-1] == int(m.group(1))
  _run(workdir)
  _assert_same_params(reference, workdir)


def test_sigint_checkpoints_and_exits_130(tmp_path, reference):
  """Ctrl-C: like SIGTERM, status 130, a resume hint, no traceback."""
  workdir = str(tmp_path / "run")
  with open(tmp_path / "stderr.txt", "w") as log:
    proc = _start_and_wait_for_checkpoint(workdir, 6, log)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
  err = open(tmp_path / "stderr.txt").read()
  assert proc.returncode == 130, err[-2000:]
  assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
  m = re.search(r"mexd.train: stopped at step (\d+) after SIGINT "
                r"\(checkpoint saved\); resume with the same command: "
                r"python -m mexd.train (.*)", err)
  assert m, err[-2000:]
  assert m.group(2).split() == _cmd(workdir)[3:]
  assert _steps(workdir)[-1] == int(m.group(1))
  out = _run(workdir)
  assert f"Resuming from step {m.group(1)}" in out.stdout
  _assert_same_params(reference, workdir)


def test_damaged_latest_checkpoint_falls_back(tmp_path, reference):
  workdir = str(tmp_path)
  shutil.copytree(reference, workdir, dirs_exist_ok=True)
  steps = _steps(workdir)
  assert len(steps) >= 2
  # Flip bytes in the middle of every data file of the newest checkpoint.
  newest = os.path.join(workdir, "checkpoints", str(steps[-1]))
  n = 0
  for root, _, files in os.walk(os.path.join(newest, "state")):
    for f in files:
      p = os.path.join(root, f)
      if os.path.getsize(p) > 4096 and "/d/" in p + "/":
        with open(p, "r+b") as fh:
          fh.seek(os.path.getsize(p) // 2)
          b = fh.read(64)
          fh.seek(os.path.getsize(p) // 2)
          fh.write(bytes(x ^ 0xFF for x in b))
        n += 1
  assert n > 0
  variables = workdir_lib.load_variables(workdir)
  # It fell back to the previous checkpoint, which differs from the final.
  final = workdir_lib.load_variables(reference)
  diffs = [np.abs(x - y).max() for x, y in
           zip(jax.tree.leaves(variables), jax.tree.leaves(final))]
  assert max(diffs) > 0
  # Damage every checkpoint: refusing beats silently starting afresh.
  for s in steps[:-1]:
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(s), "state"))
  with pytest.raises(RuntimeError, match="no readable checkpoint"):
    workdir_lib.load_variables(workdir)
