"""The convolution and batch-norm layers of every model, chosen in one place.

Models take their layer classes as attributes, as flax's examples do
(`ResNet.conv: ModuleDef`): every mexd model has `conv` and `norm`
attributes and passes them down to its blocks and heads. `for_backend()`
picks them once, when the model is built (`mexd.models.get_model`):

* on the CPU backend, `CPU`: `mexd.cpu.conv.Conv` (XLA's forward
  convolution with GEMM-based gradients) and `mexd.cpu.norm.BatchNorm`
  (closed-form backward), docs/models.md;
* elsewhere (GPU, TPU), or on CPU with `MEXD_CPU_FAST=0`, `FLAX`: stock
  `flax.linen.Conv(use_bias=False)` and `flax.linen.BatchNorm`.

Both have the same variables ("kernel"; "scale", "bias", "mean", "var") and
the same numbers, so a checkpoint trained with one runs with the other. A
model class built directly (not through `get_model`) has `FLAX` by default.

The conventions shared by every model live here too: `conv` builds a
bias-free k x k convolution with PyTorch-style padding k // 2 and He
(fan-out) initialisation, `batch_norm` a batch norm with momentum 0.9.

  >>> for_backend("gpu") == FLAX and for_backend("cpu", cpu_fast=False) == FLAX
  True
  >>> for_backend("cpu") == CPU
  True
"""

import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax

from mexd import cpu
from mexd import errors
from mexd.cpu import conv as cpu_conv
from mexd.cpu import norm as cpu_norm

ModuleDef = Any

# He-normal with fan_out, as torchvision's kaiming_normal_(mode="fan_out").
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Layers(NamedTuple):
  """The layer classes a model is built with.

  Attributes:
    conv: a bias-free convolution, called as `nn.Conv` is (features,
      kernel_size, strides=, padding=, feature_group_count=, kernel_init=,
      dtype=, name=); variable "kernel" [kh, kw, Cin / groups, Cout].
    norm: a batch norm, called as `nn.BatchNorm` is (use_running_average=,
      momentum=, dtype=, name=); variables "scale", "bias" ("params") and
      "mean", "var" ("batch_stats"), [C] each.
  """

  conv: ModuleDef
  norm: ModuleDef


FLAX = Layers(conv=functools.partial(nn.Conv, use_bias=False),
              norm=nn.BatchNorm)
CPU = Layers(conv=cpu_conv.Conv, norm=cpu_norm.BatchNorm)
_BY_NAME = {"cpu": CPU, "flax": FLAX}


def for_backend(backend: Optional[str] = None, *,
                cpu_fast: Optional[bool] = None) -> Layers:
  """The layers mexd builds its models with on `backend`.

  Args:
    backend: "cpu", "gpu", "tpu", ...; None: `jax.default_backend()`.
    cpu_fast: whether the CPU backend gets the `CPU` layers; None follows
      the switch (`mexd.cpu.enabled()`, off with `MEXD_CPU_FAST=0`).

  Returns:
    `CPU` on the CPU backend (unless switched off), `FLAX` elsewhere.
  """
  backend = backend or jax.default_backend()
  if cpu_fast is None:
    cpu_fast = cpu.enabled()
  return CPU if backend == "cpu" and cpu_fast else FLAX


def by_name(name: str) -> Layers:
  """`CPU` for "cpu", `FLAX` for "flax" (e.g. a benchmark's flag)."""
  if name not in _BY_NAME:
    raise errors.InputError(f"unknown layers {name!r}; valid: "
                            f"{', '.join(sorted(_BY_NAME))}")
  return _BY_NAME[name]


def with_layers(model: nn.Module, layers: Layers) -> nn.Module:
  """`model` rebuilt with `layers` (a model without conv/norm unchanged).

  The variables of either build fit the other (same names and shapes).
  """
  names = {f.name for f in dataclasses.fields(model)}
  if not set(Layers._fields) <= names:
    return model
  return model.clone(**layers._asdict())


def conv(module: ModuleDef, features: int, kernel: int, stride: int,
         dtype: Any, name: str, groups: int = 1) -> nn.Module:
  """A bias-free k x k `module` with PyTorch-style symmetric padding k // 2.

  Args:
    module: the model's `conv` layer class.
    features: output channels.
    kernel: k (a k x k kernel).
    stride: the same in both spatial axes.
    dtype: compute dtype.
    name: the submodule's name.
    groups: feature groups.
  """
  p = kernel // 2
  return module(features, (kernel, kernel), strides=(stride, stride),
                padding=((p, p), (p, p)), feature_group_count=groups,
                kernel_init=conv_init, dtype=dtype, name=name)


def batch_norm(module: ModuleDef, train: bool, dtype: Any,
               name: str) -> nn.Module:
  """The model's `norm` class: running averages in eval mode, momentum 0.9."""
  return module(use_running_average=not train, momentum=0.9, dtype=dtype,
                name=name)
