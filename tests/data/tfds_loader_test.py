"""tfds loader on tiny real array_record data sets written by the test.

tensorflow_datasets can prepare a data set without TensorFlow when images are
given as encoded PNG bytes, so each test set here is the real tfds builder
(cifar10, mnist, stanford_dogs, imagenet_resized) with `_split_generators`
swapped for a few hand-made examples, prepared in the array_record format and
then read back through the registry exactly as real data would be.
"""

import io
import json
import os
import shutil
import sys

import numpy as np
import pytest

from mexd import data
from mexd.data import base
from mexd.data import tfds_loader


def png(image):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
      buf, format="PNG")
  return buf.getvalue()


def pattern(label, shape):
  """A distinct, position-dependent image for each label."""
  h, w, c = np.indices(shape)
  return ((label * 40 + h * 3 + w * 5 + c * 70) % 256).astype(np.uint8)


# name -> (builder config, {split: [(label, image shape)]}, extra features)
SETS = {
    "cifar10": (None, {
        "train": [(l, (32, 32, 3)) for l in range(6)],
        "test": [(l, (32, 32, 3)) for l in (7, 8, 9)]}),
    "mnist": (None, {
        "train": [(l, (28, 28, 1)) for l in range(5)],
        "test": [(l, (28, 28, 1)) for l in (5, 6)]}),
    "stanford_dogs": (None, {
        "train": [(0, (40, 60, 3)), (1, (64, 48, 3)), (2, (30, 30, 3))],
        "test": [(3, (50, 70, 3)), (4, (33, 45, 3))]}),
    "imagenet_resized": ("32x32", {
        "train": [(l, (32, 32, 3)) for l in (0, 500, 999)],
        "validation": [(l, (32, 32, 3)) for l in (1, 2)]}),
}


def extra_features(name, i):
  if name == "cifar10":
    return {"id": f"id_{i}"}
  if name == "stanford_dogs":
    return {"image/filename": f"dog_{i}.jpg", "objects": {"bbox": []}}
  return {}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A tfds data folder holding the four tiny sets of `SETS`."""
  tfds = pytest.importorskip("tensorflow_datasets")
  root = str(tmp_path_factory.mktemp("tfds"))
  for set_name, (config, splits) in SETS.items():
    parent = tfds.builder_cls(set_name)  # Before skip_registration hides it.
    with tfds.core.registered.skip_registration():

      class Tiny(parent):  # pylint: disable=missing-class-docstring
        name = set_name  # Named like the real set: writes to its folder.

        def _split_generators(self, dl_manager):
          return {split: self._generate_examples(split) for split in splits}

        def _generate_examples(self, split):  # pylint: disable=arguments-differ
          for i, (label, shape) in enumerate(splits[split]):
            yield i, {"image": png(pattern(label, shape)), "label": label,
                      **extra_features(self.name, i)}

    Tiny(data_dir=root, config=config,
         file_format="array_record").download_and_prepare()
  return root


def check(ds, examples, size=None):
  """`ds` holds `examples` ([(label, shape)]) in some order."""
  assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
  assert sorted(ds.labels.tolist()) == sorted(l for l, _ in examples)
  for label, shape in examples:
    (i,) = np.flatnonzero(ds.labels == label)
    if size is None:
      np.testing.assert_array_equal(ds.images[i], pattern(label, shape))
    else:
      assert ds.images[i].shape == (size, size, shape[-1])


@pytest.mark.parametrize("name", ["cifar10", "mnist"])
def test_fixed_size_sets_round_trip(tfds_dir, name):
  splits = data.load_official(f"tfds:{name}", tfds_dir)
  _, examples = SETS[name]
  check(splits["train"], examples["train"])
  check(splits["test"], examples["test"])
  shape = examples["train"][0][1]
  assert splits["train"].images.shape == (len(examples["train"]),) + shape
  assert splits["train"].num_classes == 10
  assert len(splits["train"].mean) == shape[-1]


def test_validation_split_serves_as_test(tfds_dir):
  splits = data.load_official("tfds:imagenet_resized/32x32", tfds_dir)
  _, examples = SETS["imagenet_resized"]
  check(splits["train"], examples["train"])
  check(splits["test"], examples["validation"])
  assert splits["train"].num_classes == 1000


def test_variable_size_set_is_resized_and_cropped(tfds_dir):
  splits = data.load_official("tfds:stanford_dogs", tfds_dir)
  _, examples = SETS["stanford_dogs"]
  assert splits["train"].images.shape == (3, 224, 224, 3)
  assert splits["test"].images.shape == (2, 224, 224, 3)
  assert splits["train"].num_classes == 120
  small = tfds_loader.load("stanford_dogs", tfds_dir, image_size=16)
  check(small["train"], examples["train"], size=16)
  check(small["test"], examples["test"], size=16)
  (i,) = np.flatnonzero(small["train"].labels == 2)  # 30x30 -> 16x16.
  np.testing.assert_array_equal(
      small["train"].images[i],
      tfds_loader.resize_center_crop(pattern(2, (30, 30, 3)), 16))


def test_load_splits_through_tfds(tfds_dir):
  import ml_collections  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(dict(name="tfds:cifar10", data_dir=tfds_dir,
                                       val_size=2, split_seed=1))
  splits, index = data.load_splits(cfg)
  assert len(splits["val"]) == 2 and len(splits["train"]) == 4
  assert not set(index["val"]) & set(index["train"])


def test_not_prepared_says_how_to_build(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(FileNotFoundError) as e:
    data.load_official("tfds:cifar100", str(tmp_path))
  assert isinstance(e.value, base.DataNotFoundError)
  msg = str(e.value)
  assert f"tfds:cifar100 is not prepared in {tmp_path}" in msg
  assert (f"tfds build cifar100 --file_format=array_record "
          f"--data_dir={tmp_path}") in msg
  with pytest.raises(base.DataNotFoundError, match="downloads/manual"):
    data.load_official("tfds:imagenet2012", str(tmp_path))


def test_tfrecord_data_says_array_record(tfds_dir, tmp_path):
  shutil.copytree(os.path.join(tfds_dir, "cifar10"), tmp_path / "cifar10")
  (info_path,) = (tmp_path / "cifar10").glob("*/dataset_info.json")
  info = json.loads(info_path.read_text())
  info["fileFormat"] = "tfrecord"
  info_path.write_text(json.dumps(info))
  with pytest.raises(base.DataError, match="needs array_record.*tfds build "
                     "cifar10 --file_format=array_record"):
    data.load_official("tfds:cifar10", str(tmp_path))


def test_tfds_not_installed(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(base.DataError, match=r"pip install 'mexd\[tfds\]'"):
    data.load_official("tfds:svhn_cropped", "/nonexistent")


def test_unknown_tfds_name():
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(base.DataError, match="has no data set 'no_such_set'"):
    tfds_loader.load("no_such_set")


# ----------------------------------------- conversion, on a fake data source


def test_to_numpy_on_plain_sequence():
  examples = [{"image": pattern(l, (5, 7, 3)), "label": l} for l in (3, 1)]
  images, labels = tfds_loader.to_numpy(examples, where="fake", chunk=1)
  assert images.shape == (2, 5, 7, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(images[1], pattern(1, (5, 7, 3)))
  assert labels.tolist() == [3, 1] and labels.dtype == np.int32
  gray = [{"image": np.zeros((9, 6), np.uint8), "label": 0}]
  images, _ = tfds_loader.to_numpy(gray, where="fake", image_size=4)
  assert images.shape == (1, 4, 4, 1)


def test_to_numpy_refuses_mixed_sizes_and_huge_sets():
  mixed = [{"image": np.zeros(s, np.uint8), "label": 0}
           for s in ((4, 4, 3), (5, 4, 3))]
  with pytest.raises(base.DataError, match="example 1 .* pass image_size"):
    tfds_loader.to_numpy(mixed, where="fake")
  with pytest.raises(base.DataError, match="over max_gib"):
    tfds_loader.to_numpy(mixed * 1000, where="fake", image_size=224,
                         max_gib=0.1)
  with pytest.raises(base.DataError, match="fake is empty"):
    tfds_loader.to_numpy([], where="fake")


def test_resize_center_crop_keeps_the_center():
  image = np.zeros((20, 40, 3), np.uint8)
  image[:, 10:30] = 255  # The central 20x20 square is white.
  out = tfds_loader.resize_center_crop(image, 10)
  assert out.shape == (10, 10, 3)
  assert (out[:, 1:-1] == 255).all()  # Edge columns blend with black.
  tall = tfds_loader.resize_center_crop(np.zeros((9, 3, 1), np.uint8), 6)
  assert tall.shape == (6, 6, 1)
  same = pattern(0, (8, 8, 3))
  np.testing.assert_array_equal(tfds_loader.resize_center_crop(same, 8), same)
