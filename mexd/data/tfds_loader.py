"""Data sets prepared by tensorflow_datasets, read into memory without TF.

Registered as "tfds:<name>" for every name in `NAMES`. The data must already
be prepared in the array_record format (random access, read with
`tfds.data_source`; no TensorFlow needed to read):

  pip install 'mexd[tfds]'   # tensorflow-datasets (+ TF, which `tfds build`
                             # needs to prepare most sets)
  tfds build cifar100 --file_format=array_record --data_dir=DIR

then `data.data_dir=DIR` (None: tfds' default, `$TFDS_DATA_DIR` or
`~/tensorflow_datasets`). ImageNet needs its archives in
`DIR/downloads/manual/` first (see the tfds catalog page).

Every split is decoded into one uint8 array in host memory, which suits the
small sets (CIFAR, SVHN, MNIST, imagenet_resized, birds and dogs at a modest
`image_size`). Variable-size images (birds, dogs, imagenet2012) are resized
(shorter side to `image_size`, default 224) and center-cropped to
`image_size` x `image_size`. Full ImageNet at 224 would need ~190 GB, so
`load` refuses sets larger than `max_gib` before decoding anything.
"""

import functools
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from mexd.data import base

# tfds names served here (registered as "tfds:<name>").
NAMES = ("cifar10", "cifar100", "svhn_cropped", "mnist", "fashion_mnist",
         "caltech_birds2011", "stanford_dogs", "imagenet2012",
         "imagenet_resized/32x32", "imagenet_resized/64x64")
# Sets whose images vary in size: resized and center-cropped on load.
VARIABLE_SIZE = ("caltech_birds2011", "stanford_dogs", "imagenet2012")
DEFAULT_IMAGE_SIZE = 224
_INSTALL = ("Install it with `pip install 'mexd[tfds]'` (or `pip install "
            "tensorflow-datasets`).")


def how_to_build(name: str, data_dir: Optional[str]) -> str:
  where = data_dir or "DIR"
  manual = (f" ImageNet first needs ILSVRC2012_img_train.tar and "
            f"ILSVRC2012_img_val.tar in {where}/downloads/manual/."
            if name == "imagenet2012" else "")
  return (f"Prepare it with `tfds build {name} "
          f"--file_format=array_record --data_dir={where}` (needs "
          f"TensorFlow: pip install 'mexd[tfds]') and set data.data_dir "
          f"(data_dir=) to that folder.{manual}")


def import_tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise base.DataError(
        f"The tfds:* data sets need tensorflow_datasets, which is not "
        f"importable ({e}). {_INSTALL}") from e
  return tfds


def prepared_builder(name: str, data_dir: Optional[str], note: str = ""):
  """The tfds builder of set `name`, prepared in `data_dir`.

  Raises:
    DataError: tfds has no such set (or is not installed).
    DataNotFoundError: the set is not prepared there; the message names the
      `tfds build` command (after `note`, e.g. what reads the files).
  """
  tfds = import_tfds()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise base.DataError(
        f"tensorflow_datasets {tfds.__version__} has no data set {name!r} "
        f"({str(e).splitlines()[0]}).") from e
  if not builder.is_prepared():
    raise base.DataNotFoundError(
        f"tfds:{name} is not prepared in {builder.data_dir} (data_dir="
        f"{data_dir!r}){note}. {how_to_build(name, data_dir)}")
  return builder


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Scales the shorter side to `size`, then crops the central square.

  Args:
    image: [H, W, C] uint8.
    size: output side.

  Returns:
    [size, size, C] uint8 (bilinear, antialiased when shrinking).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w, c = image.shape
  if (h, w) != (size, size):
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    pil = Image.fromarray(image[..., 0] if c == 1 else image)
    image = np.asarray(pil.resize((nw, nh), Image.BILINEAR))
    image = image.reshape(nh, nw, c)
    top, left = (nh - size) // 2, (nw - size) // 2
    image = image[top:top + size, left:left + size]
  return image


def to_numpy(source: Sequence[Dict[str, Any]], *, where: str,
             image_size: Optional[int] = None, max_gib: float = 32.0,
             chunk: int = 512, image_key: str = "image",
             label_key: str = "label") -> Tuple[np.ndarray, np.ndarray]:
  """Decodes a random-access source of examples into two arrays.

  Args:
    source: len() and [i] (and, if present, __getitems__) over dicts holding
      `image_key` ([H, W, C] uint8) and `label_key` (int).
    where: what the source is, for messages.
    image_size: resize/center-crop every image to this side; None keeps the
      images as they are (they must then all have one shape).
    max_gib: refuse, before decoding, outputs larger than this.
    chunk: examples fetched per call.
    image_key: the image feature's name.
    label_key: the label feature's name.

  Returns:
    (images [N, H, W, C] uint8, labels [N] int32).
  """
  n = len(source)
  if n == 0:
    raise base.DataError(f"{where} is empty")
  getitems = getattr(source, "__getitems__", None)
  images = labels = None
  for start in range(0, n, chunk):
    ids = list(range(start, min(n, start + chunk)))
    examples = getitems(ids) if getitems else [source[i] for i in ids]
    for i, ex in zip(ids, examples):
      image = np.asarray(ex[image_key])
      if image.ndim == 2:
        image = image[..., None]
      if image_size:
        image = resize_center_crop(image, image_size)
      if images is None:
        gib = n * image.nbytes / 2**30
        if gib > max_gib:
          raise base.DataError(
              f"{where}: {n} images of {list(image.shape)} need {gib:.1f} "
              f"GiB in memory, over max_gib={max_gib}. This in-memory loader "
              f"suits small sets: stream it (data.stream=True, see "
              f"docs/data.md), use a smaller image_size, a resized "
              f"variant (tfds:imagenet_resized/64x64) or raise max_gib.")
        images = np.empty((n,) + image.shape, np.uint8)
        labels = np.empty((n,), np.int32)
      if image.shape != images.shape[1:]:
        raise base.DataError(
            f"{where}: example {i} has an image of {list(image.shape)}, "
            f"example 0 one of {list(images.shape[1:])}; pass image_size to "
            f"resize and center-crop them to one size.")
      images[i] = image
      labels[i] = ex[label_key]
  return images, labels


def load(name: str, data_dir: Optional[str] = None, *,
         image_size: Optional[int] = None, max_gib: float = 32.0
         ) -> Dict[str, base.Dataset]:
  """The official train and test (or validation) splits of a tfds data set.

  Args:
    name: tfds name, e.g. "cifar100" or "imagenet_resized/32x32".
    data_dir: tfds data folder; None uses tfds' default.
    image_size: output side for variable-size sets (default 224 for those in
      `VARIABLE_SIZE`, None, i.e. native size, for the others).
    max_gib: refuse a split larger than this in memory.

  Returns:
    {"train": Dataset, "test": Dataset}; "test" is tfds' "validation" split
    where the set has no labeled "test" split (imagenet2012,
    imagenet_resized).
  """
  data_dir = None if data_dir is None else str(data_dir)
  if image_size is None and name in VARIABLE_SIZE:
    image_size = DEFAULT_IMAGE_SIZE
  builder = prepared_builder(name, data_dir)
  try:
    sources = builder.as_data_source()
  except NotImplementedError as e:  # tfrecord: no random access.
    raise base.DataError(
        f"tfds:{name} in {builder.data_dir} is in the "
        f"{builder.info.file_format} format; reading it without TensorFlow "
        f"needs array_record. {how_to_build(name, data_dir)}") from e
  test_split = "test" if "test" in sources else "validation"
  num_classes = builder.info.features["label"].num_classes
  arrays = {}
  for split, tfds_split in (("train", "train"), ("test", test_split)):
    if tfds_split not in sources:
      raise base.DataError(f"tfds:{name} in {builder.data_dir} has no "
                           f"{tfds_split!r} split (has {sorted(sources)}).")
    arrays[split] = to_numpy(
        sources[tfds_split], where=f"tfds:{name} {tfds_split} split",
        image_size=image_size, max_gib=max_gib)
  return base.official_splits(arrays, num_classes)


def loaders() -> Dict[str, Any]:
  """{"tfds:<name>": loader(data_dir)} for every name in `NAMES`."""
  return {f"tfds:{n}": functools.partial(load, n) for n in NAMES}
