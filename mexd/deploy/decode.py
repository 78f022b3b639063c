"""Request bodies of the server -> one checked image, or a 4xx `BadRequest`.

Accepted bodies (the Content-Type says which):

* `application/x-npy`: a NumPy .npy array (no pickles) of shape [H, W, C],
  [1, H, W, C] or, for one channel, [H, W]; uint8 pixels or float images
  normalised as (x / 255 - mean) / std;
* `image/png`, `image/jpeg`, ... (anything Pillow decodes): converted to
  the model's channels (L for 1, RGB for 3), of exactly the model's size.

Every failure is a `BadRequest` with an HTTP status and one sentence: 400
(empty or undecodable body), 413 (body or image too large), 415 (another
content type), 422 (wrong shape, dtype or values).
"""

import io
from typing import Any, Dict, Sequence

import numpy as np

from mexd import errors
from mexd.deploy import checks

NPY = "application/x-npy"
_NPY_MAGIC = b"\x93NUMPY"


class BadRequest(Exception):
  """A request the server answers with `status` and `message`."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status
    self.message = message


def _npy(body: bytes) -> np.ndarray:
  if not body.startswith(_NPY_MAGIC):
    raise BadRequest(400, "the body is not a .npy array (no NumPy header); "
                     "send np.save's bytes")
  try:
    return np.load(io.BytesIO(body), allow_pickle=False)
  except Exception as e:  # pylint: disable=broad-except
    raise BadRequest(400, f"the body is not a readable .npy array "
                     f"({type(e).__name__}: {e})") from None


def _image(body: bytes, image_shape: Sequence[int],
           max_pixels: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w, c = image_shape
  try:
    img = Image.open(io.BytesIO(body))
    if img.width * img.height > max_pixels:
      raise BadRequest(413, f"an image of {img.width}x{img.height} pixels is "
                       f"too large (limit {max_pixels} pixels); the model "
                       f"takes {w}x{h}")
    img.load()
  except BadRequest:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise BadRequest(400, "the body is not an image Pillow can read (PNG, "
                     f"JPEG, ...; {type(e).__name__})") from None
  if c not in (1, 3):
    raise BadRequest(415, f"the model takes {c}-channel images; send them "
                     f"as {NPY}")
  if img.size != (w, h):
    raise BadRequest(422, f"an image of {img.width}x{img.height} pixels; "
                     f"the model takes {w}x{h} (resize it first)")
  return np.asarray(img.convert("L" if c == 1 else "RGB"),
                    np.uint8).reshape(h, w, c)


def decode(body: bytes, content_type: str, manifest: Dict[str, Any], *,
           max_pixels: int = 1 << 24) -> np.ndarray:
  """One request's image, checked as the runtime checks a batch.

  Args:
    body: the request body.
    content_type: its Content-Type header ("" if none).
    manifest: the export's manifest (image_shape, mean, std).
    max_pixels: the largest image (pixels) decoded at all.

  Returns:
    [1, H, W, C] uint8 or float32.

  Raises:
    BadRequest: see the module docstring.
  """
  shape = tuple(int(d) for d in manifest["image_shape"])
  kind = content_type.split(";")[0].strip().lower()
  if not body:
    raise BadRequest(400, "empty body: send one image")
  if kind == NPY:
    x = _npy(body)
  elif kind.startswith("image/"):
    x = _image(body, shape, max_pixels)
  else:
    raise BadRequest(415, f"Content-Type {content_type or '(none)'!r}: send "
                     f"{NPY} (np.save bytes) or an image (image/png, "
                     "image/jpeg, ...)")
  if x.ndim == 2 and shape[-1] == 1:
    x = x[..., None]
  if x.ndim == 3:
    x = x[None]
  if x.ndim == 4 and x.shape[0] != 1:
    raise BadRequest(422, f"a batch of {x.shape[0]} images: send one image "
                     "per request")
  if x.dtype.kind == "f" and x.dtype != np.float32:
    x = x.astype(np.float32)
  if x.dtype not in (np.uint8, np.float32):
    raise BadRequest(422, f"an array of dtype {x.dtype}: send uint8 pixels "
                     "or float32 images normalised as (x / 255 - mean) / std")
  try:
    return checks.images(x, shape, manifest["mean"], manifest["std"])
  except errors.InputError as e:
    raise BadRequest(422, str(e)) from None
