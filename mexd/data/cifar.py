"""CIFAR-10 and CIFAR-100 from the official "python version" archives.

Download `cifar-10-python.tar.gz` or `cifar-100-python.tar.gz` from
https://www.cs.toronto.edu/~kriz/cifar.html and put it, or the folder it
extracts to, in `data_dir` (config `data.data_dir`; default
`$MEXD_DATA_DIR/cifar`, i.e. `~/data/cifar` when the variable is unset):

  <data_dir>/cifar-10-batches-py/{data_batch_1..5, test_batch}
  <data_dir>/cifar-10-python.tar.gz                 (read in place)
  <data_dir>/cifar-100-python/{train, test}
  <data_dir>/cifar-100-python.tar.gz

`data_dir` may also be the extracted folder or the archive itself. Each batch
is a (Python 2) pickle of a dict with b"data": uint8 [N, 3072], rows holding
the 1024 red, then green, then blue values of a 32x32 image in row-major
order, and b"labels" (CIFAR-10) or b"fine_labels" (CIFAR-100). The pickles
are read with an unpickler that only builds dicts, lists and numpy arrays, so
a tampered file cannot run code.
"""

import codecs
import dataclasses
import io
import os
import pickle
import posixpath
import tarfile
import zlib
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from mexd.data import base

URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
SIDE = 32


@dataclasses.dataclass(frozen=True)
class CifarSpec:
  """Layout of one CIFAR archive.

  Attributes:
    title: human-readable name for messages.
    folder: the folder the archive extracts to.
    archive: the archive's file name.
    train_files: the batches of the train split, in order.
    test_files: the batches of the test split.
    label_key: the pickle key of the labels.
    num_classes: labels lie in [0, num_classes).
  """

  title: str
  folder: str
  archive: str
  train_files: Tuple[str, ...]
  test_files: Tuple[str, ...]
  label_key: str
  num_classes: int


CIFAR10 = CifarSpec(
    title="CIFAR-10", folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",), label_key="labels", num_classes=10)

CIFAR100 = CifarSpec(
    title="CIFAR-100", folder="cifar-100-python",
    archive="cifar-100-python.tar.gz", train_files=("train",),
    test_files=("test",), label_key="fine_labels", num_classes=100)


def default_dir() -> str:
  """$MEXD_DATA_DIR/cifar, else ~/data/cifar."""
  root = os.environ.get("MEXD_DATA_DIR") or "~/data"
  return os.path.join(os.path.expanduser(root), "cifar")


def _how_to_get(spec: CifarSpec) -> str:
  return (f"Download {spec.archive} (the python version) from {URL} and put "
          f"it, or the {spec.folder}/ folder it extracts to, in data.data_dir "
          f"(data_dir=; default $MEXD_DATA_DIR/cifar or ~/data/cifar).")


_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's array rebuilder.


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles dicts, lists, strings, numbers and numpy arrays, nothing else."""

  _ALLOWED = {
      # Python 2 pickles (the official files) and numpy < 2 name this one;
      # numpy >= 2 pickles name numpy._core.multiarray.
      ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
      ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
      ("numpy", "ndarray"): np.ndarray,
      ("numpy", "dtype"): np.dtype,
      ("_codecs", "encode"): codecs.encode,
  }

  def find_class(self, module, name):
    try:
      return self._ALLOWED[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f"refusing to unpickle {module}.{name}: a CIFAR batch holds only "
          "dicts, lists and numpy arrays") from None


def _unpickle(raw: bytes, where: str, spec: CifarSpec) -> Dict[str, object]:
  """A batch dict with str keys, from the bytes of one pickle."""
  try:
    batch = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
  except Exception as e:  # pylint: disable=broad-except
    raise base.DataError(
        f"{spec.title}: cannot unpickle {where} ({type(e).__name__}: {e}); "
        f"the file is truncated or not from the official python archive. "
        f"{_how_to_get(spec)}") from e
  if not isinstance(batch, dict):
    raise base.DataError(f"{spec.title}: {where} holds a "
                         f"{type(batch).__name__}, not a batch dict. "
                         f"{_how_to_get(spec)}")
  return {k.decode("latin1") if isinstance(k, bytes) else k: v
          for k, v in batch.items()}


def _to_arrays(batch: Dict[str, object], where: str, spec: CifarSpec
               ) -> Tuple[np.ndarray, np.ndarray]:
  """Checks a batch and returns (images [N, 32, 32, 3] uint8, labels [N])."""
  fix = _how_to_get(spec)
  for key in ("data", spec.label_key):
    if key not in batch:
      raise base.DataError(
          f"{spec.title}: {where} has no {key!r} entry (keys: "
          f"{sorted(batch)}); is it from the other CIFAR archive? {fix}")
  data = np.asarray(batch["data"])
  labels = np.asarray(batch[spec.label_key])
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE**2:
    raise base.DataError(
        f"{spec.title}: {where} has data {data.dtype} {list(data.shape)}, "
        f"expected uint8 [N, {3 * SIDE**2}]. {fix}")
  if labels.shape != (len(data),):
    raise base.DataError(
        f"{spec.title}: {where} has {labels.size} labels for {len(data)} "
        f"images. {fix}")
  if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
    raise base.DataError(
        f"{spec.title}: {where} has labels in [{labels.min()}, "
        f"{labels.max()}], expected [0, {spec.num_classes}). {fix}")
  # Rows are CHW: [N, 3, 32, 32] -> [N, 32, 32, 3].
  images = data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


def _locate(data_dir: str, spec: CifarSpec) -> Tuple[str, str]:
  """("dir", folder) or ("tar", archive) holding the batches.

  Raises:
    base.DataNotFoundError: listing every place it looked.
  """
  tried = []
  for path in (os.path.join(data_dir, spec.folder), data_dir):
    tried.append(os.path.join(path, spec.train_files[0]))
    if os.path.isfile(tried[-1]):
      return "dir", path
  for path in (os.path.join(data_dir, spec.archive), data_dir):
    tried.append(path)
    if os.path.isfile(path):
      return "tar", path
  raise base.DataNotFoundError(
      f"{spec.title} not found; looked for "
      f"{', '.join(dict.fromkeys(tried))}. {_how_to_get(spec)}")


def _read_dir(folder: str, names: Sequence[str], spec: CifarSpec
              ) -> Dict[str, bytes]:
  """The bytes of the named batch files in the extracted `folder`."""
  out = {}
  for name in names:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
      raise base.DataNotFoundError(
          f"{spec.title}: {path} is missing (the folder {folder} is "
          f"incomplete). {_how_to_get(spec)}")
    with open(path, "rb") as f:
      out[name] = f.read()
  return out


def _read_tar(archive: str, names: Sequence[str], spec: CifarSpec
              ) -> Dict[str, bytes]:
  """The named members of `spec.folder` in `archive`, in one pass."""
  wanted = {posixpath.join(spec.folder, n): n for n in names}
  out = {}
  try:
    with tarfile.open(archive, "r:*") as tar:
      for member in tar:
        name = wanted.get(posixpath.normpath(member.name))
        if name is not None and member.isfile():
          out[name] = tar.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    raise base.DataError(
        f"{spec.title}: cannot read the archive {archive} ({e}); the download "
        f"is probably truncated. {_how_to_get(spec)}") from e
  missing = [p for p, n in wanted.items() if n not in out]
  if missing:
    raise base.DataError(
        f"{spec.title}: the archive {archive} lacks {', '.join(missing)}; is "
        f"it the {spec.archive} python version? {_how_to_get(spec)}")
  return out


def load(data_dir: Optional[str] = None, *, spec: CifarSpec = CIFAR10
         ) -> Dict[str, base.Dataset]:
  """The official splits of CIFAR-10 or CIFAR-100.

  Args:
    data_dir: folder holding the archive or its extracted folder (or either
      itself); None uses `default_dir()`.
    spec: `CIFAR10` or `CIFAR100`.

  Returns:
    {"train": Dataset [50000, 32, 32, 3], "test": Dataset [10000, ...]} for
    the official archives; mean/std come from the train split.
  """
  data_dir = os.path.expanduser(os.fspath(data_dir or default_dir()))
  kind, path = _locate(data_dir, spec)
  names = list(spec.train_files + spec.test_files)
  read = _read_dir if kind == "dir" else _read_tar
  raw = read(path, names, spec)
  arrays = {}
  for name in names:
    where = (os.path.join(path, name) if kind == "dir"
             else f"{path}:{spec.folder}/{name}")
    batch = _unpickle(raw.pop(name), where, spec)
    arrays[name] = _to_arrays(batch, where, spec)

  def concat(files):
    images, labels = zip(*(arrays[f] for f in files))
    return np.concatenate(images), np.concatenate(labels)

  return base.official_splits({"train": concat(spec.train_files),
                               "test": concat(spec.test_files)},
                              spec.num_classes)


def load_cifar10(data_dir: Optional[str] = None):
  """CIFAR-10 (see `load`)."""
  return load(data_dir, spec=CIFAR10)


def load_cifar100(data_dir: Optional[str] = None):
  """CIFAR-100 (see `load`)."""
  return load(data_dir, spec=CIFAR100)
