"""CIFAR-10/100 loader on tiny archives in the official python layout."""

import os
import pickle
import struct
import tarfile

import numpy as np
import pytest

from mexd import data
from mexd.data import base
from mexd.data import cifar

CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def _str(s):
  """Python 2 `str` (SHORT_BINSTRING / BINSTRING opcodes)."""
  s = s.encode() if isinstance(s, str) else s
  if len(s) < 256:
    return b"U" + bytes([len(s)]) + s
  return b"T" + struct.pack("<i", len(s)) + s


def _int(i):
  return b"J" + struct.pack("<i", i)


def py2_pickle(batch):
  """Protocol-2 pickle of a batch dict as Python 2's cPickle wrote CIFAR.

  Keys and strings are Python 2 `str`s; the uint8 [N, 3072] array is rebuilt
  through numpy.core.multiarray._reconstruct with a version-3 dtype state.
  """
  out = [b"\x80\x02}("]
  for key, value in batch.items():
    out.append(_str(key))
    if isinstance(value, np.ndarray):
      n, d = value.shape
      out += [b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n",
              b"K\x00\x85", _str("b"), b"\x87R(K\x01", _int(n), _int(d),
              b"\x86cnumpy\ndtype\n", _str("u1"), b"K\x00K\x01\x87R(K\x03",
              _str("|"), b"NNN", _int(-1), _int(-1), b"K\x00tb\x89",
              _str(value.tobytes()), b"tb"]
    elif isinstance(value, list):
      out.append(b"](")
      out += [_int(v) if isinstance(v, int) else _str(v) for v in value]
      out.append(b"e")
    elif isinstance(value, int):
      out.append(_int(value))
    else:
      out.append(_str(value))
  out.append(b"u.")
  return b"".join(out)


def py3_pickle(batch):
  """The same batch pickled by Python 3 (bytes keys, numpy >= 2 names)."""
  return pickle.dumps({k.encode(): v.encode() if isinstance(v, str) else v
                       for k, v in batch.items()}, protocol=2)


def make_batch(rng, n, label_key, labels, name):
  data_ = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
  return {"batch_label": name, label_key: [int(l) for l in labels],
          "data": data_, "filenames": [f"img_{i}.png" for i in range(n)]}


def write_cifar(root, which, *, pickler=py2_pickle, archive=False,
                skip=()):
  """Writes a tiny CIFAR-10 (2 images x 5 batches + 3) or CIFAR-100 (4 + 2).

  Returns:
    {batch file name: batch dict}.
  """
  rng = np.random.default_rng(0)
  if which == "cifar10":
    spec, meta = cifar.CIFAR10, ("batches.meta", {
        "num_cases_per_batch": 2, "num_vis": 3072,
        "label_names": [f"class{i}" for i in range(10)]})
    sizes = {f: 2 for f in CIFAR10_TRAIN} | {"test_batch": 3}
  else:
    spec, meta = cifar.CIFAR100, ("meta", {
        "fine_label_names": [f"fine{i}" for i in range(100)],
        "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    sizes = {"train": 4, "test": 2}
  batches, start = {}, 0
  for name, n in sizes.items():
    labels = (np.arange(start, start + n) * 37) % spec.num_classes
    batches[name] = make_batch(rng, n, spec.label_key, labels, name)
    if which == "cifar100":
      batches[name]["coarse_labels"] = [int(l) // 5 for l in labels]
    start += n
  folder = os.path.join(root, spec.folder)
  os.makedirs(folder)
  for name, batch in list(batches.items()) + [meta]:
    if name not in skip:
      with open(os.path.join(folder, name), "wb") as f:
        f.write(pickler(batch))
  if archive:
    with tarfile.open(os.path.join(root, spec.archive), "w:gz") as tar:
      tar.add(folder, arcname=spec.folder)
    for name in os.listdir(folder):
      os.remove(os.path.join(folder, name))
    os.rmdir(folder)
  return batches


def expected(batches, files, label_key):
  return (np.concatenate([batches[f]["data"] for f in files]),
          np.concatenate([batches[f][label_key] for f in files]))


@pytest.mark.parametrize("layout", ["folder", "archive", "point_at_folder",
                                    "point_at_archive"])
def test_cifar10_layouts(tmp_path, layout):
  batches = write_cifar(str(tmp_path), "cifar10",
                        archive=layout.endswith("archive"))
  data_dir = {"folder": tmp_path, "archive": tmp_path,
              "point_at_folder": tmp_path / "cifar-10-batches-py",
              "point_at_archive": tmp_path / "cifar-10-python.tar.gz"}[layout]
  splits = data.load_official("cifar10", str(data_dir))
  for split, files in (("train", CIFAR10_TRAIN), ("test", ["test_batch"])):
    ds = splits[split]
    rows, labels = expected(batches, files, "labels")
    assert ds.images.shape == (len(rows), 32, 32, 3)
    assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
    assert ds.num_classes == 10
    np.testing.assert_array_equal(ds.labels, labels)
    # Row layout: 1024 red, 1024 green, 1024 blue values, each 32x32
    # row-major, so pixel (h, w) of channel c is at c * 1024 + h * 32 + w.
    for i, h, w, c in ((0, 0, 0, 0), (1, 3, 5, 1), (len(rows) - 1, 31, 7, 2)):
      assert ds.images[i, h, w, c] == rows[i, c * 1024 + h * 32 + w]
    hwc = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(ds.images, hwc)
  # Batches are concatenated in order data_batch_1..5.
  np.testing.assert_array_equal(splits["train"].labels[:4],
                                batches["data_batch_1"]["labels"]
                                + batches["data_batch_2"]["labels"])
  hwc = splits["train"].images / 255.0
  np.testing.assert_allclose(splits["train"].mean, hwc.mean((0, 1, 2)))


def test_pixel_mapping_by_hand(tmp_path):
  batches = write_cifar(str(tmp_path), "cifar10", pickler=py3_pickle)
  row = np.zeros(3072, np.uint8)
  row[:1024], row[1024:2048], row[2048:] = 10, 20, 30  # R, G, B planes.
  row[1024 + 3 * 32 + 5] = 200  # Green, row 3, column 5.
  batches["data_batch_1"]["data"][0] = row
  with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
    f.write(py3_pickle(batches["data_batch_1"]))
  image = cifar.load_cifar10(str(tmp_path))["train"].images[0]
  assert image.shape == (32, 32, 3)
  assert image[0, 0].tolist() == [10, 20, 30]
  assert image[3, 5].tolist() == [10, 200, 30]
  assert image[5, 3].tolist() == [10, 20, 30]


@pytest.mark.parametrize("archive", [False, True])
@pytest.mark.parametrize("pickler", [py2_pickle, py3_pickle])
def test_cifar100_fine_labels(tmp_path, archive, pickler):
  batches = write_cifar(str(tmp_path), "cifar100", archive=archive,
                        pickler=pickler)
  splits = data.load_official("cifar100", str(tmp_path))
  for split in ("train", "test"):
    ds = splits[split]
    rows, labels = expected(batches, [split], "fine_labels")
    assert ds.num_classes == 100 and ds.images.shape == (len(rows), 32, 32, 3)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.labels.max() > 19  # fine, not coarse, labels.
    np.testing.assert_array_equal(
        ds.images, rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def test_default_dir_follows_env(tmp_path, monkeypatch):
  write_cifar(str(tmp_path / "cifar"), "cifar100", archive=True)
  monkeypatch.setenv("MEXD_DATA_DIR", str(tmp_path))
  assert len(data.load_official("cifar100")["train"]) == 4


def test_missing_says_where_and_url(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    data.load_official("cifar10", str(tmp_path))
  assert isinstance(e.value, base.DataNotFoundError)
  msg = str(e.value)
  for needle in ("CIFAR-10 not found",
                 str(tmp_path / "cifar-10-batches-py" / "data_batch_1"),
                 str(tmp_path / "cifar-10-python.tar.gz"),
                 "https://www.cs.toronto.edu/~kriz/cifar.html",
                 "data.data_dir"):
    assert needle in msg
  with pytest.raises(base.DataNotFoundError,
                     match="cifar-100-python.tar.gz.*kriz/cifar.html"):
    data.load_official("cifar100", str(tmp_path))


def test_incomplete_folder_names_the_missing_batch(tmp_path):
  write_cifar(str(tmp_path), "cifar10", skip=("data_batch_3",))
  with pytest.raises(base.DataNotFoundError, match="data_batch_3 is missing"):
    cifar.load_cifar10(str(tmp_path))


def test_truncated_archive(tmp_path):
  write_cifar(str(tmp_path), "cifar10", archive=True)
  path = tmp_path / "cifar-10-python.tar.gz"
  raw = path.read_bytes()
  path.write_bytes(raw[:len(raw) * 2 // 3])
  with pytest.raises(base.DataError, match="truncated") as e:
    cifar.load_cifar10(str(tmp_path))
  assert str(path) in str(e.value)


def test_wrong_archive_members(tmp_path):
  write_cifar(str(tmp_path), "cifar100", archive=True)
  os.rename(tmp_path / "cifar-100-python.tar.gz",
            tmp_path / "cifar-10-python.tar.gz")
  with pytest.raises(base.DataError, match="lacks cifar-10-batches-py/"):
    cifar.load_cifar10(str(tmp_path))


def test_truncated_pickle(tmp_path):
  write_cifar(str(tmp_path), "cifar10")
  path = tmp_path / "cifar-10-batches-py" / "test_batch"
  path.write_bytes(path.read_bytes()[:5000])
  with pytest.raises(base.DataError, match="cannot unpickle .*test_batch"):
    cifar.load_cifar10(str(tmp_path))


def test_refuses_code_in_pickles(tmp_path):
  write_cifar(str(tmp_path), "cifar10")
  evil = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R."
  (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(evil)
  with pytest.raises(base.DataError, match="refusing to unpickle os.system"):
    cifar.load_cifar10(str(tmp_path))


@pytest.mark.parametrize("change,needle", [
    (lambda b: b.update(labels=[10] + b["labels"][1:]),
     r"labels in \[.*, 10\], expected \[0, 10\)"),
    (lambda b: b.update(data=b["data"][:, :3000]),
     r"data uint8 \[2, 3000\], expected uint8 \[N, 3072\]"),
    (lambda b: b.update(labels=b["labels"][:1]), "1 labels for 2 images"),
    (lambda b: b.pop("labels"), "no 'labels' entry"),
], ids=["label_range", "row_length", "label_count", "no_labels"])
def test_bad_batch_contents(tmp_path, change, needle):
  batches = write_cifar(str(tmp_path), "cifar10")
  batch = dict(batches["data_batch_2"])
  change(batch)
  (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(
      py2_pickle(batch))
  with pytest.raises(base.DataError, match=needle) as e:
    cifar.load_cifar10(str(tmp_path))
  assert "data_batch_2" in str(e.value)
