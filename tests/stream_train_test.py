"""Training through the streaming pipeline on a mock imagenet2012.

A streamed `python -m mexd.train` killed with SIGKILL and run again (the
input position restored from its checkpoint, other worker count) ends
bitwise equal to an uninterrupted run; the position is in the checkpoint as
grain's per-process JSON and a wrong one is refused; two processes train
like one; `configs/imagenet.py:runlocal` trains end to end and
`mexd.evaluate`'s loader reads a streamed run.
"""

import json
import os
import signal
import subprocess
import sys
import time

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


def _cli(root, workdir, epochs):
  """`python -m mexd.train` with the flags of `_small(root)`."""
  return [sys.executable, "-m", "mexd.train",
          "--config=configs/imagenet.py:runlocal",
          f"--config.data.data_dir={root}", "--config.model.name=small_cnn",
          "--config.data.image_size=32", f"--config.num_epochs={epochs}",
          "--config.progress_bar=False", "--config.ckpt_every_steps=2",
          "--config.eval_every_epochs=100", f"--workdir={workdir}"]


@pytest.mark.slow
def test_sigkilled_stream_run_resumes_bitwise_equal(inet, tmp_path):
  epochs = 20  # 60 steps: long enough to be killed mid-run.
  ref = str(tmp_path / "ref")
  res = train.train_and_evaluate(
      _small(inet, num_epochs=epochs, eval_every_epochs=100), ref)
  assert res["steps"] == 60
  wd = tmp_path / "killed"
  proc = subprocess.Popen(_cli(inet, wd, epochs), cwd=REPO,
                          stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  ckpts = wd / "checkpoints"
  while time.time() < deadline and not any(
      p.name.isdigit() and int(p.name) >= 4 for p in (
          ckpts.iterdir() if ckpts.is_dir() else [])):
    assert proc.poll() is None, "the run ended before it could be killed"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert not (wd / "results.json").exists()
  step = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
  position = json.loads(
      (ckpts / f"{step}/data/process_0-of-1.json").read_text())
  assert position["next_step"] == step and position["global_batch"] == 16
  # Resumed with worker processes: the batches do not depend on them.
  out = subprocess.run(_cli(inet, wd, epochs) + ["--config.data.workers=2"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Resuming from step" in out.stdout
  a, b = (workdir_lib.load_variables(w) for w in (ref, str(wd)))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  # The evaluation loader streams the validation and test splits.
  run = evaluation.load_run(ref)
  assert run.test_logits.shape == (3, 20, 1000)
  acc = (run.test_logits[-1].argmax(-1) == run.test.labels).mean()
  saved = json.loads((tmp_path / "ref/results.json").read_text())
  assert acc == pytest.approx(saved["test"]["acc"][-1])
