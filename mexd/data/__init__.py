"""Data sets: `load_splits(config.data)` -> seeded train/val/test(/unlabeled).

Loaders are registered by name; each returns the official "train" and "test"
splits as in-memory `base.Dataset`s. Missing data raises one clear error that
says where the data is expected and how to get it.
"""

from typing import Callable, Dict

from mexd.data import base
from mexd.data import digits

Dataset = base.Dataset

# name -> loader(data_dir) -> {"train": Dataset, "test": Dataset}
_LOADERS: Dict[str, Callable[..., Dict[str, Dataset]]] = {
    "digits": digits.load,
}


def register(name: str, loader: Callable[..., Dict[str, Dataset]]):
  """Adds a loader under `name`."""
  if name in _LOADERS:
    raise ValueError(f"data set {name!r} is already registered")
  _LOADERS[name] = loader


def dataset_names():
  """Sorted names of every registered data set."""
  return sorted(_LOADERS)


def load_official(name: str, data_dir=None) -> Dict[str, Dataset]:
  """The official splits of data set `name` ({"train", "test"})."""
  if name not in _LOADERS:
    raise ValueError(f"unknown data set {name!r}; valid names: "
                     f"{', '.join(dataset_names())}")
  return _LOADERS[name](data_dir)


def load_splits(cfg):
  """Loads `cfg.name` and carves the seeded splits (see `base.make_splits`).

  Args:
    cfg: the `config.data` ConfigDict: name, data_dir, val_size, split_seed,
      labeled_per_class, unlabeled_pool.

  Returns:
    (splits, indices) as in `base.make_splits`.
  """
  official = load_official(cfg.name, cfg.get("data_dir"))
  return base.make_splits(
      official["train"], official["test"], val_size=cfg.val_size,
      seed=cfg.get("split_seed", 0),
      labeled_per_class=cfg.get("labeled_per_class"),
      unlabeled_pool=cfg.get("unlabeled_pool", False))
