"""On-device preprocessing: uint8 -> normalised float, random crop and flip.

Runs inside the jitted train step, so the host only gathers uint8 batches and
augmentation is deterministic given (rng, step) and costs no host time.
"""

from typing import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def normalize(images: Array, mean: Sequence[float], std: Sequence[float],
              dtype=jnp.float32) -> Array:
  """uint8 [B, H, W, C] -> (x / 255 - mean) / std in `dtype`."""
  x = images.astype(jnp.float32) / 255.0
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype)


def random_crop_flip(rng: Array, images: Array, *, pad: int = 0,
                     flip: bool = False) -> Array:
  """Pad-`pad` random crop and random horizontal flip, per image.

  Args:
    rng: a PRNG key.
    images: [B, H, W, C] float images (already normalised: zero padding is
      then the data mean, as with per-channel normalisation before padding).
    pad: pixels of zero padding on each side before cropping back to H x W.
    flip: flip each image left-right with probability 1/2.

  Returns:
    [B, H, W, C] augmented images.
  """
  b, h, w, _ = images.shape
  k_crop, k_flip = jax.random.split(rng)
  if pad > 0:
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)
    crop = lambda im, o: jax.lax.dynamic_slice(
        im, (o[0], o[1], 0), (h, w, im.shape[-1]))
    images = jax.vmap(crop)(padded, offsets)
  if flip:
    do = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
    images = jnp.where(do, images[:, :, ::-1, :], images)
  return images
