"""A short run on a slice of the real Fashion-MNIST files beats chance."""

import os

import pytest

from mexd import configs
from mexd import train

DATA = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(
    not os.path.exists(os.path.join(DATA, "train-images-idx3-ubyte.gz")),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
@pytest.mark.slow
def test_short_run_on_real_fashion_mnist_beats_chance(tmp_path):
  c = configs.load("fashion_mnist", "method=pl")
  c.data.labeled_per_class = 100  # A 1,000-image slice of the real train set.
  c.data.val_size = 1000
  c.num_epochs = 4
  c.batch_size = 64
  c.progress_bar = False
  c.num_devices = 1
  c.eval_every_epochs = 100
  res = train.train_and_evaluate(c, str(tmp_path))
  # 10 balanced classes: chance is 10 % (+- 0.3 % on 10,000 test images);
  # every exit must be at least twice that, the deepest far above it.
  assert min(res["test"]["acc"]) > 0.2, res["test"]
  assert res["test"]["acc"][-1] > 0.5, res["test"]
