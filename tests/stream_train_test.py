"""Training through the streaming pipeline on a mock imagenet2012.

A streamed run stopped and resumed (the input position restored from its
checkpoint) ends bitwise equal to an uninterrupted one; the position is in
the checkpoint as grain's per-process JSON; `configs/imagenet.py:runlocal`
trains end to end and `mexd.evaluate`'s loader reads the streamed run.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mexd import configs
from mexd import errors
from mexd import evaluation
from mexd import train
from mexd import workdir as workdir_lib
from mexd.data import mock

import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def inet(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("imagenet"))
  mock.write_tfds(root, "imagenet2012",
                  per_class={"train": 6, "validation": 2},
                  classes=range(10), sizes=(40, 120))
  return root


def _small(root, **kw):
  """imagenet:runlocal on the mock with a small CNN at 32 px: 3 epochs of
  3 steps (50 train images, batch 16)."""
  c = configs.load("imagenet", "runlocal")
  c.data.data_dir = root
  c.data.image_size = 32
  c.model.name = "small_cnn"
  c.num_epochs = 3
  c.progress_bar = False
  c.ckpt_every_steps = 2
  for k, v in kw.items():
    setattr(c, k, v)
  return c


@pytest.mark.slow
def test_stopped_and_resumed_stream_run_is_bitwise_equal(inet, tmp_path):
  full, part = str(tmp_path / "full"), str(tmp_path / "part")
  res = train.train_and_evaluate(_small(inet), full)
  assert res["steps"] == 9
  stopped = train.train_and_evaluate(_small(inet), part, stop_after=4)
  assert stopped["stopped"] == 4
  position = json.loads(
      (tmp_path / "part/checkpoints/4/data/process_0-of-1.json").read_text())
  assert position["next_step"] == 4 and position["global_batch"] == 16
  # Resuming with other worker counts: the batches do not depend on them.
  train.train_and_evaluate(_small(inet, data=dict(
      _small(inet).data, workers=2)), part)
  a, b = (workdir_lib.load_variables(w) for w in (full, part))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  # The evaluation loader streams the validation and test splits.
  run = evaluation.load_run(full)
  assert run.test_logits.shape == (3, 20, 1000)
  acc = (run.test_logits[-1].argmax(-1) == run.test.labels).mean()
  saved = json.loads((tmp_path / "full/results.json").read_text())
  assert acc == pytest.approx(saved["test"]["acc"][-1])


def test_a_position_of_another_run_is_refused(inet, tmp_path):
  wd = str(tmp_path / "run")
  train.train_and_evaluate(_small(inet, num_epochs=1), wd, stop_after=2)
  f = tmp_path / "run/checkpoints/2/data/process_0-of-1.json"
  pos = json.loads(f.read_text())
  f.write_text(json.dumps({**pos, "next_step": 3}))
  with pytest.raises(errors.InputError, match=r"position saved with "
                     r"checkpoint 2 does not match.*next_step 3 saved, 2"):
    train.train_and_evaluate(_small(inet, num_epochs=1), wd)


@pytest.mark.slow
def test_imagenet_runlocal_recipe_trains_on_mock_data(inet, tmp_path):
  c = configs.load("imagenet", "runlocal")
  assert c.data.stream and c.model.name == "msdnet_imagenet"
  c.data.data_dir = inet
  c.progress_bar = False
  res = train.train_and_evaluate(c, str(tmp_path))
  assert res["steps"] == 50 // 16
  assert len(res["test"]["acc"]) == 5  # MSDNet's five exits.


@pytest.mark.slow
def test_two_processes_stream_train_like_one(inet, tmp_path):
  # 2 processes x 4 devices vs 1 process x 8 devices, 3 steps: each process
  # reads its half of every batch and saves its own input position.
  flags = ["--config=configs/imagenet.py:runlocal",
           f"--config.data.data_dir={inet}", "--config.model.name=small_cnn",
           "--config.data.image_size=32", "--config.num_devices=8",
           "--config.num_epochs=1", "--config.progress_bar=False"]
  mp, sp = tmp_path / "mp", tmp_path / "sp"
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "launch", "local_multiprocess.py"),
       "--num_processes=2", "--cpu_devices=4", "--timeout=400", "--",
       *flags, f"--workdir={mp}"], cwd=REPO, capture_output=True, text=True,
      timeout=450)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for p in range(2):
    pos = json.loads((mp / f"checkpoints/3/data/process_{p}-of-2.json"
                      ).read_text())
    assert pos["process_index"] == p and pos["next_step"] == 3
  c = _small(inet, num_epochs=1, num_devices=8)
  train.train_and_evaluate(c, str(sp))
  a, b = (workdir_lib.load_variables(str(w)) for w in (mp, sp))
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(b),
                          jax.tree.leaves(a)):
    # Gloo's all-reduce adds in another order: close, not bitwise.
    helpers.assert_close_norm(y, x, jax.tree_util.keystr(path))
