"""The resume hint names the program that is running, with its flags."""

import sys
import types

from mexd import preemption


def _main(monkeypatch, spec_name, argv):
  main = types.ModuleType("__mp_main__")
  main.__spec__ = (types.SimpleNamespace(name=spec_name)
                   if spec_name else None)
  monkeypatch.setitem(sys.modules, "__main__", main)
  monkeypatch.setattr(sys, "argv", argv)


def test_module_run(monkeypatch):
  _main(monkeypatch, "mexd.train", ["/x/mexd/train.py", "--config=c.py",
                                    "--workdir=/w d"])
  assert (preemption.resume_command()
          == "python -m mexd.train --config=c.py '--workdir=/w d'")


def test_study_worker_names_the_study(monkeypatch):
  # A spawned worker of `python -m benchmarks.methods` sees the study's spec
  # and argv: the hint must resume the study, not a lone mexd.train.
  _main(monkeypatch, "benchmarks.methods",
        ["/x/benchmarks/methods.py", "--protocol=digits", "--jobs=2"])
  assert (preemption.resume_command()
          == "python -m benchmarks.methods --protocol=digits --jobs=2")


def test_package_main_and_script(monkeypatch):
  _main(monkeypatch, "mexd.__main__", ["/x/mexd/__main__.py"])
  assert preemption.resume_command() == "python -m mexd"
  _main(monkeypatch, None, ["run.py", "--a=1"])
  assert preemption.resume_command() == "python run.py --a=1"
