"""Every bad input gives one clear error naming the problem; nothing is written."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from mexd.configs import digits
from mexd import predict
from mexd import sharding
from mexd import train
from mexd import workdir as workdir_lib
from mexd.data import base

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _set(config, dotted, value):
  *path, last = dotted.split(".")
  node = config
  for p in path:
    node = node[p]
  node[last] = value


# (overrides, regex the message must match)
BAD_CONFIGS = [
    ({"data.name": "imagenet9"}, r"unknown data set 'imagenet9'.*digits"),
    ({"model.name": "resnet999"}, r"unknown model 'resnet999'.*resnet18"),
    ({"method": "foo"}, r"unknown method 'foo'.*valid names: .*eed"),
    ({"method": "pl_const", "loss.pl_const.temperature": -1.0},
     r"temperature must be > 0"),
    ({"loss.pl.c": 1.5}, r"c \(the distillation weight C\) must be in \[0, 1\]"),
    ({"model.kwargs.widths": (), "model.kwargs.strides": ()},
     r"zero exits"),
    ({"batch_size": 60, "num_devices": 8}, r"60 is not divisible by the 8"),
    ({"batch_size": 0}, r"batch_size must be a positive integer"),
    ({"num_epochs": -1}, r"num_epochs must be a positive integer"),
    ({"optimizer.lr": -0.1}, r"optimizer.lr must be > 0"),
    ({"optimizer.name": "adam9"}, r"unknown optimizer 'adam9'; valid: sgd"),
    ({"optimizer.schedule": "linear9"}, r"unknown schedule 'linear9'"),
    ({"optimizer.momentum": 1.5}, r"momentum must be in \[0, 1\)"),
    ({"data.val_size": 100000}, r"val_size must be in \[0, 1438\)"),
    ({"data.labeled_per_class": 0}, r"labeled_per_class must be positive"),
    ({"data.unlabeled_batch": 64}, r"unlabeled_batch must be in \[0, "),
    ({"data.unlabeled_batch": 16}, r"needs a non-empty unlabeled pool"),
    ({"method": "erde"}, r"set --config.teacher_workdir"),
    ({"data.name": "fashion_mnist", "data.data_dir": "/nonexistent/fm"},
     r"/nonexistent/fm"),
    ({"nonfinite": "ignore"}, r"nonfinite must be 'stop' or 'skip'"),
    ({"model.dtype": "float8"}, r"unknown dtype 'float8'"),
    ({"augment.crop_pad": -1}, r"crop_pad must be >= 0"),
    ({"method": "eed", "loss.eed.output_loss": "l1"}, r"output_loss"),
    ({"method": "mate", "loss.mate.beta": 2.0}, r"beta"),
    ({"method": "byot", "loss.byot.alpha": -0.5}, r"alpha"),
    ({"method": "sdn", "loss.sdn.tau_max": (0.1,)}, r"tau_max"),
]


@pytest.mark.parametrize("overrides,pattern", BAD_CONFIGS,
                         ids=[",".join(o) for o, _ in BAD_CONFIGS])
def test_bad_config_is_one_clear_error_and_writes_nothing(
    tmp_path, overrides, pattern):
  config = digits.get_config()
  config.progress_bar = False
  for k, v in overrides.items():
    _set(config, k, v)
  workdir = tmp_path / "run"
  with pytest.raises((ValueError, FileNotFoundError), match=pattern):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists(), os.listdir(workdir)


def test_teacher_workdir_that_is_not_a_run(tmp_path):
  config = digits.get_config()
  config.method = "erde"
  config.teacher_workdir = str(tmp_path)
  with pytest.raises(workdir_lib.WorkdirError, match="not a mexd run"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_labels_outside_class_range():
  images = np.zeros((3, 8, 8, 1), np.uint8)
  with pytest.raises(ValueError, match=r"1 labels outside \[0, 10\)"):
    base.Dataset(images, np.array([0, 10, 3], np.int32), 10, (0.,), (1.,))


def test_images_of_wrong_dtype_or_shape():
  with pytest.raises(ValueError, match="images must be uint8"):
    base.Dataset(np.zeros((3, 8, 8, 1), np.float32), np.zeros(3, np.int32),
                 10, (0.,), (1.,))
  config = digits.get_config()
  model = predict.build_model(config, 10)
  pred = predict.Predictor(model, (0.,), (1.,), sharding.make_mesh(1),
                         8, np.float32, image_shape=(8, 8, 1))
  wrong = base.Dataset(np.zeros((3, 28, 28, 1), np.uint8),
                       np.zeros(3, np.int32), 10, (0.,), (1.,))
  with pytest.raises(ValueError, match=r"shape \(28, 28, 1\) given to a "
                     r"model trained on \(8, 8, 1\)"):
    pred.logits({}, wrong)


def test_workdir_without_checkpoint(tmp_path):
  with pytest.raises(workdir_lib.WorkdirError, match="has no checkpoint"):
    workdir_lib.load_variables(str(tmp_path))


def test_cli_prints_one_line_and_exits_2(tmp_path):
  cmd = [sys.executable, "-m", "mexd.train", "--config.method=foo",
         f"--workdir={tmp_path / 'run'}"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 2
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert lines[-1].startswith("mexd.train: error: unknown method 'foo'")
  assert "Traceback" not in out.stderr
  assert not (tmp_path / "run").exists()


# (files to write in tmp_path, mexd.train arguments, regex of the one line)
BAD_CLI = [
    ({}, ["--config={tmp}/missing.py"],
     r"--config: no such file .*missing\.py; pass an installed recipe name "
     r"\(.*digits.*\) or the path of a \.py file that defines get_config\(\)"),
    ({"syn.py": "def get_config(:\n"}, ["--config={tmp}/syn.py"],
     r"--config: syntax error in .*syn\.py line 1: .*; fix the file"),
    ({"wrong.py": "def get_config():\n  return {'a': 1}\n"},
     ["--config={tmp}/wrong.py"],
     r"get_config\(\) of .*wrong\.py returned a dict, not an "
     r"ml_collections\.ConfigDict"),
    ({}, ["--config.num_epoch=3"],
     r"--config\.num_epoch: no such config key .*did you mean "
     r"--config\.num_epochs"),
    ({}, ["--config=digits", "--config.num_epoch=3"],
     r"--config\.num_epoch: no such config key .*did you mean "
     r"--config\.num_epochs"),
    ({}, ["--config.loss.pl.temp=2"],
     r"--config\.loss\.pl\.temp: no such config key .*did you mean "
     r"--config\.loss\.pl\.t0"),
    ({}, ["--config.method=foo"], r"unknown method 'foo'"),
    # The strict recipe parser, through the CLI (bare word and form).
    ({}, ["--config=digits:limted"],
     r"--config: unknown config argument 'limted'; valid arguments: "
     r".*setting=full\|limited"),
    ({}, ["--config=configs/digits.py:limited=ture"],
     r"unknown config argument 'limited' \(did you mean setting=limited"),
    ({}, ["--config=fashion_mnist:setting=limited,semisup=ture"],
     r"semisup='ture' is not a boolean"),
    # A model keyword the recipe does not set is allowed; a wrong one not.
    ({}, ["--config.model.kwargs.widthz=(8,16,32)"],
     r"--config\.model\.kwargs\.widthz: model digits_cnn has no keyword "
     r"'widthz'; its keywords: .*head, .*widths"),
    ({}, ["--config.data.split_seed=-1"],
     r"config\.data\.split_seed must be an integer >= 0 .*got -1"),
    ({}, ["--config.data.data_dir=/tmp"],
     r"data_dir='/tmp' is ignored by 'digits', which ships inside "
     r"scikit-learn; leave data_dir unset"),
    ({}, ["--config.model.name=msdnet_cifar"],
     r"model 'msdnet_cifar' is built for 32x32 images and needs at least "
     r"16x16; the data's images are 8x8: pick a model for this size "
     r"\(digits_cnn, fashion_cnn, small_cnn\)"),
]


def test_cli_sets_unset_hyperparameters_and_model_keywords():
  """--config.KEY=VALUE for a None default (loss.sdn.tau_max) and for a
  model keyword the recipe leaves unset reach the config, typed."""
  code = ("import sys; from mexd import train; train.define_flags(); "
          "train.parse_flags(sys.argv); c = train.FLAGS.config; "
          "print(repr(c.loss.sdn.tau_max), repr(c.loss.ce.exit_weights), "
          "repr(c.model.kwargs.widths), repr(c.model.kwargs.head))")
  out = subprocess.run(
      [sys.executable, "-c", code, "--config=digits",
       "--config.loss.sdn.tau_max=(0.1,0.2)",
       "--config.loss.ce.exit_weights=[1, 2, 3]",
       "--config.model.kwargs.widths=(8,16,32)",
       "--config.model.kwargs.head=conv", "--config.num_epochs=3"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["(0.1,", "0.2)", "(1,", "2,", "3)", "(8,",
                                "16,", "32)", "'conv'"], out.stdout


@pytest.mark.parametrize("files,args,pattern", BAD_CLI,
                         ids=[" ".join(a) for _, a, _ in BAD_CLI])
def test_cli_bad_config_one_line_exit_2(tmp_path, files, args, pattern):
  for name, text in files.items():
    (tmp_path / name).write_text(text)
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "mexd.train",
         *[a.format(tmp=tmp_path) for a in args], f"--workdir={workdir}"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  assert "Traceback" not in out.stderr, out.stderr[-2000:]
  errors = [l for l in out.stderr.splitlines() if "error:" in l]
  assert len(errors) == 1, out.stderr[-2000:]
  assert errors[0].startswith("mexd.train: error: "), errors
  assert re.search(pattern, errors[0]), errors[0]
  assert not workdir.exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)


def _lock_of_another_host(wd):
  wd.mkdir()
  (wd / ".lock").write_text(
      '{"pid": 7, "host": "node-9", "prog": "mexd.train", '
      '"started": 1780000000.0, "heartbeat": 9e12}')


# (set-up of the work directory, exit status, regex of the one line)
FAULT_CLI = [
    (lambda wd: wd.write_text("x"), 1,
     r"mexd.train: error: --workdir .*run is a file, not a directory"),
    (lambda wd: (wd.parent / "f").write_text("x"), 1,
     r"cannot write to the work directory .*f/run: a component of the path "
     r"is a file"),
    (_lock_of_another_host, 2,
     r"run is being written by another mexd.train \(pid 7 on host node-9, "
     r"started 2026-05-28 .*\); wait for it to finish, or stop it \(pid 7 on "
     r"node-9\); if it is gone and the lock stayed behind, delete .*\.lock"),
]


@pytest.mark.parametrize("setup,status,pattern", FAULT_CLI,
                         ids=["workdir_is_a_file", "below_a_file", "locked"])
def test_cli_workdir_faults_one_line(tmp_path, setup, status, pattern):
  wd = tmp_path / "run"
  setup(wd)
  if not wd.exists() and (tmp_path / "f").exists():
    wd = tmp_path / "f" / "run"
  before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
  out = subprocess.run(
      [sys.executable, "-m", "mexd.train", "--config.num_epochs=1",
       f"--workdir={wd}"], cwd=REPO, capture_output=True, text=True,
      timeout=120)
  assert out.returncode == status, out.stderr[-2000:]
  assert "Traceback" not in out.stderr, out.stderr[-2000:]
  errors = [l for l in out.stderr.splitlines() if "error:" in l]
  assert len(errors) == 1 and re.search(pattern, errors[0]), out.stderr
  after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
  assert after == before
