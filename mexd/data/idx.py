"""MNIST and Fashion-MNIST from their official IDX files, gzipped or plain.

The four files of each set sit in one folder:

  train-images-idx3-ubyte(.gz)  train-labels-idx1-ubyte(.gz)
  t10k-images-idx3-ubyte(.gz)   t10k-labels-idx1-ubyte(.gz)

(the `train-images.idx3-ubyte` spelling of some mirrors is accepted too).
Fashion-MNIST defaults to `/usr/share/datasets/fashion-mnist`, where the
Debian package `dataset-fashion-mnist` installs it; MNIST has no Debian
package and defaults to `$MEXD_DATA_DIR/mnist` (`~/data/mnist`). Either is
overridden by `data_dir` (config `data.data_dir`).

An IDX file is a big-endian header (magic number 2051 for images, 2049 for
labels, then one int32 per dimension) followed by raw uint8 values. Every
file is checked (magic, header count against file length, 28x28 shape,
images against labels, label range) and a bad one raises one
`base.DataError` that names the file and says how to get a good copy.
"""

import dataclasses
import gzip
import os
import struct
import zlib
from typing import Dict, Optional, Tuple

import numpy as np

from mexd.data import base

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions.
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension.
_GZIP_MAGIC = b"\x1f\x8b"


@dataclasses.dataclass(frozen=True)
class IdxSpec:
  """Where an IDX data set lives and how to get it.

  Attributes:
    title: human-readable name for messages.
    default_dir: folder used when `data_dir` is None; "{root}" stands for
      `data_root()`.
    how_to_get: sentence on how to install or download the files.
    image_shape: (rows, cols) every image must have.
    num_classes: labels must lie in [0, num_classes).
  """

  title: str
  default_dir: str
  how_to_get: str
  image_shape: Tuple[int, int] = (28, 28)
  num_classes: int = 10


FASHION_MNIST = IdxSpec(
    title="Fashion-MNIST",
    default_dir="/usr/share/datasets/fashion-mnist",
    how_to_get=(
        "Install the Debian package (`sudo apt-get install "
        "dataset-fashion-mnist`, files in /usr/share/datasets/fashion-mnist) "
        "or download the four files from "
        "https://github.com/zalandoresearch/fashion-mnist and set "
        "data.data_dir (data_dir=) to their folder."))

MNIST = IdxSpec(
    title="MNIST",
    default_dir="{root}/mnist",
    how_to_get=(
        "Debian has no MNIST package: download the four files from "
        "https://yann.lecun.com/exdb/mnist/ (mirror: "
        "https://storage.googleapis.com/cvdf-datasets/mnist/) and set "
        "data.data_dir (data_dir=) to their folder, or put them in "
        "$MEXD_DATA_DIR/mnist (default ~/data/mnist)."))



def data_root() -> str:
  """$MEXD_DATA_DIR, else ~/data: the root of default data folders."""
  return os.path.expanduser(os.environ.get("MEXD_DATA_DIR") or "~/data")


def _candidates(data_dir: str, prefix: str, kind: str, dims: int):
  """File names tried for e.g. ("train", "images", 3), in order."""
  names = (f"{prefix}-{kind}-idx{dims}-ubyte",
           f"{prefix}-{kind}.idx{dims}-ubyte")
  return [os.path.join(data_dir, n + ext) for n in names for ext in ("", ".gz")]


def find_file(data_dir: str, prefix: str, kind: str, spec: IdxSpec) -> str:
  """Path of the `prefix` ("train"/"t10k") `kind` ("images"/"labels") file.

  Raises:
    base.DataNotFoundError: when no candidate name exists in `data_dir`.
  """
  dims = 3 if kind == "images" else 1
  for path in _candidates(data_dir, prefix, kind, dims):
    if os.path.isfile(path):
      return path
  where = ("folder does not exist" if not os.path.isdir(data_dir)
           else "no such file there")
  raise base.DataNotFoundError(
      f"{spec.title}: {prefix}-{kind}-idx{dims}-ubyte(.gz) not found in "
      f"{data_dir} ({where}). {spec.how_to_get}")


def _read(path: str, spec: IdxSpec) -> bytes:
  """The file's bytes, gunzipped if they start with the gzip magic."""
  with open(path, "rb") as f:
    raw = f.read()
  # Sniff the content, not the name: browsers often save a gunzipped file
  # under its ".gz" name.
  if raw[:2] != _GZIP_MAGIC:
    return raw
  try:
    return gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as e:
    raise base.DataError(
        f"{spec.title} file {path} is not a valid gzip file ({e}); the "
        f"download is probably truncated. {spec.how_to_get}") from e


def read_idx(path: str, magic: int, spec: IdxSpec) -> np.ndarray:
  """Reads one uint8 IDX file and checks its header against its length.

  Args:
    path: the file, gzipped or plain.
    magic: the expected magic number (`IMAGES_MAGIC` or `LABELS_MAGIC`).
    spec: the data set (for messages).

  Returns:
    uint8 array of the header's shape: [N, rows, cols] for images, [N] for
    labels (writable, owning its memory).

  Raises:
    base.DataError: wrong magic number, or header and data disagree.
  """
  raw = _read(path, spec)
  ndim = magic & 0xFF
  header = 4 + 4 * ndim
  fix = ("Re-download it or point data.data_dir at a good copy. "
         + spec.how_to_get)
  if len(raw) < header:
    raise base.DataError(
        f"{spec.title} file {path} is truncated: {len(raw)} bytes, shorter "
        f"than its {header}-byte header. {fix}")
  got = struct.unpack(">i", raw[:4])[0]
  if got != magic:
    other = {IMAGES_MAGIC: "an images", LABELS_MAGIC: "a labels"}.get(got)
    hint = f" (that of {other} file: swapped names?)" if other else ""
    raise base.DataError(
        f"{spec.title} file {path} has magic number {got}{hint}, expected "
        f"{magic}: not an IDX {'images' if ndim == 3 else 'labels'} file. "
        f"{fix}")
  shape = struct.unpack(f">{ndim}i", raw[4:header])
  want = int(np.prod(shape))
  if len(raw) - header != want:
    problem = "is truncated" if len(raw) - header < want else "is too long"
    raise base.DataError(
        f"{spec.title} file {path} {problem}: its header says shape "
        f"{list(shape)} ({want} bytes) but {len(raw) - header} bytes follow "
        f"the header. {fix}")
  return np.frombuffer(raw, np.uint8, count=want, offset=header).reshape(
      shape).copy()


def load_split(data_dir: str, prefix: str, spec: IdxSpec
               ) -> Tuple[np.ndarray, np.ndarray]:
  """Reads and checks one split ("train" or "t10k").

  Returns:
    (images [N, 28, 28, 1] uint8, labels [N] int32).
  """
  img_path = find_file(data_dir, prefix, "images", spec)
  lbl_path = find_file(data_dir, prefix, "labels", spec)
  images = read_idx(img_path, IMAGES_MAGIC, spec)
  labels = read_idx(lbl_path, LABELS_MAGIC, spec)
  if images.shape[1:] != spec.image_shape:
    raise base.DataError(
        f"{spec.title} file {img_path} holds images of shape "
        f"{images.shape[1:]}, expected {spec.image_shape}: a different data "
        f"set? {spec.how_to_get}")
  if len(images) != len(labels):
    raise base.DataError(
        f"{spec.title}: {img_path} holds {len(images)} images but "
        f"{lbl_path} holds {len(labels)} labels; the two files are from "
        f"different downloads or splits. {spec.how_to_get}")
  if len(labels) and labels.max() >= spec.num_classes:
    raise base.DataError(
        f"{spec.title} file {lbl_path} has label {int(labels.max())}, "
        f"outside [0, {spec.num_classes}). {spec.how_to_get}")
  return images[..., None], labels.astype(np.int32)


def load(data_dir: Optional[str] = None, *, spec: IdxSpec = FASHION_MNIST
         ) -> Dict[str, base.Dataset]:
  """The official splits of an IDX data set.

  Args:
    data_dir: folder of the four files; None uses `spec.default_dir`
      (`~` is expanded).
    spec: which data set (`FASHION_MNIST` or `MNIST`).

  Returns:
    {"train": Dataset [60000, 28, 28, 1], "test": Dataset [10000, ...]} for
    the official files; mean/std come from the train split.
  """
  if data_dir is None:
    data_dir = spec.default_dir.format(root=data_root())
  data_dir = os.path.expanduser(os.fspath(data_dir))
  return base.official_splits({
      "train": load_split(data_dir, "train", spec),
      "test": load_split(data_dir, "t10k", spec)}, spec.num_classes)


def load_fashion_mnist(data_dir: Optional[str] = None):
  """Fashion-MNIST (see `load`)."""
  return load(data_dir, spec=FASHION_MNIST)


def load_mnist(data_dir: Optional[str] = None):
  """MNIST (see `load`)."""
  return load(data_dir, spec=MNIST)
