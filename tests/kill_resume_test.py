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
  _flip_newest(workdir)
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


def _flip_newest(workdir):
  """Flips bytes in the middle of every data file of the newest checkpoint;
  returns its step."""
  step = _steps(workdir)[-1]
  n = 0
  for root, _, files in os.walk(
      os.path.join(workdir, "checkpoints", str(step), "state")):
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
  return step


@pytest.mark.slow
def test_damaged_final_checkpoint_is_written_again(tmp_path, reference):
  """Rerunning a finished run whose final checkpoint is damaged trains the
  last steps again, saves the final step anew (bitwise equal to an intact
  run), and evaluation then reads the final step."""
  from mexd import evaluate  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  final = _flip_newest(workdir)
  older = _steps(workdir)[-2]
  ckpt = workdir_lib.read_checkpoint(workdir)
  assert ckpt.step == older and [s for s, _ in ckpt.unreadable] == [final]
  report = evaluate.checkpoint_report(workdir, ckpt)
  assert f"evaluating checkpoint {older}" in report["warning"]
  assert report["final_step"] == final
  out = _run(workdir)
  assert re.search(rf"checkpoint\(s\) \[{final}\] could not be read.*"
                   rf"resuming from step {older}", out.stderr), out.stderr
  assert f"Resuming from step {older}" in out.stdout
  aside = os.listdir(os.path.join(workdir, "damaged-checkpoints"))
  assert len(aside) == 1 and aside[0].startswith(f"{final}-"), aside
  ckpt = workdir_lib.read_checkpoint(workdir)
  assert (ckpt.step, ckpt.unreadable) == (final, ())
  assert evaluate.checkpoint_report(workdir, ckpt)["warning"] is None
  _assert_same_params(reference, workdir)


def test_evaluate_reads_what_training_resumes(tmp_path, reference):
  """One restore rule: with a metadata file of the newest checkpoint gone,
  evaluation falls back to the previous step (as resume does) and says so."""
  from mexd import evaluate  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  steps = _steps(workdir)
  newest = os.path.join(workdir, "checkpoints", str(steps[-1]))
  metas = [os.path.join(r, f) for r, _, fs in os.walk(newest) for f in fs
           if f == "_METADATA"]
  assert metas, os.listdir(newest)
  os.remove(metas[0])
  ckpt = workdir_lib.read_checkpoint(workdir)
  assert ckpt.step == steps[-2]
  assert [s for s, _ in ckpt.unreadable] == [steps[-1]]
  res = evaluate.evaluate_run(workdir, policies=("max_prob",), budgets=(0.5,),
                              trials=0, plots=False, timing=False)
  assert res["checkpoint"]["step"] == steps[-2]
  assert res["checkpoint"]["final_step"] == steps[-1]
  assert "could not be read" in res["checkpoint"]["warning"]
  assert "warning:" in evaluate.format_summary(res)


def _wait_for(pred, proc, what, timeout=400):
  deadline = time.time() + timeout
  while not pred():
    assert proc.poll() is None, f"the first run ended before {what}"
    assert time.time() < deadline, f"timed out waiting for {what}"
    time.sleep(0.1)


@pytest.mark.slow
def test_second_writer_is_refused_then_runs_after_the_first(tmp_path):
  """While a run trains, the same command is refused naming its pid; once
  the first has stopped (SIGTERM), the same command takes the lock and
  resumes. The first run is long (400 epochs) so that it still trains while
  the second starts on a loaded machine; it is stopped, never finished."""
  workdir = str(tmp_path / "run")
  cmd = _cmd(workdir)[:-1] + ["--config.num_epochs=400",
                              f"--workdir={workdir}"]

  def start(log):
    return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=log)

  with open(tmp_path / "first.txt", "w") as log:
    first = start(log)
    try:
      _wait_for(lambda: _steps(workdir), first, "its first checkpoint")
      assert os.path.exists(os.path.join(workdir, ".lock"))
      second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                              timeout=300)
      assert first.poll() is None, "the first run ended before the second"
    finally:
      first.send_signal(signal.SIGTERM)
      first.wait(timeout=300)
  assert first.returncode == 143, open(tmp_path / "first.txt").read()[-2000:]
  assert second.returncode == 2, second.stderr[-2000:]
  lines = [l for l in second.stderr.splitlines() if "error:" in l]
  assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
  assert re.search(rf"{re.escape(workdir)} is being written by another "
                   rf"mexd.train \(pid {first.pid} on host ", lines[0]), lines
  assert "delete " + os.path.join(workdir, ".lock") in lines[0]
  assert not os.path.exists(os.path.join(workdir, ".lock"))  # Released.
  stopped = _steps(workdir)[-1]
  with open(tmp_path / "again.txt", "w") as log:
    again = start(log)
    _wait_for(lambda: _steps(workdir)[-1] > stopped, again,
              "a checkpoint after the resume")
    again.send_signal(signal.SIGTERM)
    again.wait(timeout=300)
  out = open(tmp_path / "again.txt").read()
  assert again.returncode == 143, out[-2000:]
  assert f"Resuming from step {stopped}" in out, out[-2000:]


def test_lock_of_a_killed_run_is_taken_over(tmp_path, reference):
  """SIGKILL leaves the lock behind; the next run takes it over."""
  workdir = str(tmp_path / "run")
  proc = _start_and_wait_for_checkpoint(workdir, 6)
  assert os.path.exists(os.path.join(workdir, ".lock"))
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert os.path.exists(os.path.join(workdir, ".lock"))
  out = _run(workdir)
  assert "Resuming from step" in out.stdout
  assert not os.path.exists(os.path.join(workdir, ".lock"))
  _assert_same_params(reference, workdir)


def test_ctrl_c_outside_the_loop_is_one_line(tmp_path):
  """Ctrl-C before the first step (data loading, compiling) or in the final
  evaluation: status 130 and one line saying how to go on, no traceback."""
  code = "\n".join([
      "import sys",
      "from mexd import train",
      "train.define_flags()",
      "train.parse_flags(sys.argv)",
      "def interrupted(*args, **kwargs):",
      "  raise KeyboardInterrupt",
      "train.train_and_evaluate = interrupted",
      "train.main(['mexd.train'])"])
  workdir = str(tmp_path / "run")
  out = subprocess.run([sys.executable, "-c", code, "--config=digits",
                        f"--workdir={workdir}"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 130, out.stderr[-2000:]
  err = [l for l in out.stderr.splitlines() if l.strip()]
  assert err == ["mexd.train: interrupted (Ctrl-C) outside the training "
                 "loop; nothing is lost: the same command starts the run or "
                 "resumes it from its last checkpoint: python -m mexd.train "
                 f"--config=digits --workdir={workdir}"], err
