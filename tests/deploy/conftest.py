"""A trained, calibrated digits run and its exports, shared by the deploy
tests (one short training per test process)."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mexd import evaluation
from mexd import exporter
from mexd.early_exit import policies

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def between(scores: np.ndarray, q: float) -> float:
  """A threshold halfway between two neighbouring scores near quantile q
  (never equal to a score, so a 1-ulp difference cannot flip an exit)."""
  s = np.unique(np.asarray(scores, np.float64))
  i = min(max(int(q * (s.size - 1)), 0), s.size - 2)
  return float((s[i] + s[i + 1]) / 2)


@pytest.fixture(scope="session")
def trained(digits_run_template, tmp_path_factory):
  """(workdir, evaluation.Run) of the 5-epoch digits run (tests/conftest.py),
  copied and calibrated by mexd.evaluate's library function."""
  workdir = str(tmp_path_factory.mktemp("deploy") / "run")
  shutil.copytree(digits_run_template, workdir)
  evaluation.evaluate_run(workdir, trials=0, timing=False, plots=False)
  return workdir, evaluation.load_run(workdir)


@pytest.fixture(scope="session")
def mixed_thresholds(trained):
  """max_prob thresholds under which about a third of the test images
  leave at each exit."""
  s = np.asarray(policies.scores(trained[1].test_logits, "max_prob"))
  return [between(s[0], 0.67), between(s[1], 0.5), float("-inf")]


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory):
  """The calibrated run exported by the command line."""
  out = str(tmp_path_factory.mktemp("export") / "calibrated")
  proc = subprocess.run(
      [sys.executable, "-m", "mexd.export", f"--workdir={trained[0]}",
       f"--out={out}"], capture_output=True, text=True, cwd=REPO,
      check=False)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("exported "), proc.stdout
  return out


@pytest.fixture(scope="session")
def mixed(trained, mixed_thresholds, tmp_path_factory):
  """The run exported with `mixed_thresholds` (every exit taken)."""
  out = str(tmp_path_factory.mktemp("export") / "mixed")
  exporter.export_run(trained[0], out, thresholds=mixed_thresholds,
                      policy="max_prob")
  return out
