"""Scaling: 2 processes x 4 devices = 1 process x 8 devices; resuming on
another device count ends where an uninterrupted run ends.

Every run here is the same 2-step digits run (batch 512, one epoch), so one
uninterrupted 8-device run is the reference for all of them. The module
shares a persistent compilation cache between its runs (and the xdist
workers of a session), so each program compiles once per device count.
"""

import fcntl
import os
import signal
import subprocess
import sys

import jax
from jax.experimental.compilation_cache import compilation_cache
import numpy as np
import pytest

import helpers
from mexd.configs import digits
from mexd import train
from mexd import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(REPO, "launch", "local_multiprocess.py")
STEPS = 2  # 1258 training images // 512.
# The CLI spelling of _config(): the runs must compute the same thing.
CLI_FLAGS = ("--config=configs/digits.py", "--config.num_epochs=1",
             "--config.batch_size=512", "--config.progress_bar=False",
             "--config.num_devices=8")


def _config(num_devices=8):
  c = digits.get_config()
  c.num_epochs = 1
  c.batch_size = 512
  c.progress_bar = False
  c.num_devices = num_devices
  return c


def _session_dir(tmp_path_factory):
  """A folder shared by the xdist workers of this session (or this run's)."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
  """A persistent compilation cache shared by this session's workers."""
  old = {k: getattr(jax.config, k) for k in (
      "jax_compilation_cache_dir",
      "jax_persistent_cache_min_compile_time_secs")}
  jax.config.update("jax_compilation_cache_dir",
                    str(_session_dir(tmp_path_factory) / "jax-cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  compilation_cache.reset_cache()
  yield
  for k, v in old.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """Variables after the uninterrupted run on 8 devices of one process.

  Computed once per session: an xdist worker that needs it while another
  computes it waits for that run instead of repeating it.
  """
  shared = _session_dir(tmp_path_factory)
  workdir = shared / "reference-8-devices"
  with open(shared / "reference.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (workdir / "results.json").exists():
      res = train.train_and_evaluate(_config(8), str(workdir))
      assert res["steps"] == STEPS
  return workdir_lib.load_variables(str(workdir))


def _assert_close(actual, expected):
  paths = jax.tree_util.tree_leaves_with_path(expected)
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for (path, e), a in zip(paths, jax.tree.leaves(actual)):
    helpers.assert_close_norm(a, e, jax.tree_util.keystr(path))


def _run_launcher(args, timeout):
  """Runs the launcher; on timeout SIGTERMs it so it stops its processes."""
  proc = subprocess.Popen([sys.executable, LAUNCHER, *args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGTERM)  # The launcher stops its children.
    try:
      out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
      proc.kill()
      out, err = proc.communicate()
    pytest.fail(f"launcher timed out after {timeout}s:\n{err[-3000:]}")
  return proc.returncode, out, err


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path, reference):
  workdir = tmp_path / "mp"
  # --config.num_devices=8 fails in a process that sees only its own 4
  # devices: the run succeeds only if jax.distributed joined the processes.
  code, out, err = _run_launcher(
      ["--num_processes=2", "--cpu_devices=4", "--timeout=420", "--",
       *CLI_FLAGS, f"--workdir={workdir}"], timeout=480)
  assert code == 0, err[-3000:]
  assert out.count("Per-exit top-1 accuracy") == 1, out  # Process 0 only.
  assert (workdir / "results.json").exists()
  _assert_close(workdir_lib.load_variables(str(workdir)), reference)


@pytest.mark.parametrize("first,then", [(8, 1), (1, 8)])
def test_resume_on_another_device_count(tmp_path, capsys, reference, first,
                                        then):
  workdir = str(tmp_path)
  stopped = train.train_and_evaluate(_config(first), workdir, stop_after=1)
  assert stopped["stopped"] == 1 and stopped["checkpoint_step"] == 1
  res = train.train_and_evaluate(_config(then), workdir)
  assert "Resuming from step 1" in capsys.readouterr().out
  assert res["steps"] == STEPS
  # Across device counts the reductions run in another order: close, not
  # bitwise equal.
  _assert_close(workdir_lib.load_variables(workdir), reference)
