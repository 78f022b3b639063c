"""In-memory image data sets and the seeded splits carved from them.

Every loader returns the official splits as `Dataset`s of uint8 images
`[N, H, W, C]` and int32 labels `[N]`; `make_splits` then carves a held-out
validation split from train with a seeded permutation and, for the
data-limited setting of Phuong & Lampert, keeps `labeled_per_class` labeled
images per class and turns the rest into an unlabeled pool (label -1).
"""

import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from mexd import errors

UNLABELED = -1


class DataError(errors.InputError):
  """A data set's files are unusable (corrupt, truncated, wrong format).

  The message names the file and says how to get a good copy.
  """


class DataNotFoundError(DataError, FileNotFoundError):
  """A data set's files are missing: the message says where they were looked
  for and how to install or download them (and `data.data_dir`)."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Images and labels held in host memory.

  Attributes:
    images: [N, H, W, C] uint8.
    labels: [N] int32 in [0, num_classes), or -1 for unlabeled images.
    num_classes: number of classes.
    mean: per-channel mean of the images in [0, 1] units (for normalising).
    std: per-channel standard deviation in [0, 1] units.
  """

  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  mean: Tuple[float, ...]
  std: Tuple[float, ...]

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.dtype != np.uint8:
      raise errors.InputError("images must be uint8 [N, H, W, C], got "
                              f"{self.images.dtype} {self.images.shape}")
    if self.labels.shape != (self.images.shape[0],):
      raise errors.InputError(f"labels {self.labels.shape} do not match "
                              f"{self.images.shape[0]} images")
    bad = (self.labels >= self.num_classes) | (self.labels < UNLABELED)
    if bad.any():
      raise errors.InputError(
          f"{int(bad.sum())} labels outside [0, {self.num_classes}) "
          f"(and -1 for unlabeled), e.g. {self.labels[bad][:3].tolist()}")

  def __len__(self) -> int:
    return int(self.images.shape[0])

  @property
  def image_shape(self) -> Tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  def take(self, idx: np.ndarray, labels: Optional[np.ndarray] = None
           ) -> "Dataset":
    """The subset at indices `idx` (optionally with replaced labels)."""
    return dataclasses.replace(
        self, images=self.images[idx],
        labels=self.labels[idx] if labels is None else labels)


def channel_stats(images: np.ndarray, chunk_pixels: int = 1 << 22
                  ) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
  """(mean, std) per channel of uint8 images in [0, 1] units.

  Population std (at least 1e-3), computed exactly from 256-bin value counts
  over chunks of pixels, in bounded memory: about 2 s for CIFAR train and
  0.3 s for Fashion-MNIST (a float64 cast of the whole array took 10-14 s
  and 2.5 GB for CIFAR).

  Args:
    images: [N, H, W, C] uint8.
    chunk_pixels: pixels (rows of the [N * H * W, C] view) per chunk.

  Returns:
    (mean, std): tuples of C floats.
  """
  c = images.shape[-1]
  flat = images.reshape(-1, c)  # [N * H * W, C]
  counts = np.zeros((c, 256), np.int64)
  for start in range(0, len(flat), chunk_pixels):
    part = flat[start:start + chunk_pixels]
    for k in range(c):
      counts[k] += np.bincount(part[:, k], minlength=256)
  values = np.arange(256) / 255.0
  n = counts.sum(1)
  mean = counts @ values / n
  var = np.maximum(counts @ values**2 / n - mean**2, 0.0)
  return (tuple(mean.tolist()),
          tuple(np.maximum(np.sqrt(var), 1e-3).tolist()))


def official_splits(arrays: Dict[str, Tuple[np.ndarray, np.ndarray]],
                    num_classes: int) -> Dict[str, Dataset]:
  """Datasets of {split: (images, labels)}, normalised with train's stats.

  Every split shares the per-channel mean/std of the "train" images, so
  validation and test are normalised exactly like training.
  """
  mean, std = channel_stats(arrays["train"][0])
  return {split: Dataset(x, y, num_classes, mean, std)
          for split, (x, y) in arrays.items()}


def make_splits(train: Dataset, test: Dataset, *, val_size: int,
                seed: int = 0, labeled_per_class: Optional[int] = None,
                unlabeled_pool: bool = False,
                ) -> Tuple[Dict[str, Dataset], Dict[str, np.ndarray]]:
  """Carves validation (and the data-limited subsets) from the train split.

  A permutation seeded with `seed` orders the official train split; its last
  `val_size` images become the validation split. With `labeled_per_class=n`,
  the first n remaining images of every class (in permutation order) stay
  labeled; the others form the "unlabeled" split (labels -1) if
  `unlabeled_pool`, else they are dropped.

  Returns:
    (splits, indices): splits "train", "val", "test" and maybe "unlabeled";
    indices maps each carved split to its indices into the official train
    split (saved with the run so it can be reproduced and audited).
  """
  n = len(train)
  if not 0 <= val_size < n:
    raise errors.InputError(
        f"val_size must be in [0, {n}) for a train split of "
        f"{n} images, got {val_size}")
  perm = np.random.default_rng(seed).permutation(n)
  rest, val_idx = perm[:n - val_size], perm[n - val_size:]
  indices = {"val": np.sort(val_idx)}
  if labeled_per_class is None:
    indices["train"] = np.sort(rest)
  else:
    if labeled_per_class <= 0:
      raise errors.InputError(
          f"labeled_per_class must be positive, got {labeled_per_class}")
    labels = train.labels[rest]
    keep = np.zeros(len(rest), bool)
    for c in range(train.num_classes):
      keep[np.flatnonzero(labels == c)[:labeled_per_class]] = True
    indices["train"] = np.sort(rest[keep])
    if unlabeled_pool:
      indices["unlabeled"] = np.sort(rest[~keep])
  splits = {name: train.take(idx) for name, idx in indices.items()}
  if "unlabeled" in splits:
    u = splits["unlabeled"]
    splits["unlabeled"] = u.take(np.arange(len(u)),
                                 np.full(len(u), UNLABELED, np.int32))
  splits["test"] = test
  return splits, indices


def stratified_split(labels: np.ndarray, fractions: Sequence[float],
                     seed: int) -> Sequence[np.ndarray]:
  """Splits indices of `labels` into parts of the given fractions per class."""
  rng = np.random.default_rng(seed)
  parts = [[] for _ in fractions]
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    bounds = np.round(np.cumsum(fractions) * len(idx)).astype(int)
    for i, chunk in enumerate(np.split(idx, bounds[:-1])):
      parts[i].extend(chunk.tolist())
  return [np.sort(np.asarray(p, np.int64)) for p in parts]
