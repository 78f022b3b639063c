"""Mock data writers: real on-disk formats, read back by the real loaders."""

import numpy as np
import pytest

from mexd import data
from mexd.data import mock


@pytest.mark.parametrize("which,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_archive_round_trip(tmp_path, which, classes):
  written = mock.write_cifar(str(tmp_path), which, train_per_class=3,
                             test_per_class=1, seed=4)
  splits = data.load_official(which, str(tmp_path))
  for split, n in (("train", 3 * classes), ("test", classes)):
    ds = splits[split]
    assert ds.images.shape == (n, 32, 32, 3) and ds.num_classes == classes
    np.testing.assert_array_equal(ds.images, written[f"{split}_images"])
    np.testing.assert_array_equal(ds.labels, written[f"{split}_labels"])
    np.testing.assert_array_equal(np.bincount(ds.labels, minlength=classes),
                                  np.full(classes, n // classes))


def test_mock_images_are_learnable_but_not_trivial():
  """Nearest class mean separates the classes; one pixel does not."""
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(10), 40)
  images = mock.class_images(rng, labels, (16, 16, 3), 10).astype(float)
  train, test = np.arange(400) % 4 != 0, np.arange(400) % 4 == 0
  x = images.reshape(400, -1)
  means = np.stack([x[train & (labels == k)].mean(0) for k in range(10)])
  pred = ((x[test, None] - means[None]) ** 2).sum(-1).argmin(-1)
  assert (pred == labels[test]).mean() > 0.9
  pixel = images[:, 8, 8, 0]  # Class means of one pixel overlap.
  pmeans = np.array([pixel[train & (labels == k)].mean() for k in range(10)])
  ppred = np.abs(pixel[test, None] - pmeans[None]).argmin(-1)
  assert (ppred == labels[test]).mean() < 0.6


@pytest.mark.parametrize("name,shape,size,classes", [
    ("svhn_cropped", (32, 32, 3), None, 10),
    ("caltech_birds2011", (40, 50, 3), 24, 200),
])
def test_tfds_mock_reads_back_through_the_registry(tmp_path, name, shape, size,
                                                   classes):
  pytest.importorskip("tensorflow_datasets")
  written = mock.write_tfds(str(tmp_path), name,
                            per_class={"train": 2, "test": 1}, shape=shape,
                            classes=[0, 3, 7])
  splits = data.load_official(f"tfds:{name}", str(tmp_path), image_size=size)
  side = size or shape[0]
  assert splits["train"].images.shape == (6, side, side, 3)
  assert splits["train"].num_classes == classes
  assert sorted(splits["train"].labels) == sorted(written["train_labels"])
  assert sorted(splits["test"].labels.tolist()) == [0, 3, 7]


def test_image_size_is_refused_for_fixed_size_sets(tmp_path):
  mock.write_cifar(str(tmp_path), "cifar10", train_per_class=1,
                   test_per_class=1)
  with pytest.raises(ValueError, match="image_size=64 applies to the tfds"):
    data.load_official("cifar10", str(tmp_path), image_size=64)
