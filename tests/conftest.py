"""Test setup: 8 fake CPU devices, set before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import shutil  # noqa: E402  (after XLA_FLAGS is set)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def digits_run_template(tmp_path_factory):
  """A 5-epoch digits run (P&L, the recipe), trained once per test process.

  Read-only: tests that evaluate, calibrate or export it take a copy
  (`digits_run`), so none sees another's files.
  """
  from mexd import train  # pylint: disable=g-import-not-at-top
  import helpers  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("digits_run_template"))
  train.train_and_evaluate(helpers.digits_config(num_epochs=5), workdir)
  return workdir


@pytest.fixture(scope="module")
def digits_run(digits_run_template, tmp_path_factory):
  """A private copy of `digits_run_template` for one test module."""
  workdir = str(tmp_path_factory.mktemp("digits_run") / "run")
  shutil.copytree(digits_run_template, workdir)
  return workdir
