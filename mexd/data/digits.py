"""scikit-learn's bundled 8x8 handwritten digits: 1797 real images, no download.

sklearn has no official train/test split, so a fixed stratified 80/20 split
(seed 0) serves as the official one; the caller then carves validation from
train like for every other data set.
"""

import numpy as np

from mexd.data import base


def load(data_dir=None):
  """Returns {"train": Dataset [1437, 8, 8, 1], "test": Dataset [360, ...]}.

  Pixel values 0..16 are scaled to uint8 0..255.
  """
  del data_dir  # Bundled with scikit-learn.
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  train_idx, test_idx = base.stratified_split(labels, (0.8, 0.2), seed=0)
  return base.official_splits({
      "train": (images[train_idx], labels[train_idx]),
      "test": (images[test_idx], labels[test_idx])}, 10)
