"""benchmarks/ is a package: every script runs as `python -m benchmarks.<name>`.

Each script (a module with `app.run(main)`) prints its --help in a fresh
interpreter from the repository root; the other modules import; no file
edits sys.path, and no command in the docs, scripts or tests runs a
benchmark by its file path.
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
_MODULES = sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "__init__")
_SCRIPTS = [m for m in _MODULES
            if "app.run(main)" in (BENCH / f"{m}.py").read_text()]
_LIBRARIES = [m for m in _MODULES if m not in _SCRIPTS]
_HAS_TORCH = importlib.util.find_spec("torch") is not None


def _python(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout,
                        check=False)


def test_scripts_and_libraries_are_found():
  assert {"step_time", "overhead", "memory", "methods", "ablation"} <= set(
      _SCRIPTS)
  assert {"common", "env", "fixtures", "study", "report"} <= set(_LIBRARIES)


@pytest.mark.parametrize("name", _SCRIPTS)
def test_script_shows_help(name):
  proc = _python("-m", f"benchmarks.{name}", "--help")
  # absl's --help exits with status 1 after printing the usage.
  assert proc.returncode in (0, 1), proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  text = proc.stdout + proc.stderr
  assert f"python -m benchmarks.{name}" in text  # The docstring's usage.
  assert "flags:" in text


def test_library_modules_import():
  names = [m for m in _LIBRARIES if _HAS_TORCH or m != "torch_reference"]
  proc = _python("-c", "; ".join(f"import benchmarks.{m}" for m in names))
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_no_sys_path_edits():
  hits = [p.name for p in BENCH.rglob("*.py")
          if "sys.path.insert" in p.read_text()]
  assert not hits


def test_commands_run_benchmarks_as_modules():
  """`python benchmarks/X.py` fails without a sys.path edit; use -m."""
  pattern = re.compile(r"python3? +(\S*/)?benchmarks/\w+\.py")
  paths = [ROOT / "README.md", *ROOT.glob("docs/*.md"),
           *BENCH.glob("*.py"), *BENCH.glob("*.sh"), *ROOT.glob("tests/*.py"),
           *ROOT.glob("launch/*"), *ROOT.glob(".ci/*")]
  hits = []
  for path in paths:
    if not path.is_file() or path.name == pathlib.Path(__file__).name:
      continue
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
      if pattern.search(line):
        hits.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
  assert not hits, "\n".join(hits)
