"""Tiny data sets written in the real on-disk formats, for drills and tests.

No network: `write_cifar` writes the official CIFAR python archive layout
(`cifar-100-python.tar.gz`, ...) and `write_tfds` prepares a real tfds
builder's array_record files from a few generated examples, so the loaders,
the configs and the trainer run exactly as on the real data. The images are
learnable (each class has its own colour pattern plus noise), so a short run
beats chance and a broken pipeline shows up as chance accuracy.

  from mexd.data import mock
  mock.write_cifar("/tmp/data", "cifar100", train_per_class=5)
  # then --config.data.data_dir=/tmp/data
"""

import io
import os
import pickle
import tarfile
import tempfile
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from mexd.data import cifar


def class_images(rng: np.random.Generator, labels: np.ndarray,
                 shape: Tuple[int, int, int], num_classes: int,
                 noise: float = 40.0) -> np.ndarray:
  """uint8 [N, H, W, C] images, a class-specific pattern plus noise.

  Class k is a smooth gradient whose direction and colour depend on k, so
  classes are separable by a small network but not by a single pixel.
  """
  h, w, c = shape
  yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w),
                       indexing="ij")
  angle = 2 * np.pi * labels / num_classes
  phase = (np.cos(angle)[:, None, None] * yy
           + np.sin(angle)[:, None, None] * xx)  # [N, H, W]
  colour = (np.arange(c)[None, :] + labels[:, None] * 0.37) % 1.0  # [N, C]
  base = 128 + 90 * phase[..., None] * (0.5 + colour[:, None, None, :])
  images = base + rng.normal(0.0, noise, (len(labels), h, w, c))
  return np.clip(images, 0, 255).astype(np.uint8)


def _balanced_labels(rng, num_classes: int, per_class: int) -> np.ndarray:
  return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def write_cifar(root: str, which: str = "cifar100", *,
                train_per_class: int = 5, test_per_class: int = 2,
                seed: int = 0) -> Dict[str, np.ndarray]:
  """Writes a tiny CIFAR-10/100 python archive under `root`.

  The files are those of the official archive (CIFAR-10: data_batch_1..5,
  test_batch, batches.meta; CIFAR-100: train, test, meta), protocol-2
  pickles with bytes keys and [N, 3072] uint8 rows (1024 R, 1024 G, 1024 B
  values, row-major), tarred as `cifar-10-python.tar.gz` /
  `cifar-100-python.tar.gz`.

  Returns:
    {"train_images", "train_labels", "test_images", "test_labels"} as
    written ([N, 32, 32, 3] uint8, [N] int).
  """
  spec = {"cifar10": cifar.CIFAR10, "cifar100": cifar.CIFAR100}[which]
  rng = np.random.default_rng(seed)
  out = {}
  for split, per_class in (("train", train_per_class),
                           ("test", test_per_class)):
    labels = _balanced_labels(rng, spec.num_classes, per_class)
    out[f"{split}_labels"] = labels
    out[f"{split}_images"] = class_images(rng, labels, (32, 32, 3),
                                          spec.num_classes)

  def batch(images, labels, name):
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    d = {b"batch_label": name.encode(), b"data": rows,
         spec.label_key.encode(): [int(l) for l in labels],
         b"filenames": [f"img_{i}.png".encode() for i in range(len(rows))]}
    if which == "cifar100":
      d[b"coarse_labels"] = [int(l) // 5 for l in labels]
    return pickle.dumps(d, protocol=2)

  files = {}
  if which == "cifar10":
    parts = np.array_split(np.arange(len(out["train_labels"])), 5)
    for i, idx in enumerate(parts, 1):
      files[f"data_batch_{i}"] = batch(out["train_images"][idx],
                                       out["train_labels"][idx],
                                       f"training batch {i} of 5")
    files["test_batch"] = batch(out["test_images"], out["test_labels"],
                                "testing batch 1 of 1")
    files["batches.meta"] = pickle.dumps(
        {b"label_names": [f"class{i}".encode() for i in range(10)]},
        protocol=2)
  else:
    files["train"] = batch(out["train_images"], out["train_labels"], "train")
    files["test"] = batch(out["test_images"], out["test_labels"], "test")
    files["meta"] = pickle.dumps(
        {b"fine_label_names": [f"fine{i}".encode() for i in range(100)]},
        protocol=2)
  os.makedirs(root, exist_ok=True)
  with tarfile.open(os.path.join(root, spec.archive), "w:gz") as tar:
    for name, payload in files.items():
      info = tarfile.TarInfo(f"{spec.folder}/{name}")
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
  return out


def _png(image: np.ndarray) -> bytes:
  return encode(image, "png")


def encode(image: np.ndarray, fmt: str = "png", quality: int = 90) -> bytes:
  """[H, W, C] uint8 -> PNG or JPEG bytes (the formats tfds stores)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  if fmt == "jpeg":
    pil.save(buf, format="JPEG", quality=quality)
  else:
    pil.save(buf, format="PNG")
  return buf.getvalue()


def variable_size_images(rng: np.random.Generator, labels: np.ndarray,
                         num_classes: int, sizes: Tuple[int, int],
                         channels: int = 3, noise: float = 40.0):
  """One class-pattern image per label, each of its own size.

  Heights and widths are drawn uniformly from `sizes` = (low, high), so a
  pipeline that assumes one shape fails on them.

  Returns:
    a list of [H_i, W_i, C] uint8 arrays.
  """
  out = []
  for label in labels:
    h, w = rng.integers(sizes[0], sizes[1] + 1, 2)
    out.append(class_images(rng, np.asarray([label]),
                            (int(h), int(w), channels), num_classes,
                            noise=noise)[0])
  return out


def _extra_features(name: str, i: int, label: int, shape) -> Dict:
  """Features beyond image/label that a builder's FeaturesDict requires."""
  if name == "imagenet2012":
    return {"file_name": f"n{label:08d}_{i}.JPEG"}
  if name == "svhn_cropped":
    return {"id": f"id_{i}"}
  if name in ("cifar10", "cifar100"):
    return {"id": f"id_{i}",
            **({"coarse_label": label // 5} if name == "cifar100" else {})}
  if name == "stanford_dogs":
    return {"image/filename": f"dog_{i}.jpg", "objects": {"bbox": []}}
  if name == "caltech_birds2011":
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    return {"image/filename": f"bird_{i}.jpg", "label_name": f"bird{label}",
            "bbox": tfds.features.BBox(0.1, 0.1, 0.9, 0.9),
            "segmentation_mask": _png(np.zeros(shape[:2] + (1,), np.uint8))}
  return {}


def write_tfds(data_dir: str, name: str, *, per_class: Dict[str, int],
               num_classes: Optional[int] = None,
               shape: Tuple[int, int, int] = (32, 32, 3),
               classes: Optional[Sequence[int]] = None,
               sizes: Optional[Tuple[int, int]] = None,
               noise: float = 40.0,
               seed: int = 0) -> Dict[str, np.ndarray]:
  """Prepares tfds set `name` (e.g. "imagenet_resized/64x64") in `data_dir`.

  The real builder class is used with its example generator swapped for
  generated ones, written in the array_record format, so
  `tfds.builder(name, data_dir=data_dir)` reads them as the real set.
  Needs tensorflow_datasets (not TensorFlow).

  Args:
    data_dir: the tfds data folder.
    name: tfds name, optionally "name/config".
    per_class: {split name: images per class}, e.g. {"train": 3, "test": 1}.
    num_classes: the set's number of classes (read from the builder if
      None).
    shape: image shape [H, W, C].
    classes: which labels to generate (default: all).
    sizes: (low, high): give every image its own height and width drawn
      from this range (variable-size sets such as imagenet2012); None: all
      images are `shape`.
    noise: standard deviation of the pixel noise (`class_images`); 30 at
      375 x 500 gives JPEGs of ImageNet's average size, ~110 KB.
    seed: generator seed.

  Returns:
    {"<split>_labels": [N] int} as written.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  set_name, _, config = name.partition("/")
  parent = tfds.builder_cls(set_name)  # Before skip_registration hides it.
  rng = np.random.default_rng(seed)
  out = {}
  examples = {}
  for split, n in per_class.items():
    k = num_classes
    if k is None:
      k = parent(data_dir=tempfile.gettempdir(), config=config or None
                 ).info.features["label"].num_classes
    labels = np.repeat(np.asarray(classes if classes is not None
                                  else np.arange(k)), n)
    labels = rng.permutation(labels)
    out[f"{split}_labels"] = labels
    if sizes is None:
      examples[split] = (labels, class_images(rng, labels, shape, k,
                                              noise=noise))
    else:
      examples[split] = (labels, variable_size_images(
          rng, labels, k, sizes, shape[-1], noise=noise))

  with tfds.core.registered.skip_registration():

    class Mock(parent):  # pylint: disable=missing-class-docstring
      name = set_name  # Named like the real set: writes to its folder.
      url_infos = {}  # Nothing to download (and no checksum file lookup).

      def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in examples}

      def _generate_examples(self, split):  # pylint: disable=arguments-differ
        labels, images = examples[split]
        fmt = getattr(self.info.features["image"], "encoding_format", None)
        for i, (label, image) in enumerate(zip(labels, images)):
          yield i, {"image": encode(image, fmt or "png"),
                    "label": int(label),
                    **_extra_features(set_name, i, int(label), shape)}

    Mock(data_dir=data_dir, config=config or None,
         file_format="array_record").download_and_prepare()
  return out
