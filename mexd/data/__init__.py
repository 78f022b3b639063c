"""Data sets: `load_splits(config.data)` -> seeded train/val/test(/unlabeled).

Loaders are registered by name; each returns the official "train" and "test"
splits as in-memory `base.Dataset`s. Missing data raises one clear error,
`DataNotFoundError`, that says where the data is expected and how to get it;
unusable files raise `DataError` (both are `mexd.errors.InputError`s, so
ValueErrors). docs/data.md lists every name, where its files go and the split
settings.
"""

import difflib
from typing import Callable, Dict

from mexd import errors
from mexd.data import base
from mexd.data import cifar
from mexd.data import digits
from mexd.data import idx
from mexd.data import stream
from mexd.data import tfds_loader

Dataset = base.Dataset
StreamSplit = stream.StreamSplit
DataError = base.DataError
DataNotFoundError = base.DataNotFoundError

# name -> loader(data_dir) -> {"train": Dataset, "test": Dataset}
_LOADERS: Dict[str, Callable[..., Dict[str, Dataset]]] = {
    "digits": digits.load,
    "fashion_mnist": idx.load_fashion_mnist,
    "mnist": idx.load_mnist,
    "cifar10": cifar.load_cifar10,
    "cifar100": cifar.load_cifar100,
    **tfds_loader.loaders(),  # "tfds:cifar100", "tfds:svhn_cropped", ...
}


# Data sets that ship with a package and read no files (no data_dir).
BUNDLED = ("digits",)


def register(name: str, loader: Callable[..., Dict[str, Dataset]]):
  """Adds a loader under `name`."""
  if name in _LOADERS:
    raise ValueError(f"data set {name!r} is already registered")
  _LOADERS[name] = loader


def dataset_names():
  """Sorted names of every registered data set."""
  return sorted(_LOADERS)


def load_official(name: str, data_dir=None, *, image_size=None
                  ) -> Dict[str, Dataset]:
  """The official splits of data set `name` ({"train", "test"}).

  Args:
    name: a registered name (`dataset_names()`).
    data_dir: where its files are; None: the loader's default.
    image_size: side to resize and center-crop images to; only the tfds sets
      take it (None: 224 for the variable-size sets, else native size).
  """
  if name not in _LOADERS:
    raise errors.InputError(_unknown_name_message(name))
  if data_dir is not None and name in BUNDLED:
    raise errors.InputError(
        f"config.data.data_dir={data_dir!r} is ignored by {name!r}, which "
        "ships inside scikit-learn; leave data_dir unset (or pick a data set "
        "read from files, e.g. fashion_mnist)")
  if image_size is None:
    return _LOADERS[name](data_dir)
  if not name.startswith("tfds:"):
    raise errors.InputError(
        f"config.data.image_size={image_size} applies to the tfds:* sets "
        f"only; {name!r} has one native size (leave image_size unset).")
  if not isinstance(image_size, int) or image_size <= 0:
    raise errors.InputError(
        f"config.data.image_size must be a positive integer, "
        f"got {image_size!r}")
  return _LOADERS[name](data_dir, image_size=image_size)


def _unknown_name_message(name: str) -> str:
  """Says that `name` is unknown, lists the valid names and a near match."""
  close = difflib.get_close_matches(name, dataset_names(), n=1, cutoff=0.6)
  hint = f" (did you mean {close[0]!r}?)" if close else ""
  return (f"unknown data set {name!r}{hint}; valid names: "
          f"{', '.join(dataset_names())}")


def streams(cfg) -> bool:
  """Whether `config.data` is read by the streaming pipeline.

  `cfg.stream` True / False decides; unset (None), a tfds:* set streams
  when decoding its train split into memory would take more than
  `cfg.max_gib` (default 32) GiB, e.g. tfds:imagenet2012 at 224 px.
  """
  choice = cfg.get("stream")
  if choice is not None:
    if not isinstance(choice, bool):
      raise errors.InputError(
          f"config.data.stream must be True, False or unset (None: decide "
          f"by size), got {choice!r}")
    return choice
  gib = stream.decoded_gib(cfg) if str(cfg.name).startswith("tfds:") else None
  return gib is not None and gib > stream.option(cfg, "max_gib")


def load_splits(cfg):
  """Loads `cfg.name` and carves the seeded splits (see `base.make_splits`).

  Args:
    cfg: the `config.data` ConfigDict: name, data_dir, image_size, val_size,
      split_seed, labeled_per_class, unlabeled_pool; stream and the
      streaming options (`mexd.data.stream`).

  Returns:
    (splits, indices) as in `base.make_splits`; with `streams(cfg)` the
    splits are `stream.StreamSplit`s read record by record.
  """
  if streams(cfg):
    return stream.load_splits(cfg)
  official = load_official(cfg.name, cfg.get("data_dir"),
                           image_size=cfg.get("image_size"))
  return base.make_splits(
      official["train"], official["test"], val_size=cfg.val_size,
      seed=cfg.get("split_seed", 0),
      labeled_per_class=cfg.get("labeled_per_class"),
      unlabeled_pool=cfg.get("unlabeled_pool", False))
