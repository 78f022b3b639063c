"""Record-level access to tfds array_record sets, for the streaming pipeline.

`Records` opens one split of a prepared tfds set for random access (images
left encoded); `StreamSplit` is a split made of some of its records with
the metadata the trainer needs (`mexd.data.stream` builds them and streams
their batches).
"""

import concurrent.futures
import dataclasses
import threading
from typing import Any, Dict, Optional, Tuple

import numpy as np

from mexd import errors
from mexd.data import base
from mexd.data import image_ops
from mexd.data import tfds_loader


class Records:
  """Random access to one split of a prepared tfds set, images not decoded.

  `records[i]` is {"image": PNG/JPEG bytes, "label": int, ...}. The reader
  is dropped when pickled and opened again when unpickled, so grain can send
  a `Records` to its worker processes. Opening it there, in the thread that
  unpickles, before any read thread starts, matters: tensorflow_datasets'
  lazy imports deadlock when several threads import it at once.
  """

  def __init__(self, name: str, data_dir: Optional[str], split: str):
    self.name, self.data_dir, self.split = name, data_dir, split
    self._lock = threading.Lock()
    self._source = None
    self._length = len(self.source())

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items()
            if k not in ("_source", "_lock")}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()
    self._source = None
    self.source()

  def source(self):
    """The tfds data source (opened once per process, thread-safe)."""
    with self._lock:
      if self._source is None:
        tfds = tfds_loader.import_tfds()
        builder = open_builder(self.name, self.data_dir)
        self._source = builder.as_data_source(
            self.split, decoders={"image": tfds.decode.SkipDecoding()})
    return self._source

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, i: int) -> Dict[str, Any]:
    return self.source()[int(i)]

  def __repr__(self):
    return f"Records(tfds:{self.name}, split={self.split!r})"


def open_builder(name: str, data_dir: Optional[str]):
  """The tfds builder of a prepared array_record set, or one clear error
  naming the `tfds build` command (missing, not prepared, not array_record).
  """
  builder = tfds_loader.prepared_builder(
      name, data_dir, "; the streaming pipeline reads its array_record files")
  how = tfds_loader.how_to_build(name, data_dir)
  fmt = str(getattr(builder.info.file_format, "value",
                    builder.info.file_format))
  if fmt != "array_record":
    raise base.DataError(
        f"tfds:{name} in {builder.data_dir} is in the {fmt} format; the "
        f"streaming pipeline needs random access (array_record). {how}")
  return builder


@dataclasses.dataclass(frozen=True, eq=False)
class StreamSplit:
  """A split read record by record: the streaming twin of `base.Dataset`.

  Attributes:
    records: the split's records (`Records` or any len()/[i] sequence of
      {"image": bytes, "label": int} dicts).
    indices: [N] int64 record ids that make up this split (e.g. the
      training split is the official train split minus the validation ids).
    num_classes: number of classes.
    mean, std: per-channel statistics in [0, 1] units (normalisation).
    image_shape: (size, size, channels) of the images the pipeline outputs.
    crop_fraction: the evaluation center crop (`image_ops.center_crop`).
    memo: filled by the evaluation pass with the labels it read, so that
      `labels` does not read the records a second time.
  """

  records: Any
  indices: np.ndarray
  num_classes: int
  mean: Tuple[float, ...]
  std: Tuple[float, ...]
  image_shape: Tuple[int, int, int]
  crop_fraction: float = 0.875
  memo: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return int(len(self.indices))

  @property
  def labels(self) -> np.ndarray:
    """[N] int32 labels (read from the records once, in threads)."""
    if "labels" not in self.memo:
      with concurrent.futures.ThreadPoolExecutor(16) as pool:
        labels = list(pool.map(lambda i: self.records[i]["label"],
                               self.indices.tolist(), chunksize=64))
      self.memo["labels"] = np.asarray(labels, np.int32)
    return self.memo["labels"]

  def eval_image(self, position: int) -> Tuple[np.ndarray, int]:
    """(center-cropped [S, S, C] uint8 image, label) of row `position`."""
    ex = self.records[int(self.indices[position])]
    size, _, channels = self.image_shape
    return (image_ops.center_crop(ex["image"], size, channels=channels,
                                  crop_fraction=self.crop_fraction),
            int(ex["label"]))

  def take(self, idx: np.ndarray) -> "StreamSplit":
    """The subset at positions `idx` (a fresh label memo)."""
    return dataclasses.replace(self, indices=self.indices[idx], memo={})


def image_size(cfg) -> int:
  """config.data.image_size, the streamed images' side (default 224)."""
  size = cfg.get("image_size")
  if size is None:
    size = tfds_loader.DEFAULT_IMAGE_SIZE
  if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
    raise errors.InputError(
        f"config.data.image_size must be a positive integer, got {size!r}")
  return size


def estimate_stats(split: StreamSplit, n: int, seed: int = 0
                   ) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
  """(mean, std) per channel of the center crops of n seeded images."""
  n = min(n, len(split))
  rows = np.sort(np.random.default_rng([seed, 7]).choice(len(split), n,
                                                         replace=False))
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    images = list(pool.map(lambda r: split.eval_image(r)[0], rows.tolist()))
  return base.channel_stats(np.stack(images))


def decoded_gib(cfg) -> Optional[float]:
  """GiB the in-memory path would need for tfds set cfg.name's train split
  (None when the set is not prepared or not a tfds set)."""
  if not str(cfg.name).startswith("tfds:"):
    return None
  name = cfg.name[len("tfds:"):]
  tfds = tfds_loader.import_tfds()
  try:
    builder = tfds.builder(name, data_dir=cfg.get("data_dir"))
  except Exception:  # pylint: disable=broad-except
    return None
  if not builder.is_prepared() or "train" not in builder.info.splits:
    return None
  shape = list(builder.info.features["image"].shape)
  if name in tfds_loader.VARIABLE_SIZE or None in shape:
    side = cfg.get("image_size") or tfds_loader.DEFAULT_IMAGE_SIZE
    shape = [side, side, shape[-1] or 3]
  n = builder.info.splits["train"].num_examples
  return n * int(np.prod(shape)) / 2**30
