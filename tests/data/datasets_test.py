"""Registry names and `load_splits` on a loaded (on-disk IDX) data set."""

import gzip
import struct

import ml_collections
import numpy as np
import pytest

from mexd import data
from mexd.data import base

N_TRAIN, N_TEST = 200, 30  # 20 / 3 per class.


def write_idx(path, array):
  array = np.asarray(array, np.uint8)
  header = struct.pack(f">{1 + array.ndim}i", 0x800 + array.ndim,
                       *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.tobytes())


@pytest.fixture
def idx_dir(tmp_path):
  rng = np.random.default_rng(0)
  for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.permutation(np.arange(n) % 10)
    write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
  return str(tmp_path)


def config(data_dir, **kw):
  return ml_collections.ConfigDict(dict(
      name="fashion_mnist", data_dir=data_dir, val_size=40, split_seed=0,
      labeled_per_class=None, unlabeled_pool=False) | kw)


def test_names_are_registered():
  names = data.dataset_names()
  for name in ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100",
               "tfds:cifar10", "tfds:cifar100", "tfds:svhn_cropped",
               "tfds:caltech_birds2011", "tfds:stanford_dogs",
               "tfds:imagenet2012", "tfds:imagenet_resized/32x32",
               "tfds:imagenet_resized/64x64", "tfds:mnist",
               "tfds:fashion_mnist"):
    assert name in names


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError) as e:
    data.load_official("cifar-100")
  msg = str(e.value)
  assert "unknown data set 'cifar-100' (did you mean 'cifar100'?)" in msg
  assert ("valid names: " + ", ".join(data.dataset_names())) in msg
  with pytest.raises(ValueError, match="unknown data set 'xyz'; valid"):
    data.load_official("xyz")


def test_val_split_is_disjoint_and_seeded(idx_dir):
  splits, index = data.load_splits(config(idx_dir, split_seed=3))
  official = data.load_official("fashion_mnist", idx_dir)["train"]
  assert len(splits["val"]) == 40 and len(splits["train"]) == N_TRAIN - 40
  assert not set(index["val"]) & set(index["train"])
  assert sorted(np.concatenate([index["val"], index["train"]])) == list(
      range(N_TRAIN))
  # Each split holds the official images at its indices.
  np.testing.assert_array_equal(splits["val"].images,
                                official.images[index["val"]])
  np.testing.assert_array_equal(splits["train"].labels,
                                official.labels[index["train"]])
  assert len(splits["test"]) == N_TEST
  # The val split is the tail of the permutation seeded with split_seed.
  perm = np.random.default_rng(3).permutation(N_TRAIN)
  np.testing.assert_array_equal(index["val"], np.sort(perm[-40:]))
  again, _ = data.load_splits(config(idx_dir, split_seed=3))
  np.testing.assert_array_equal(again["val"].images, splits["val"].images)
  _, other = data.load_splits(config(idx_dir, split_seed=4))
  assert set(other["val"]) != set(index["val"])


def test_data_limited_with_unlabeled_pool(idx_dir):
  cfg = config(idx_dir, labeled_per_class=5, unlabeled_pool=True,
               split_seed=1)
  splits, index = data.load_splits(cfg)
  np.testing.assert_array_equal(np.bincount(splits["train"].labels,
                                            minlength=10), np.full(10, 5))
  assert (splits["unlabeled"].labels == base.UNLABELED).all()
  assert len(splits["unlabeled"]) == N_TRAIN - 40 - 50
  parts = [set(index[k].tolist()) for k in ("train", "val", "unlabeled")]
  assert not parts[0] & parts[1] and not parts[0] & parts[2]
  assert not parts[1] & parts[2]
  assert len(set.union(*parts)) == N_TRAIN
  # Without the pool the rest is dropped.
  cfg.unlabeled_pool = False
  splits, index = data.load_splits(cfg)
  assert "unlabeled" not in splits and len(splits["train"]) == 50
