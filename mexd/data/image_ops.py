"""Host-side image ops of the streaming pipeline: decode, crop, resize.

NumPy and Pillow only (no JAX), so grain's worker processes stay light.
Both crops are one `PIL.Image.resize(..., box=...)` of the encoded image,
after a JPEG "draft" that lets the decoder skip detail the output does not
need (DCT scaling by 1/2, 1/4 or 1/8, never below the crop's output
resolution): a 500x375 JPEG cropped to a 100-pixel box is decoded at 1/4
scale.

  image = random_resized_crop(jpeg_bytes, rng, 224)  # training
  image = center_crop(jpeg_bytes, 224)                # evaluation
"""

import io
import math
from typing import Tuple

import numpy as np

Box = Tuple[float, float, float, float]  # left, top, right, bottom


def _open(data: bytes, channels: int):
  """A lazily decoded Pillow image of PNG / JPEG bytes (header read)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return Image.open(io.BytesIO(data))


def _mode(channels: int) -> str:
  return "L" if channels == 1 else "RGB"


def _crop_resize(image, box: Box, size: int, channels: int) -> np.ndarray:
  """Crops `box` (source pixels) and resizes it to size x size, bilinear.

  A JPEG is first decoded at the smallest DCT scale that keeps the box at
  least `size` pixels on each side.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  w0, h0 = image.size
  left, top, right, bottom = box
  if image.format == "JPEG":
    scale = min((right - left) / size, (bottom - top) / size)
    if scale >= 2:
      image.draft(_mode(channels), (math.ceil(w0 / scale),
                                    math.ceil(h0 / scale)))
  w1, h1 = image.size  # The decoded size (after a draft).
  sx, sy = w1 / w0, h1 / h0
  mode = _mode(channels)
  if image.mode != mode:
    image = image.convert(mode)
  out = image.resize((size, size), Image.BILINEAR,
                     box=(left * sx, top * sy, right * sx, bottom * sy))
  array = np.asarray(out, np.uint8)
  return array.reshape(size, size, channels)


def crop_box(height: int, width: int, rng: np.random.Generator, *,
             scale: Tuple[float, float] = (0.08, 1.0),
             ratio: Tuple[float, float] = (3 / 4, 4 / 3),
             attempts: int = 10) -> Tuple[int, int, int, int]:
  """The Inception-style random crop (top, left, h, w) of an image.

  Up to `attempts` times, draws an area fraction uniformly from `scale` and
  an aspect ratio w/h log-uniformly from `ratio`, and takes the first crop
  that fits, at a uniform position. If none fits, the central crop of the
  whole image with its aspect ratio clamped to `ratio`.
  """
  area = height * width
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(attempts):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(data: bytes, rng: np.random.Generator, size: int, *,
                        channels: int = 3,
                        scale: Tuple[float, float] = (0.08, 1.0),
                        ratio: Tuple[float, float] = (3 / 4, 4 / 3)
                        ) -> np.ndarray:
  """Training crop: a random box (`crop_box`) resized to size x size.

  Args:
    data: PNG or JPEG bytes of one image of any size.
    rng: the image's generator (the pipeline seeds one per example).
    size: output side.
    channels: 3 (RGB; grey or CMYK images are converted) or 1.
    scale, ratio: `crop_box`'s area fraction and aspect-ratio ranges.

  Returns:
    [size, size, channels] uint8.
  """
  image = _open(data, channels)
  width, height = image.size
  top, left, h, w = crop_box(height, width, rng, scale=scale, ratio=ratio)
  return _crop_resize(image, (left, top, left + w, top + h), size, channels)


def center_crop(data: bytes, size: int, *, channels: int = 3,
                crop_fraction: float = 0.875) -> np.ndarray:
  """Evaluation crop: the central square of side crop_fraction * shorter
  side, resized to size x size (crop_fraction 0.875 at 224 is the usual
  "resize to 256, center-crop 224").

  Returns:
    [size, size, channels] uint8.
  """
  image = _open(data, channels)
  width, height = image.size
  side = crop_fraction * min(width, height)
  left, top = (width - side) / 2, (height - side) / 2
  return _crop_resize(image, (left, top, left + side, top + side), size,
                      channels)


def decode(data: bytes, channels: int = 3) -> np.ndarray:
  """[H, W, channels] uint8 of PNG / JPEG bytes, at full size."""
  image = _open(data, channels)
  if image.mode != _mode(channels):
    image = image.convert(_mode(channels))
  array = np.asarray(image, np.uint8)
  return array.reshape(array.shape[0], array.shape[1], channels)
