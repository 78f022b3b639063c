"""Every recipe of mexd.configs builds, validates and traces (no training).

For each config file and its variants: the config passes `validate`, its
method builds with the config's hyperparameters, its model initialises
under `jax.eval_shape` at the data set's image size and returns logits of
[exits, batch, classes]. A mock CIFAR run checks the data plumbing of a
CIFAR recipe end to end (with a small model, for time).
"""

import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

from mexd import config_lib
from mexd import configs
from mexd import predict
from mexd import train
from mexd.data import mock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKOUT_CONFIGS = os.path.join(REPO, "configs")

# data name -> (image shape, classes)
SHAPES = {
    "digits": ((8, 8, 1), 10), "fashion_mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10), "cifar100": ((32, 32, 3), 100),
    "tfds:svhn_cropped": ((32, 32, 3), 10),
    "tfds:caltech_birds2011": (None, 200), "tfds:stanford_dogs": (None, 120),
    "tfds:imagenet_resized/64x64": ((64, 64, 3), 1000),
    "tfds:imagenet_resized/32x32": ((32, 32, 3), 1000),
    "tfds:imagenet2012": (None, 1000),
}

VARIANTS = [
    ("digits", ""), ("digits", "limited"), ("digits", "method=erde,student"),
    ("fashion_mnist", ""), ("fashion_mnist", "method=eed,setting=limited"),
    ("fashion_mnist", "method=erde,student=True"),
    ("cifar100", ""), ("cifar100", "mate"), ("cifar100", "pl"),
    ("cifar100", "method=pl,semisup=True"),
    ("cifar100", "method=erde,student=True"),
    ("cifar10", "method=erde,student=True"), ("svhn", "method=ce"),
    ("cub200", ""), ("cub200", "method=kd,student=True"),
    ("stanford_dogs", "method=eed"), ("imagenet64", ""),
    ("imagenet64", "res=32,method=byot"), ("imagenet", ""),
    ("imagenet", "eed"), ("imagenet", "method=kd,student,batch=1024"),
    ("imagenet", "method=ce,arch=msdnet,ls=0.1,warmup=5"),
]


def load(name, arg):
  return configs.load(name, arg)


@pytest.mark.parametrize("name,arg", VARIANTS)
def test_recipe_builds_and_traces(name, arg):
  c = load(name, arg)
  config_lib.validate(c)
  method = train.build_method(c)
  shape, classes = SHAPES[c.data.name]
  if shape is None:
    shape = (c.data.image_size, c.data.image_size, 3)
  model = predict.build_model(c, classes)
  x = jnp.zeros((2,) + shape, jnp.float32)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), x, train=False))
  logits, _ = jax.eval_shape(
      lambda v: model.apply(v, x, train=False), variables)
  assert logits.shape[1:] == (2, classes) and logits.shape[0] >= 2
  method.init_params(logits.shape[0])  # The method accepts this many exits.
  assert method.needs_teacher == (c.method in ("erde", "kd"))


@pytest.mark.parametrize("name,arg", VARIANTS)
def test_runlocal_variant_validates(name, arg):
  # benchmarks/recipes.py trains these; a runlocal batch of 16 once kept the
  # semi-supervised recipe's 32 unlabeled rows.
  c = load(name, ",".join(a for a in (arg, "runlocal=True") if a))
  config_lib.validate(c)
  assert c.num_epochs == 1


def test_runlocal_keeps_the_unlabeled_share():
  c = load("cifar100", "method=pl,semisup=True,runlocal=True")
  assert (c.batch_size, c.data.unlabeled_batch) == (16, 8)


def test_imagenet_recipe_options():
  c = load("imagenet", "method=ce,ls=0.1,warmup=5,batch=1024")
  assert c.loss.ce.label_smoothing == 0.1 and c.model.name == "resnet50_imagenet"
  assert c.optimizer.warmup_epochs == 5 and c.optimizer.lr == 0.4
  assert c.data.stream and c.model.dtype == "bfloat16"
  m = train.build_method(c)
  z = jnp.zeros((4, 2, 1000)); y = jnp.array([0, 1])
  ce = float(m.loss_fn({"logits": z}, y, params={}, state={}, progress=0.)[
      1]["ce/exit0"])
  assert abs(ce - jnp.log(1000.0)) < 1e-4  # Uniform logits: smoothing-free.
  c = load("imagenet", "")
  assert c.model.name == "msdnet_imagenet" and c.method == "pl"
  assert c.loss.pl.label_smoothing is None
  with pytest.raises(ValueError, match="ls in"):
    load("imagenet", "ls=1.5")


def test_unknown_config_argument_is_refused():
  with pytest.raises(ValueError, match="unknown config argument 'methd'"):
    load("cifar100", "methd=eed")
  with pytest.raises(ValueError, match="unknown config argument 'limted'"):
    load("digits", "limted")
  with pytest.raises(ValueError, match="did you mean setting=limited"):
    load("digits", "limited=ture")
  with pytest.raises(ValueError, match="semisup='ture' is not a boolean"):
    load("fashion_mnist", "setting=limited,semisup=ture")
  with pytest.raises(ValueError, match="method='eeed' must be one of"):
    load("cifar100", "method=eeed")
  with pytest.raises(ValueError, match="res must be 32 or 64"):
    load("imagenet64", "res=128")


@pytest.mark.slow
def test_cifar_recipe_trains_on_a_mock_archive(tmp_path):
  """configs/cifar10.py:runlocal reads the archive and trains above chance."""
  mock.write_cifar(str(tmp_path / "data"), "cifar10", train_per_class=40,
                   test_per_class=20)
  c = load("cifar10", "method=ce,runlocal=True")
  c.data.data_dir = str(tmp_path / "data")
  c.data.val_size = 100
  c.num_epochs = 6
  c.batch_size = 32
  c.progress_bar = False
  c.optimizer.lr = 0.05
  c.model.name = "small_cnn"  # The recipe's ResNet-18 is slow to compile.
  c.model.kwargs = config_lib.ml_collections.ConfigDict(
      dict(widths=(8, 16, 32), strides=(1, 2, 2)))
  res = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert res["steps"] == 6 * (300 // 32)
  assert res["test"]["acc"][-1] > 0.3, res["test"]  # Chance: 0.1.


def test_bare_word_variants_select_the_documented_setting():
  # The form the README and the recipes' docstrings show.
  c = load("digits", "limited")
  assert c.data.labeled_per_class == 10 and c.data.unlabeled_batch == 32
  assert load("digits", "").data.labeled_per_class is None
  c = load("digits", "limited,semisup=False")
  assert (c.data.unlabeled_pool, c.data.unlabeled_batch) == (False, 0)
  c = load("fashion_mnist", "limited")
  assert c.data.labeled_per_class == 100 and c.data.unlabeled_batch == 64
  assert load("cifar100", "byot").method == "byot"
  assert load("cifar100", "pl").model.name == "msdnet_cifar"
  assert load("fashion_mnist", "student").model.kwargs.widths == (
      8, 16, 32, 64)


def test_shared_arguments_epochs_and_runlocal_in_every_recipe():
  for name in configs.names():
    c = load(name, "epochs=3")
    assert c.num_epochs == 3, name
    assert load(name, "runlocal").num_epochs == 1, name


@pytest.mark.parametrize("spec,want", [
    ("cifar100", "cifar100.py"), ("cifar100:eed", "cifar100.py:eed"),
    ("digits:limited,epochs=2", "digits.py:limited,epochs=2")])
def test_resolve_maps_names_to_installed_files(spec, want):
  out = configs.resolve(spec)
  assert out == os.path.join(os.path.dirname(configs.__file__), want)
  assert os.path.exists(out.split(":")[0])


def test_resolve_keeps_user_files_and_maps_missing_checkout_paths(tmp_path,
                                                                 monkeypatch):
  mine = tmp_path / "mine.py"
  mine.write_text("def get_config(arg=None):\n  return None\n")
  assert configs.resolve(f"{mine}:x") == f"{mine}:x"
  monkeypatch.chdir(tmp_path)  # No configs/ folder here.
  assert configs.resolve("configs/digits.py:limited") == (
      configs.path("digits") + ":limited")
  assert configs.resolve("configs/nope.py") == "configs/nope.py"
  with pytest.raises(ValueError, match="installed recipes: .*digits"):
    configs.path("nope")
  argv = ["prog", "--config", "digits", "--config.seed=1"]
  assert configs.resolve_argv(argv)[2] == configs.path("digits")


def test_checkout_configs_are_the_installed_recipes():
  """configs/<name>.py of the repository re-exports mexd/configs/<name>.py."""
  if not os.path.isdir(CHECKOUT_CONFIGS):
    pytest.skip("not a checkout")
  files = sorted(f[:-3] for f in os.listdir(CHECKOUT_CONFIGS)
                 if f.endswith(".py"))
  assert files == configs.names()
  for name in files:
    spec = importlib.util.spec_from_file_location(
        f"checkout_{name}", os.path.join(CHECKOUT_CONFIGS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.get_config("epochs=2").to_dict() == load(
        name, "epochs=2").to_dict()
