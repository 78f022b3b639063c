"""Bad input is an `errors.InputError` (one line at the CLI); a bug is not.

`errors.one_line_errors` prints `prog: error: message` for an InputError
(status 2), a WorkdirWriteError (status 1) and the non-finite-loss stop
(FloatingPointError, status 2); every other exception, a plain ValueError
included, keeps its traceback.
"""

import errno

import numpy as np
import pytest

from mexd import checkpoint
from mexd import config_lib
from mexd import configs
from mexd import data as data_lib
from mexd import errors
from mexd import evaluate
from mexd import lock as lock_lib
from mexd import losses
from mexd import models
from mexd import paths
from mexd import sharding
from mexd import workdir as workdir_lib
from mexd.configs import digits
from mexd.data import base
from mexd.early_exit import calibrate
from mexd.early_exit import policies
from mexd.early_exit import staged
from mexd.losses import mate


def _exit_status(exc, capsys, monkeypatch):
  """(status, stderr lines) of one_line_errors("prog") around `raise exc`."""
  monkeypatch.delenv("MEXD_TRACEBACK", raising=False)
  with pytest.raises(SystemExit) as info:
    with errors.one_line_errors("prog"):
      raise exc
  return info.value.code, capsys.readouterr().err.splitlines()


def test_input_error_is_one_line_and_status_2(capsys, monkeypatch):
  status, lines = _exit_status(
      errors.InputError("batch_size must be >= 1,\n  got 0"), capsys,
      monkeypatch)
  assert status == 2
  assert lines == ["prog: error: batch_size must be >= 1, got 0"]


@pytest.mark.parametrize("exc", [
    base.DataError("x.idx is truncated"),
    base.DataNotFoundError("no files in /data"),
    workdir_lib.WorkdirError("run is not a mexd run"),
    lock_lib.WorkdirLockedError("run is being written by another mexd.train"),
    checkpoint.StructureMismatchError("checkpoint 5 holds another state"),
    FloatingPointError("step 3: non-finite loss"),
], ids=lambda e: type(e).__name__)
def test_project_input_errors_are_status_2(exc, capsys, monkeypatch):
  status, lines = _exit_status(exc, capsys, monkeypatch)
  assert status == 2
  assert lines == [f"prog: error: {exc}"]


def test_workdir_write_error_is_status_1(capsys, monkeypatch):
  e = paths.write_error("/runs/a", OSError(errno.ENOSPC, "No space left"))
  status, lines = _exit_status(e, capsys, monkeypatch)
  assert status == 1
  assert len(lines) == 1
  assert lines[0].startswith("prog: error: cannot write to the work "
                             "directory /runs/a: the disk is full")


@pytest.mark.parametrize("exc", [
    ValueError("a bug inside jax"), FileNotFoundError("a bug"),
    RuntimeError("no readable checkpoint"), TypeError("a bug")],
                         ids=lambda e: type(e).__name__)
def test_other_errors_keep_their_traceback(exc, capsys, monkeypatch):
  monkeypatch.delenv("MEXD_TRACEBACK", raising=False)
  with pytest.raises(type(exc)) as info:
    with errors.one_line_errors("prog"):
      raise exc
  assert info.value is exc
  assert info.traceback  # Propagated whole, not turned into SystemExit.
  assert "prog: error:" not in capsys.readouterr().err


def test_mexd_traceback_shows_input_errors_whole(monkeypatch):
  monkeypatch.setenv("MEXD_TRACEBACK", "1")
  with pytest.raises(errors.InputError, match="bad flag"):
    with errors.one_line_errors("prog"):
      raise errors.InputError("bad flag")


def test_error_types():
  assert issubclass(errors.InputError, ValueError)
  for cls in (base.DataError, base.DataNotFoundError, workdir_lib.WorkdirError,
              lock_lib.WorkdirLockedError, checkpoint.StructureMismatchError):
    assert issubclass(cls, errors.InputError), cls
  assert issubclass(base.DataNotFoundError, FileNotFoundError)
  assert issubclass(checkpoint.StructureMismatchError, RuntimeError)
  assert not issubclass(checkpoint.CorruptCheckpointError, errors.InputError)
  assert paths.WorkdirWriteError is errors.WorkdirWriteError
  assert issubclass(errors.WorkdirWriteError, OSError)
  assert data_lib.DataError is base.DataError


def test_errors_is_a_leaf_module():
  """mexd.errors imports nothing of mexd, so every layer may raise its
  types (losses, models and data included)."""
  import ast  # pylint: disable=g-import-not-at-top
  tree = ast.parse(open(errors.__file__).read())
  names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
           for a in n.names]
  names += [n.module or "" for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom)]
  assert not [n for n in names if n.split(".")[0] == "mexd"], names


def _digits_config(**overrides):
  c = digits.get_config()
  for k, v in overrides.items():
    c[k] = v
  return c


def _mesh_of_too_many():
  return sharding.make_mesh(10**6)


def _model():
  return models.get_model("digits_cnn", num_classes=10)


# (callable raising a bad-input error, regex of its message)
BAD_INPUTS = [
    (lambda: losses.get_method("nope"), r"unknown method 'nope'"),
    (lambda: losses.get_method("pl", c=1.5), r"c \(the distillation weight"),
    (lambda: losses.get_method("pl", temp=2.0),
     r"unknown hyperparameter\(s\) \['temp'\]"),
    (lambda: losses.get_method("mate", beta=2.0), r"beta must be in \[0, 1\]"),
    (lambda: models.get_model("digits_cnn", num_classes=0),
     r"num_classes must be >= 1"),
    (lambda: models.get_model("resnet999", num_classes=10),
     r"unknown model 'resnet999'"),
    (lambda: models.get_model("digits_cnn", num_classes=10, dtype="float8"),
     r"unknown dtype 'float8'"),
    (lambda: models.check_input_size("msdnet_cifar", (8, 8, 1)),
     r"needs at least 16x16"),
    (lambda: data_lib.load_official("imagenet9"), r"unknown data set"),
    (lambda: data_lib.load_official("fashion_mnist", "/nonexistent/fm"),
     r"/nonexistent/fm"),
    (lambda: base.Dataset(np.zeros((2, 8, 8, 1), np.float32),
                          np.zeros(2, np.int32), 10, (0.,), (1.,)),
     r"images must be uint8"),
    (lambda: staged.StagedPredictor(_model(), {}, [0.5, 0.5, -np.inf])
     .check_images(np.full((2, 8, 8, 1), np.nan, np.float32)),
     r"images hold 128 NaN or infinite values"),
    (lambda: staged.StagedPredictor(_model(), {}, [0.5, np.nan, 0.0]),
     r"hold NaN at exit\(s\) \[1\]"),
    (lambda: policies.check_policy("oracle"), r"unknown exit policy"),
    (lambda: calibrate.ltt_min_n(eps=0.0, delta=0.1), r"eps and delta"),
    (lambda: config_lib.validate(_digits_config(batch_size=0)),
     r"batch_size must be a positive integer"),
    (lambda: config_lib.parse_arg("runlocal=ture", runlocal=False),
     r"is not a boolean"),
    (lambda: configs.path("nope"), r"unknown recipe 'nope'"),
    (_mesh_of_too_many, r"devices are available"),
    (lambda: evaluate.check_args(policies=("max_prob",), budgets=(1.5,),
                                 eps=0.02, delta=0.1, trials=0,
                                 chosen_policy="max_prob"),
     r"budgets must be"),
    (lambda: evaluate.decode_thresholds(["infinity"]),
     r"invalid threshold 'infinity'"),
]


@pytest.mark.parametrize("fn,pattern", BAD_INPUTS,
                         ids=[p for _, p in BAD_INPUTS])
def test_bad_inputs_raise_input_error(fn, pattern):
  with pytest.raises(errors.InputError, match=pattern):
    fn()


def test_workdir_that_is_not_a_run_is_input_error(tmp_path):
  with pytest.raises(errors.InputError, match="is not a mexd run"):
    workdir_lib.load_config(str(tmp_path))


# Checks between mexd's own modules: a failure is a bug, shown whole.
INTERNAL = [
    (lambda: mate.mate_loss(np.zeros((3, 2, 4), np.float32), np.zeros(
        2, np.int32), np.zeros((2, 2), np.float32)),
     r"ensemble_logits has shape \(2, 2\) but the model has 3 exits"),
    (lambda: models.register("digits_cnn", lambda **kw: None),
     r"model 'digits_cnn' is already registered"),
    (lambda: evaluate.encode_thresholds([0.5, float("nan")]),
     r"NaN threshold"),
    (lambda: config_lib.Choice("big", ("full", "limited")),
     r"default 'big' is not one of"),
]


@pytest.mark.parametrize("fn,pattern", INTERNAL,
                         ids=[p for _, p in INTERNAL])
def test_internal_checks_stay_plain_value_errors(fn, pattern):
  with pytest.raises(ValueError, match=pattern) as info:
    fn()
  assert not isinstance(info.value, errors.InputError)


def test_write_to_closed_rewritten_file_is_a_plain_value_error(tmp_path):
  f = paths.RewrittenFile(tmp_path / "m.jsonl")
  f.close()
  with pytest.raises(ValueError, match="write to closed file") as info:
    f.write(b"x")
  assert not isinstance(info.value, errors.InputError)
