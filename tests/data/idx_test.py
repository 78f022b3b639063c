"""IDX (MNIST / Fashion-MNIST) loader: generated files and the real ones."""

import gzip
import os
import struct
import time

import numpy as np
import pytest

from mexd import data
from mexd.data import base
from mexd.data import idx

REAL_DIR = "/usr/share/datasets/fashion-mnist"
REAL_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def idx_bytes(array, magic=None, shape=None):
  """The IDX encoding of a uint8 array (header magic/shape overridable)."""
  array = np.asarray(array, np.uint8)
  magic = 0x800 + array.ndim if magic is None else magic
  shape = array.shape if shape is None else shape
  return (struct.pack(">i", magic) + struct.pack(f">{len(shape)}i", *shape)
          + array.tobytes())


def write(path, payload, gz):
  if gz:
    path += ".gz"
    payload = gzip.compress(payload)
  with open(path, "wb") as f:
    f.write(payload)
  return path


def make_split(rng, n, side=28):
  images = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
  labels = (np.arange(n) % 10).astype(np.uint8)
  return images, labels


@pytest.fixture
def tiny(tmp_path):
  """Writes a 20 + 10 image IDX set; returns (dir, arrays, gz)."""

  def build(gz=True):
    rng = np.random.default_rng(0)
    arrays = {"train": make_split(rng, 20), "t10k": make_split(rng, 10)}
    for prefix, (images, labels) in arrays.items():
      write(str(tmp_path / f"{prefix}-images-idx3-ubyte"), idx_bytes(images),
            gz)
      write(str(tmp_path / f"{prefix}-labels-idx1-ubyte"), idx_bytes(labels),
            gz)
    return str(tmp_path), arrays

  return build


@pytest.mark.parametrize("gz", [True, False])
def test_loads_generated_files(tiny, gz):
  data_dir, arrays = tiny(gz)
  splits = data.load_official("fashion_mnist", data_dir)
  for split, prefix in (("train", "train"), ("test", "t10k")):
    ds = splits[split]
    images, labels = arrays[prefix]
    assert ds.images.shape == (len(images), 28, 28, 1)
    assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
    np.testing.assert_array_equal(ds.images[..., 0], images)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.num_classes == 10 and ds.images.flags.writeable
  train = arrays["train"][0] / 255.0
  np.testing.assert_allclose(splits["train"].mean, [train.mean()])
  np.testing.assert_allclose(splits["train"].std, [train.std()])


def test_gz_name_with_plain_content_loads(tiny, tmp_path):
  # Browsers often gunzip a download but keep its ".gz" name.
  data_dir, arrays = tiny(gz=False)
  for name in os.listdir(data_dir):
    path = os.path.join(data_dir, name)
    os.rename(path, path + ".gz")
  splits = idx.load_fashion_mnist(data_dir)
  np.testing.assert_array_equal(splits["test"].labels, arrays["t10k"][1])


def test_mirror_spelling_loads(tiny):
  data_dir, arrays = tiny(gz=False)
  for name in os.listdir(data_dir):
    new = name.replace("-idx", ".idx")
    os.rename(os.path.join(data_dir, name), os.path.join(data_dir, new))
  splits = idx.load_mnist(data_dir)
  assert len(splits["train"]) == len(arrays["train"][0])


@pytest.mark.parametrize("magic,needle", [
    (idx.LABELS_MAGIC, "magic number 2049 (that of a labels file"),
    (1234, "magic number 1234, expected 2051"),
])
def test_wrong_magic(tiny, magic, needle):
  data_dir, arrays = tiny(gz=True)
  path = write(os.path.join(data_dir, "train-images-idx3-ubyte"),
               idx_bytes(arrays["train"][0], magic=magic,
                         shape=arrays["train"][0].shape), gz=True)
  with pytest.raises(base.DataError, match="Fashion-MNIST file") as e:
    idx.load_fashion_mnist(data_dir)
  assert needle in str(e.value) and path in str(e.value)
  assert "apt-get install dataset-fashion-mnist" in str(e.value)


def test_wrong_magic_in_labels_file(tiny):
  data_dir, arrays = tiny(gz=False)
  write(os.path.join(data_dir, "t10k-labels-idx1-ubyte"),
        idx_bytes(arrays["t10k"][1], magic=idx.IMAGES_MAGIC), gz=False)
  with pytest.raises(base.DataError,
                     match="t10k-labels-idx1-ubyte has magic number 2051"):
    idx.load_fashion_mnist(data_dir)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_pixels(tiny, gz):
  data_dir, arrays = tiny(gz)
  payload = idx_bytes(arrays["train"][0])[:-100]
  path = write(os.path.join(data_dir, "train-images-idx3-ubyte"), payload, gz)
  with pytest.raises(base.DataError, match="is truncated") as e:
    idx.load_fashion_mnist(data_dir)
  msg = str(e.value)
  assert path in msg and "[20, 28, 28]" in msg and "15580 bytes" in msg


def test_truncated_header(tiny):
  data_dir, _ = tiny(gz=False)
  write(os.path.join(data_dir, "train-labels-idx1-ubyte"),
        struct.pack(">i", idx.LABELS_MAGIC), gz=False)
  with pytest.raises(base.DataError, match="shorter than its 8-byte header"):
    idx.load_fashion_mnist(data_dir)


def test_truncated_gzip_stream(tiny):
  data_dir, _ = tiny(gz=True)
  path = os.path.join(data_dir, "train-images-idx3-ubyte.gz")
  with open(path, "rb") as f:
    raw = f.read()
  with open(path, "wb") as f:
    f.write(raw[:len(raw) // 2])
  with pytest.raises(base.DataError, match="not a valid gzip file"):
    idx.load_fashion_mnist(data_dir)


@pytest.mark.parametrize("count,needle", [(21, "is truncated"),
                                          (19, "is too long")])
def test_header_count_disagrees_with_length(tiny, count, needle):
  data_dir, arrays = tiny(gz=True)
  write(os.path.join(data_dir, "train-labels-idx1-ubyte"),
        idx_bytes(arrays["train"][1], shape=(count,)), gz=True)
  with pytest.raises(base.DataError, match=needle):
    idx.load_fashion_mnist(data_dir)


def test_images_and_labels_counts_differ(tiny):
  data_dir, arrays = tiny(gz=True)
  write(os.path.join(data_dir, "t10k-labels-idx1-ubyte"),
        idx_bytes(arrays["t10k"][1][:9]), gz=True)
  with pytest.raises(base.DataError, match="holds 10 images but .* holds 9 "
                     "labels"):
    idx.load_fashion_mnist(data_dir)


def test_wrong_image_shape(tiny):
  data_dir, _ = tiny(gz=True)
  images, _ = make_split(np.random.default_rng(1), 20, side=32)
  write(os.path.join(data_dir, "train-images-idx3-ubyte"), idx_bytes(images),
        gz=True)
  with pytest.raises(base.DataError, match=r"shape \(32, 32\), expected "
                     r"\(28, 28\)"):
    idx.load_fashion_mnist(data_dir)


def test_label_out_of_range(tiny):
  data_dir, arrays = tiny(gz=True)
  labels = arrays["train"][1].copy()
  labels[3] = 10
  write(os.path.join(data_dir, "train-labels-idx1-ubyte"), idx_bytes(labels),
        gz=True)
  with pytest.raises(base.DataError, match=r"label 10, outside \[0, 10\)"):
    idx.load_fashion_mnist(data_dir)


def test_missing_files_say_where_and_how(tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError) as e:
    data.load_official("fashion_mnist", missing)
  assert isinstance(e.value, base.DataNotFoundError)
  msg = str(e.value)
  assert "train-images-idx3-ubyte(.gz) not found in " + missing in msg
  assert "folder does not exist" in msg
  assert "apt-get install dataset-fashion-mnist" in msg
  assert "data.data_dir" in msg
  with pytest.raises(base.DataNotFoundError,
                     match="Debian has no MNIST package.*data.data_dir"):
    data.load_official("mnist", str(tmp_path))


def test_mnist_default_dir_follows_env(tiny, tmp_path, monkeypatch):
  data_dir, arrays = tiny(gz=True)
  root = tmp_path / "root"
  root.mkdir()
  os.symlink(data_dir, root / "mnist")
  monkeypatch.setenv("MEXD_DATA_DIR", str(root))
  splits = data.load_official("mnist")
  np.testing.assert_array_equal(splits["train"].labels, arrays["train"][1])
  monkeypatch.setenv("MEXD_DATA_DIR", str(tmp_path / "empty"))
  with pytest.raises(base.DataNotFoundError,
                     match=str(tmp_path / "empty" / "mnist")):
    data.load_official("mnist")


@pytest.mark.parametrize("shape", [(7, 5, 4, 3), (30, 28, 28, 1)])
def test_channel_stats_match_float64_reference(shape):
  images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  images[0] = 255  # Values at both ends of the histogram.
  images[1] = 0
  x = images.reshape(-1, shape[-1]).astype(np.float64) / 255.0
  mean, std = base.channel_stats(images, chunk_pixels=37)
  np.testing.assert_allclose(mean, x.mean(0), rtol=1e-12)
  np.testing.assert_allclose(std, x.std(0), rtol=1e-9)
  flat = np.zeros((2, 3, 3, 2), np.uint8)
  assert base.channel_stats(flat) == ((0.0, 0.0), (1e-3, 1e-3))


# ---------------------------------------------------------------- real files


@pytest.fixture(scope="module")
def real():
  missing = [f for f in REAL_FILES
             if not os.path.isfile(os.path.join(REAL_DIR, f))]
  if missing:
    pytest.skip(f"real Fashion-MNIST not installed in {REAL_DIR} (missing "
                f"{', '.join(missing)}); `apt-get install "
                f"dataset-fashion-mnist` to run these checks")
  start = time.perf_counter()
  splits = data.load_official("fashion_mnist")
  print(f"real Fashion-MNIST loaded in {time.perf_counter() - start:.2f} s")
  return splits


def test_real_fashion_mnist_counts(real):
  for split, n in (("train", 60_000), ("test", 10_000)):
    ds = real[split]
    assert ds.images.shape == (n, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32 and ds.num_classes == 10
    assert ds.labels.min() == 0 and ds.labels.max() == 9
    np.testing.assert_array_equal(np.bincount(ds.labels, minlength=10),
                                  np.full(10, n // 10))
  # The published statistics of the train split.
  np.testing.assert_allclose(real["train"].mean, [0.2860], atol=1e-4)
  np.testing.assert_allclose(real["train"].std, [0.3530], atol=1e-4)


def test_real_fashion_mnist_splits(real):
  kw = dict(val_size=5_000, seed=7, labeled_per_class=100,
            unlabeled_pool=True)
  splits, index = base.make_splits(real["train"], real["test"], **kw)
  again, index2 = base.make_splits(real["train"], real["test"], **kw)
  for k in index:
    np.testing.assert_array_equal(index[k], index2[k])
  everything = np.concatenate([index["val"], index["train"],
                               index["unlabeled"]])
  np.testing.assert_array_equal(np.sort(everything), np.arange(60_000))
  np.testing.assert_array_equal(np.bincount(splits["train"].labels),
                                np.full(10, 100))
  assert (splits["unlabeled"].labels == base.UNLABELED).all()
  assert len(splits["test"]) == 10_000

