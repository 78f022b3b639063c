"""Model registry: `get_model(name, **kwargs)` builds any multi-exit model.

Every model is a `mexd.models.base.MultiExitModel`: `apply(vars, images,
train=...)` returns `(logits [E, B, C], {"features": [E, B, D]})`, and
`apply(vars, k, h, train=..., method="stage")` runs stage k alone.

`get_model` also picks the model's convolution and batch-norm classes for the
backend, once, when it builds the model (`mexd.models.layers.for_backend`).
"""

import dataclasses
import functools
from typing import Any, Callable, Dict, Optional

import jax.numpy as jnp
import numpy as np

from mexd import errors
from mexd.models import base
from mexd.models import layers as layers_lib
from mexd.models import msdnet
from mexd.models import resnet
from mexd.models import small_cnn
from mexd.models import vgg

MultiExitModel = base.MultiExitModel

# name -> constructor(num_classes=..., dtype=..., conv=..., norm=...,
# **kwargs). One line a model.
_REGISTRY: Dict[str, Callable[..., base.MultiExitModel]] = {
    "small_cnn": small_cnn.SmallCNN,
    "digits_cnn": functools.partial(
        small_cnn.SmallCNN, widths=(32, 64, 128), strides=(1, 2, 2)),
    "fashion_cnn": functools.partial(
        small_cnn.SmallCNN, widths=(32, 64, 128, 256), strides=(1, 2, 2, 2),
        head_features=128),
    # CIFAR (32 x 32) ResNets; exits after each of the four stages.
    "resnet10": functools.partial(resnet.ResNet, stage_sizes=(1, 1, 1, 1)),
    "resnet18": functools.partial(resnet.ResNet, stage_sizes=(2, 2, 2, 2)),
    "resnet18_half": functools.partial(
        resnet.ResNet, widths=(32, 64, 128, 256), stem_width=32),
    "resnet34": functools.partial(resnet.ResNet, stage_sizes=(3, 4, 6, 3)),
    "resnet50": functools.partial(
        resnet.ResNet, stage_sizes=(3, 4, 6, 3),
        widths=(256, 512, 1024, 2048), mid_widths=(64, 128, 256, 512),
        head="byot_sep"),
    # ImageNet (224 x 224) ResNets: 7x7 stride-2 stem + max pool.
    "resnet18_imagenet": functools.partial(
        resnet.ResNet, stage_sizes=(2, 2, 2, 2), imagenet=True),
    "resnet34_imagenet": functools.partial(
        resnet.ResNet, stage_sizes=(3, 4, 6, 3), imagenet=True),
    "resnet50_imagenet": functools.partial(
        resnet.ResNet, stage_sizes=(3, 4, 6, 3),
        widths=(256, 512, 1024, 2048), mid_widths=(64, 128, 256, 512),
        imagenet=True, head="byot_sep"),
    # CIFAR ResNeXt-29 (8 x 64d), WRNs and VGG-BN; three / three / five exits.
    # Bottleneck nets default to separable BYOT heads (see mexd.models.heads).
    "resnext29_8x64d": functools.partial(
        resnet.ResNet, stage_sizes=(3, 3, 3), widths=(256, 512, 1024),
        mid_widths=(512, 1024, 2048), groups=8, head="byot_sep"),
    "wrn16_8": functools.partial(resnet.WideResNet, depth=16, widen_factor=8),
    "wrn28_10": functools.partial(resnet.WideResNet, depth=28, widen_factor=10),
    "vgg11": functools.partial(vgg.VGG, depth=11),
    "vgg16": functools.partial(vgg.VGG, depth=16),
    "vgg19": functools.partial(vgg.VGG, depth=19),
    # Phuong & Lampert's CIFAR MSDNet: 3 scales, 11 exits.
    "msdnet_cifar": msdnet.MSDNet,
    # Huang et al.'s ImageNet MSDNet (4 scales, 5 exits every 4 layers).
    "msdnet_imagenet": functools.partial(
        msdnet.MSDNet, n_scales=4, n_exits=5, nlayers_to_exit=4,
        nlayers_between_exits=4, nplanes_mulv=(16, 32, 64, 64),
        nplanes_init=2, nplanes_addh=1, prune="max", plane_reduction=0.5,
        btneck_widths=(1, 2, 4, 4), imagenet=True),
}

# Input size each registered model is built for (others: 32 x 32).
INPUT_SIZES: Dict[str, int] = {
    "digits_cnn": 8, "fashion_cnn": 28, "small_cnn": 8,
    "resnet18_imagenet": 224, "resnet34_imagenet": 224,
    "resnet50_imagenet": 224, "msdnet_imagenet": 224,
}


def input_size(name: str) -> int:
  """Canonical input height = width of the registered model `name`."""
  return INPUT_SIZES.get(name, 32)


# Smallest input side each model is meant to take (others: half their
# input_size). The small CNNs' SAME-padded stages take any size; ImageNet
# ResNets down-sample 32x in all, so 32 px is their floor.
MIN_INPUT_SIZES: Dict[str, int] = {
    "digits_cnn": 1, "fashion_cnn": 1, "small_cnn": 1,
    "resnet18_imagenet": 32, "resnet34_imagenet": 32,
    "resnet50_imagenet": 32, "msdnet_imagenet": 32,
}


def check_input_size(name: str, image_shape) -> None:
  """Raises InputError if model `name` is not meant for `image_shape`
  (H, W, C) images, naming both sizes (before anything is compiled)."""
  low = MIN_INPUT_SIZES.get(name, max(1, input_size(name) // 2))
  h, w = int(image_shape[0]), int(image_shape[1])
  if min(h, w) < low:
    small = ", ".join(n for n in model_names()
                      if MIN_INPUT_SIZES.get(n, input_size(n) // 2) <= min(h, w))
    raise errors.InputError(
        f"model {name!r} is built for {input_size(name)}x{input_size(name)} "
        f"images and needs at least {low}x{low}; the data's images are "
        f"{h}x{w}: pick a model for this size ({small}) or a data set with "
        "larger images")


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
           "float16": jnp.float16}


def register(name: str, constructor: Callable[..., base.MultiExitModel]):
  """Adds a model constructor under `name` (raises if the name is taken).

  `get_model` calls it with num_classes=, dtype=, conv=, norm= (the layer
  classes, `mexd.models.layers`) and the architecture keywords.
  """
  if name in _REGISTRY:
    raise ValueError(f"model {name!r} is already registered")
  _REGISTRY[name] = constructor


def model_names():
  """Sorted names of every registered model."""
  return sorted(_REGISTRY)


_NOT_KEYWORDS = ("parent", "name", "num_classes", "dtype") + (
    layers_lib.Layers._fields)


def model_keywords(name: str) -> Dict[str, Any]:
  """The architecture keywords of model `name` and their defaults.

  These are the valid `model.kwargs` of a config (`num_classes`, `dtype`
  and the layer classes are set elsewhere).

    >>> model_keywords("digits_cnn")["widths"]
    (32, 64, 128)
  """
  if name not in _REGISTRY:
    raise errors.InputError(f"unknown model {name!r}; valid names: "
                            f"{', '.join(model_names())}")
  ctor, fixed = _REGISTRY[name], {}
  while isinstance(ctor, functools.partial):
    fixed = {**ctor.keywords, **fixed}
    ctor = ctor.func
  if not dataclasses.is_dataclass(ctor):
    return dict(fixed)
  out = {}
  for f in dataclasses.fields(ctor):
    if f.name in _NOT_KEYWORDS or not f.init:
      continue
    if f.name in fixed:
      out[f.name] = fixed[f.name]
    elif f.default is not dataclasses.MISSING:
      out[f.name] = f.default
    elif f.default_factory is not dataclasses.MISSING:
      out[f.name] = f.default_factory()
    else:
      out[f.name] = None
  return out


def get_model(name: str, *, num_classes: int, dtype: Any = "float32",
              layers: Optional[layers_lib.Layers] = None,
              **kwargs) -> base.MultiExitModel:
  """Builds the registered model `name`.

  Args:
    name: a key of the registry (see `model_names()`).
    num_classes: C, the number of classes of every exit.
    dtype: compute dtype, "float32" or "bfloat16" (parameters stay float32).
    layers: its convolution and batch-norm classes; None:
      `layers.for_backend()` (mexd's CPU layers on the CPU backend, stock
      flax elsewhere). Either gives the same variables.
    **kwargs: architecture options of that model.

  Raises:
    InputError: unknown name or dtype, listing the valid ones; num_classes
      < 1.
    TypeError: num_classes is not an integer.
  """
  if isinstance(num_classes, bool) or not isinstance(
      num_classes, (int, np.integer)):
    raise TypeError(f"num_classes must be an integer (C, the number of "
                    f"classes), got {num_classes!r}")
  if num_classes < 1:
    raise errors.InputError(
        f"num_classes must be >= 1 (C, the number of classes "
        f"of every exit), got {num_classes}")
  if name not in _REGISTRY:
    raise errors.InputError(f"unknown model {name!r}; valid names: "
                            f"{', '.join(model_names())}")
  if isinstance(dtype, str):
    if dtype not in _DTYPES:
      raise errors.InputError(f"unknown dtype {dtype!r}; valid: "
                              f"{', '.join(sorted(_DTYPES))}")
    dtype = _DTYPES[dtype]
  # Lists (e.g. widths read back from a run's config.json) become tuples:
  # Flax modules must be hashable (jit caches and staged inference key on
  # them).
  kwargs = {k: _hashable(v) for k, v in kwargs.items()}
  layers = layers_lib.for_backend() if layers is None else layers
  return _REGISTRY[name](num_classes=num_classes, dtype=dtype,
                         **layers._asdict(), **kwargs)


def _hashable(v):
  if isinstance(v, (list, tuple)):
    return tuple(_hashable(x) for x in v)
  return v
