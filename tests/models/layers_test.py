"""mexd.models.layers: one layer choice per backend, same variables and numbers.

The CPU layers (`mexd.cpu.conv.Conv`, `mexd.cpu.norm.BatchNorm`) and stock
flax's must be interchangeable: a model of each family is initialised with one
choice and run with the other, in eval mode (logits) and in train mode
(gradients and batch statistics).
"""

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mexd import models
from mexd.cpu import conv as cpu_conv
from mexd.cpu import norm as cpu_norm
from mexd.models import base
from mexd.models import costs
from mexd.models import layers

# Tiny members of every family of the registry: (name, kwargs, image side,
# channels). Together they use every unit and head kind that holds a conv or
# a batch norm.
FAMILIES = {
    "small_cnn": ("digits_cnn", dict(widths=(4, 8), strides=(1, 2),
                                     head_features=8), 8, 1),
    "small_cnn_conv_heads": ("fashion_cnn", dict(
        widths=(4, 8), strides=(1, 2), head="conv", downsample="maxpool",
        head_features=8), 8, 1),
    "resnet": ("resnet10", dict(widths=(4, 8, 8, 8), stem_width=4), 16, 3),
    "resnext_imagenet": ("resnext29_8x64d", dict(
        stage_sizes=(1, 1, 1), widths=(8, 16, 16), mid_widths=(8, 8, 16),
        groups=2, imagenet=True), 32, 3),
    "wrn_erde_heads": ("wrn16_8", dict(widen_factor=1, head="erde"), 16, 3),
    "vgg_sdn_heads": ("vgg11", dict(config=((4,), (8,), (8,), (8,), (8,)),
                                    head="sdn"), 32, 3),
    "msdnet": ("msdnet_cifar", dict(n_exits=2, nlayers_to_exit=2,
                                    nlayers_between_exits=1, exit_width=8,
                                    nplanes_mulv=(2, 4, 8)), 16, 3),
}


def _pair(family):
  """(model with CPU layers, model with flax layers, images [8, H, W, C]).

  Batch 8: the batch norms of the 1 x 1 maps of the deepest heads then
  normalise 8 values, not 2 (with 2, float32 rounding in the batch
  statistics is amplified to ~5e-3 of the gradients, with either layers).
  """
  name, kw, hw, c = FAMILIES[family]
  cpu, ref = (models.get_model(name, num_classes=5, layers=l, **kw)
              for l in (layers.CPU, layers.FLAX))
  x = jax.random.normal(jax.random.key(0), (8, hw, hw, c))
  return cpu, ref, x


def _assert_close(a, b, rtol):
  """Leafwise |a - b| <= rtol * (|b| + max |b| of the leaf)."""
  def check(path, u, v):
    v = np.asarray(v)
    np.testing.assert_allclose(u, v, rtol=rtol,
                               atol=rtol * float(np.abs(v).max()),
                               err_msg=jax.tree_util.keystr(path))
  jax.tree_util.tree_map_with_path(check, a, b)


def _modules(model, variables, x):
  """Types of every submodule a forward pass binds."""
  found = set()

  def record(next_fun, args, kwargs, context):
    found.add(type(context.module))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply(variables, x)
  return found


def test_layers_for_each_backend():
  assert layers.for_backend("cpu") == layers.CPU
  assert layers.for_backend("gpu") == layers.FLAX
  assert layers.for_backend("tpu") == layers.FLAX
  assert layers.CPU == (cpu_conv.Conv, cpu_norm.BatchNorm)
  conv = layers.FLAX.conv(4, (3, 3), name="c")
  assert type(conv) is nn.Conv and not conv.use_bias
  assert layers.FLAX.norm is nn.BatchNorm
  assert layers.for_backend() == layers.CPU  # Tests run on CPU.
  assert layers.by_name("flax") == layers.FLAX
  with pytest.raises(ValueError, match="unknown layers 'xla'; valid: cpu"):
    layers.by_name("xla")


def test_switch_off_gives_flax_layers_on_cpu(monkeypatch):
  assert layers.for_backend("cpu", cpu_fast=False) == layers.FLAX
  monkeypatch.setenv("MEXD_CPU_FAST", "0")
  assert layers.for_backend("cpu") == layers.FLAX
  assert layers.for_backend("cpu", cpu_fast=True) == layers.CPU
  model = models.get_model("digits_cnn", num_classes=3, widths=(4,),
                           strides=(1,))
  assert (model.conv, model.norm) == layers.FLAX
  x = jnp.zeros((1, 8, 8, 1))
  found = _modules(model, model.init(jax.random.key(0), x), x)
  assert {nn.Conv, nn.BatchNorm} <= found
  assert not {cpu_conv.Conv, cpu_norm.BatchNorm} & found


def test_get_model_picks_the_backend_layers_once():
  model = models.get_model("digits_cnn", num_classes=3)
  assert (model.conv, model.norm) == layers.CPU
  # The same build twice is the same (hashable, equal) module.
  assert model == models.get_model("digits_cnn", num_classes=3)
  x = jnp.zeros((1, 8, 8, 1))
  found = _modules(model, model.init(jax.random.key(0), x), x)
  assert {cpu_conv.Conv, cpu_norm.BatchNorm} <= found
  assert not {nn.Conv, nn.BatchNorm} & found
  # The layer classes are not architecture keywords of a config.
  assert not {"conv", "norm"} & set(models.model_keywords("resnet18"))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_same_variables_and_numbers_with_either_layers(family):
  cpu, ref, x = _pair(family)
  v_cpu = jax.jit(cpu.init)(jax.random.key(1), x)
  v_ref = jax.jit(ref.init)(jax.random.key(1), x)
  # Same names, shapes and (same initialisers, same rng paths) values.
  chex.assert_trees_all_equal(v_cpu, v_ref)
  rng = np.random.default_rng(2)
  variables = jax.tree.map(  # Non-trivial statistics for eval mode.
      lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape), a.dtype), v_cpu)
  variables = {**v_cpu, "batch_stats": variables["batch_stats"]}
  logits = {m: jax.jit(m.apply)(variables, x)[0] for m in (cpu, ref)}
  np.testing.assert_allclose(logits[cpu], logits[ref], rtol=1e-4, atol=1e-5)

  r = jax.random.normal(jax.random.key(3), logits[cpu].shape)

  def grads(model):
    def loss(params):
      (z, aux), new = model.apply(
          {**variables, "params": params}, x, train=True,
          mutable=["batch_stats"], rngs={"dropout": jax.random.key(4)})
      return jnp.sum(z * r) + jnp.sum(aux["features"]), new
    return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])

  (g_cpu, s_cpu), (g_ref, s_ref) = grads(cpu), grads(ref)
  _assert_close(g_cpu, g_ref, rtol=1e-4)
  _assert_close(s_cpu, s_ref, rtol=1e-5)


class _OneConv(base.MultiExitModel):
  """One 3x3 conv (3 -> 4, padding 1) and a sum over the map as the exit."""

  num_classes: int = 4
  dtype: Any = jnp.float32
  conv: layers.ModuleDef = layers.FLAX.conv
  norm: layers.ModuleDef = layers.FLAX.norm

  def setup(self):
    self.blocks = [_Conv(self.conv)]
    self.heads = [_Sum()]


class _Conv(nn.Module):
  conv: layers.ModuleDef

  @nn.compact
  def __call__(self, x, *, train=False):
    del train
    return layers.conv(self.conv, 4, 3, 1, jnp.float32, "c")(x)


class _Sum(nn.Module):

  def __call__(self, h, *, train=False):
    del train
    s = jnp.sum(h, axis=(1, 2))  # [B, 4]
    return s, s


def test_costs_count_xla_convolutions_whichever_layers():
  # 3x3 conv with padding 1 on 5 x 6: XLA counts only the taps inside the
  # image, per axis sum_p #{offsets in -1..1 with p + offset inside}:
  # 5 rows: 2 + 3 + 3 + 3 + 2 = 13, 6 columns: 2 + 3 * 4 + 2 = 16.
  conv_flops = 2 * (13 * 16) * 3 * 4  # multiply-adds of Cin 3, Cout 4
  sum_flops = (5 * 6 - 1) * 4  # the exit's sum: 29 adds per channel
  x = jax.ShapeDtypeStruct((1, 5, 6, 3), jnp.float32)
  out = []
  for choice in (layers.CPU, layers.FLAX):
    model = _OneConv(**choice._asdict())
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    out.append(costs.exit_costs(model, variables, (5, 6, 3)))
  assert out[0] == out[1]
  assert out[0][0]["flops"] == conv_flops + sum_flops


def test_with_layers_swaps_only_models_with_layer_attributes():
  model = models.get_model("digits_cnn", num_classes=3, layers=layers.CPU)
  swapped = layers.with_layers(model, layers.FLAX)
  assert (swapped.conv, swapped.norm) == layers.FLAX
  assert swapped.widths == model.widths
  plain = nn.Dense(3)
  assert layers.with_layers(plain, layers.FLAX) is plain
