"""Tests of the model zoo: shapes, staged execution, modes, dtypes, exits.

Compiling real inits of big nets is slow on CPU, so: shapes of every
registered model are checked by tracing the jitted apply (`jax.eval_shape`);
real runs use scaled-down configurations of each family (same classes, fewer
channels) with numpy-filled variables.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mexd import models
from mexd.models import blocknet
from mexd.models import msdnet

C = 100
# name -> (exits E, feature width D, input channels).
EXPECTED = {
    "digits_cnn": (3, 64, 1), "fashion_cnn": (4, 128, 1),
    "small_cnn": (3, 64, 1), "msdnet_cifar": (11, 128, 3),
    "resnet10": (4, 512, 3), "resnet18": (4, 512, 3),
    "resnet18_half": (4, 256, 3), "resnet34": (4, 512, 3),
    "resnet50": (4, 2048, 3), "resnet18_imagenet": (4, 512, 3),
    "resnet34_imagenet": (4, 512, 3), "resnet50_imagenet": (4, 2048, 3),
    "resnext29_8x64d": (3, 1024, 3), "vgg11": (5, 512, 3),
    "vgg16": (5, 512, 3), "vgg19": (5, 512, 3), "wrn16_8": (3, 512, 3),
    "wrn28_10": (3, 640, 3),
}

# Scaled-down members of each family for real runs: (name, kwargs, size).
TINY = {
    "resnet_basic": ("resnet18", dict(widths=(8, 16, 16, 32), stem_width=8),
                     32),
    "resnet_bottleneck_imagenet": (
        "resnet50_imagenet", dict(stage_sizes=(1, 1, 1, 1),
                                  widths=(16, 16, 32, 32),
                                  mid_widths=(4, 4, 8, 8), stem_width=8), 64),
    "resnext": ("resnext29_8x64d", dict(stage_sizes=(1, 1, 1),
                                        widths=(16, 32, 64),
                                        mid_widths=(16, 32, 64)), 32),
    "wrn": ("wrn16_8", dict(widen_factor=1, dropout=0.3), 32),
    "vgg": ("vgg11", dict(config=((8,), (16,), (16, 16), (32,), (32,))),
            32),
    "msdnet": ("msdnet_cifar", dict(n_exits=3, nlayers_to_exit=2,
                                    nlayers_between_exits=1, exit_width=16),
               32),
}


def test_model_zoo_is_registered():
  assert set(EXPECTED) <= set(models.model_names())


def fake_variables(model, x, seed=0):
  """Variables with the shapes of `model.init` filled by numpy (no compile).

  Kernels ~ N(0, 2 / fan_in), BN scale 1 / bias 0, running mean 0 / var 1,
  SDN alpha 0.5.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def fill(path, s):
    leaf = str(path[-1].key)
    if leaf in ("var", "scale"):
      return jnp.ones(s.shape, s.dtype)
    if leaf in ("mean", "bias"):
      return jnp.zeros(s.shape, s.dtype)
    if leaf == "alpha":
      return jnp.full(s.shape, 0.5, s.dtype)
    fan_in = int(np.prod(s.shape[:-1]))
    return jnp.asarray(rng.standard_normal(s.shape) * np.sqrt(2.0 / fan_in),
                       s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@functools.lru_cache(maxsize=None)
def abstract_init(name, hw):
  """(model, (outputs at batch 1, variables)), all abstract."""
  model = models.get_model(name, num_classes=C)
  x = jax.ShapeDtypeStruct((1, hw, hw, EXPECTED[name][2]), jnp.float32)
  return model, jax.eval_shape(model.init_with_output, jax.random.key(0), x)


def test_size_of_test_inputs():
  assert models.input_size("resnet18") == 32
  assert models.input_size("resnet50_imagenet") == 224


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_model_shapes_under_jit(name):
  hw = min(models.input_size(name), 64)  # ImageNet variants at 64 x 64
  model, (out1, variables) = abstract_init(name, hw)
  num_exits, d, cin = EXPECTED[name]
  fn = jax.jit(functools.partial(model.apply, train=False))
  for batch in (1, 3):
    x = jax.ShapeDtypeStruct((batch, hw, hw, cin), jnp.float32)
    # Batch 1: init_with_output traced (under eval_shape's jit) the same call.
    logits, aux = out1 if batch == 1 else jax.eval_shape(fn, variables, x)
    chex.assert_shape(logits, (num_exits, batch, C))
    chex.assert_shape(aux["features"], (num_exits, batch, d))
    assert logits.dtype == aux["features"].dtype == jnp.float32


def _tiny(key, **extra):
  name, kw, hw = TINY[key]
  model = models.get_model(name, num_classes=10, **kw, **extra)
  return model, hw


def _jit_apply(model):
  return jax.jit(model.apply, static_argnames=("train", "mutable"))


@pytest.mark.parametrize("key", sorted(TINY))
def test_tiny_family_runs_and_staged_equals_one_pass(key):
  model, hw = _tiny(key)
  x = jax.random.normal(jax.random.key(1), (3, hw, hw, 3))
  variables = fake_variables(model, x[:1])
  num_exits = model.apply(variables, method=lambda m: m.num_exits)
  logits, aux = _jit_apply(model)(variables, x, train=False)
  chex.assert_shape(logits, (num_exits, 3, 10))
  assert aux["features"].shape[:2] == (num_exits, 3)
  chex.assert_tree_all_finite((logits, aux))
  assert 1e-3 < float(jnp.abs(logits).max()) < 1e3

  @jax.jit
  def staged(variables, h):
    outs = []
    for k in range(num_exits):
      h, z, f = model.apply(variables, k, h, method="stage")
      outs.append((z, f))
    return outs

  for k, (z, f) in enumerate(staged(variables, x)):
    np.testing.assert_allclose(z, logits[k], atol=1e-5, rtol=0)
    np.testing.assert_allclose(f, aux["features"][k], atol=1e-5, rtol=0)


def test_batch_stats_change_only_in_train_mode_and_dropout_needs_rng():
  model, hw = _tiny("resnet_basic", head="erde")
  x = jax.random.normal(jax.random.key(1), (4, hw, hw, 3)) + 2.0
  variables = fake_variables(model, x[:1])
  apply = _jit_apply(model)
  (za, _), upd = apply(variables, x, train=True, mutable="batch_stats",
                       rngs={"dropout": jax.random.key(0)})
  diff = jax.tree.map(lambda a, b: jnp.abs(a - b).max(),
                      upd["batch_stats"], variables["batch_stats"])
  assert min(jax.tree.leaves(diff)) > 0  # every BN (exit heads too) moved
  # Eval mode: no rng needed, deterministic, batch stats untouched.
  (z1, _), upd = apply(variables, x, train=False, mutable="batch_stats")
  (z2, _), _ = apply(variables, x, train=False, mutable="batch_stats")
  np.testing.assert_array_equal(z1, z2)
  chex.assert_trees_all_equal(upd["batch_stats"], variables["batch_stats"])
  # Train mode: ERDE heads' dropout uses the "dropout" rng.
  with pytest.raises(Exception, match="dropout"):
    apply(variables, x, train=True, mutable="batch_stats")
  (zb, _), _ = apply(variables, x, train=True, mutable="batch_stats",
                     rngs={"dropout": jax.random.key(1)})
  assert np.abs(za[:-1] - zb[:-1]).max() > 0  # dropout in the exit heads
  np.testing.assert_allclose(za[-1], zb[-1])  # final exit: no dropout


def test_bfloat16_compute_float32_params():
  model, hw = _tiny("resnet_basic", dtype="bfloat16")
  model32, _ = _tiny("resnet_basic")
  x = jax.random.normal(jax.random.key(1), (2, hw, hw, 3))
  variables = fake_variables(model, x)
  assert {a.dtype for a in jax.tree.leaves(variables)} == {
      jnp.dtype("float32")}
  z16, aux = jax.jit(model.apply)(variables, x)
  z32, _ = jax.jit(model32.apply)(variables, x)
  assert z16.dtype == aux["features"].dtype == jnp.float32
  chex.assert_tree_all_finite(z16)
  scale = float(jnp.abs(z32).max())
  assert float(jnp.abs(z16 - z32).max()) < 0.1 * scale


@pytest.mark.parametrize("head",
                         ["byot", "byot_sep", "sdn", "erde", "erde_window"])
def test_head_kinds_share_feature_width(head):
  model, hw = _tiny("resnet_basic", head=head, exits=(0.2, 0.5, 0.8))
  x = jax.ShapeDtypeStruct((2, hw, hw, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  logits, aux = jax.eval_shape(model.apply, variables, x)
  chex.assert_shape(logits, (4, 2, 10))
  chex.assert_shape(aux["features"], (4, 2, 32))
  head0 = variables["params"]["heads_0"]
  expected = {"byot": {"conv0", "bn0"}, "sdn": {"alpha", "proj"},
              "byot_sep": {"dwconv0", "conv0", "bn0"},
              "erde": {"bn", "proj"}, "erde_window": {"bn", "proj"}}[head]
  assert expected <= set(head0)
  assert set(variables["params"]["heads_3"]) == {"out"}  # the final fc


def test_byot_head_reaches_final_resolution_and_width():
  model = models.get_model("resnet18", num_classes=100)
  variables = abstract_init("resnet18", 32)[1][1]
  p = variables["params"]
  # EED: 3 / 2 / 1 stride-2 convs (64->128->256->512, ...), then the fc.
  for k, n in enumerate((3, 2, 1)):
    widths = [p[f"heads_{k}"][f"conv{i}"]["kernel"].shape[-1]
              for i in range(n)]
    assert widths == [128, 256, 512][3 - n:]
    assert f"conv{n}" not in p[f"heads_{k}"]
  assert model.apply(variables, method=lambda m: m.exit_units()) == (
      2, 4, 6, 8)


def test_fractional_exit_placement():
  costs = [10, 10, 10, 10, 10, 10, 10, 10, 10, 10]
  assert blocknet.place_exits(costs, (4, 9), "stages") == (4, 9)
  assert blocknet.place_exits(costs, (4, 9), (0.15, 0.5, 0.9)) == (1, 4, 8, 9)
  with pytest.raises(ValueError, match="two exits"):
    blocknet.place_exits(costs, (4, 9), (0.11, 0.12))
  with pytest.raises(ValueError, match="two exits"):
    blocknet.place_exits(costs, (4, 9), (0.95,))
  with pytest.raises(ValueError, match=r"\(0, 1\)"):
    blocknet.place_exits(costs, (4, 9), (0.5, 1.5))
  with pytest.raises(ValueError, match="stages"):
    blocknet.place_exits(costs, (4, 9), "blocks")
  # SDN's six internal exits on a VGG-16 split its conv blocks.
  model = models.get_model("vgg16", num_classes=10,
                           exits=(0.15, 0.3, 0.45, 0.6, 0.75, 0.9))
  ends = model.apply({}, method=lambda m: m.exit_units())
  assert len(ends) == 7 and ends[-1] == 12 and list(ends) == sorted(ends)


def test_bad_options_raise_clear_errors():
  x = jnp.zeros((1, 32, 32, 3))
  for name, kw, match in [("resnet18", dict(head="nope"), "valid: byot"),
                          ("msdnet_cifar", dict(head="byot"), "valid: msd"),
                          ("wrn16_8", dict(depth=15), "6n \\+ 4")]:
    with pytest.raises(ValueError, match=match):
      jax.eval_shape(models.get_model(name, num_classes=10, **kw).init,
                     jax.random.key(0), x)


def test_msdnet_layout_matches_phuong_lampert():
  planes, kinds, ends = msdnet.msd_layout(3, 11, 4, 2, (6, 12, 24), 1, 1,
                                          "min", 0.5)
  # 25 layers + 2 transitions (after layers 8 and 16, h -> floor(h / 2)).
  assert len(planes) == 27
  assert [c for c, k in enumerate(kinds) if k == "transition"] == [9, 18]
  h = [1, 2, 3, 4, 5, 6, 7, 8, 9, 4, 5, 6, 7, 8, 9, 10, 11, 12, 6, 7, 8, 9,
       10, 11, 12, 13, 14]
  assert [p[2] for p in planes] == [24 * v for v in h]
  assert planes[0] == (6, 12, 24)
  # "min" pruning: the finest scale goes in layer 23, the middle in 24.
  assert planes[-3] == (6 * 12, 12 * 12, 24 * 12)
  assert planes[-2] == (0, 12 * 13, 24 * 13)
  assert planes[-1] == (0, 0, 24 * 14)
  # Exits after layers 4, 6, ..., 24 (column = layer + transitions so far;
  # exits after layers 8 and 16 include their transitions).
  assert ends == (4, 6, 9, 11, 13, 15, 18, 20, 22, 24, 26)


def test_list_kwargs_read_from_json_give_a_hashable_model():
  """config.json stores tuples as lists; evaluate rebuilds models from it."""
  from mexd.early_exit import staged  # pylint: disable=g-import-not-at-top
  m = models.get_model("small_cnn", num_classes=10, widths=[4, 8],
                       strides=[1, 2])
  assert m.widths == (4, 8) and m.strides == (1, 2)
  hash(m)
  x = jnp.zeros((3, 8, 8, 1), jnp.float32)
  variables = m.init(jax.random.key(0), x)
  pred = staged.StagedPredictor(m, variables, [0.5, 0.0], "max_prob")
  predictions, exits = pred(x)
  chex.assert_shape([predictions, exits], [(3,), (3,)])


@pytest.mark.parametrize("num_classes,error,match", [
    (0, ValueError, r"num_classes must be >= 1 .*got 0"),
    (-3, ValueError, r"num_classes must be >= 1 .*got -3"),
    (10.0, TypeError, r"num_classes must be an integer .*got 10\.0"),
    (True, TypeError, r"num_classes must be an integer"),
])
def test_bad_num_classes_is_a_clear_error(num_classes, error, match):
  """Not the ZeroDivisionError of the initialiser at init time."""
  with pytest.raises(error, match=match):
    models.get_model("digits_cnn", num_classes=num_classes)
  assert models.get_model("digits_cnn", num_classes=np.int64(2))
