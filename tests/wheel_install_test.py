"""A wheel of mexd, installed into a fresh venv, runs the README's main job.

Builds the wheel from a copy of the package sources (offline, no build
isolation), installs it into a new virtual environment (its dependencies come
from this interpreter's site-packages), and from an empty directory outside
the repository runs `python -m mexd.train` (digits, 1 epoch), the checkout
form `--config=configs/digits.py:limited`, an installed recipe by name, and
`python -m mexd.evaluate` on the result.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow


def _run(cmd, cwd, env, timeout=900):
  p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                     timeout=timeout, check=False)
  assert p.returncode == 0, (
      f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n"
      f"{p.stderr[-3000:]}")
  return p


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory):
  if not os.path.exists(os.path.join(REPO, "pyproject.toml")):
    pytest.skip("needs the source tree (pyproject.toml)")
  tmp = tmp_path_factory.mktemp("wheel")
  src = tmp / "src"
  src.mkdir()
  for name in ("pyproject.toml", "setup.cfg", "README.md"):
    shutil.copy(os.path.join(REPO, name), src / name)
  shutil.copytree(os.path.join(REPO, "mexd"), src / "mexd",
                  ignore=shutil.ignore_patterns("__pycache__"))
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  _run([sys.executable, "-m", "pip", "wheel", "--no-deps",
        "--no-build-isolation", "-w", str(tmp / "dist"), str(src)], tmp, env)
  wheels = list((tmp / "dist").glob("mexd-*.whl"))
  assert len(wheels) == 1, wheels
  _run([sys.executable, "-m", "venv", "--system-site-packages",
        str(tmp / "venv")], tmp, env)
  python = str(tmp / "venv" / "bin" / "python")
  _run([python, "-m", "pip", "install", "--no-deps", "--no-index",
        str(wheels[0])], tmp, env)
  return python, tmp, env


def test_wheel_runs_train_and_evaluate_outside_the_repository(venv_python):
  python, tmp, env = venv_python
  work = tmp / "empty"
  work.mkdir()
  env = dict(env, JAX_PLATFORMS="cpu")
  where = _run([python, "-c", "import mexd, mexd.configs; "
                "print(mexd.configs.path('digits'))"], work, env).stdout
  assert str(tmp / "venv") in where and REPO not in where, where
  # The README's first command, from an empty directory.
  out = _run([python, "-m", "mexd.train", "--config.num_epochs=1",
              "--config.progress_bar=False", "--workdir=run"], work, env)
  assert "Per-exit top-1 accuracy" in out.stdout
  res = json.loads((work / "run" / "results.json").read_text())
  assert len(res["test"]["acc"]) == 3
  # The checkout form of the docs and an installed recipe by name.
  _run([python, "-m", "mexd.train", "--config=configs/digits.py:limited",
        "--config.num_epochs=1", "--config.progress_bar=False",
        "--workdir=lim"], work, env)
  cfg = json.loads((work / "lim" / "config.json").read_text())
  assert cfg["data"]["labeled_per_class"] == 10
  _run([python, "-m", "mexd.train", "--config", "digits:method=ce,epochs=1",
        "--config.progress_bar=False", "--workdir=ce"], work, env)
  assert json.loads((work / "ce" / "config.json").read_text())[
      "method"] == "ce"
  out = _run([python, "-m", "mexd.evaluate", "--workdir=run", "--notiming",
              "--trials=2"], work, env)
  assert (work / "run" / "eval" / "eval.json").exists()
  assert (work / "run" / "exit_policy.json").exists()
