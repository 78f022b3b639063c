"""get_method, hyperparameter checks, and jit/vmap/grad of every method."""

import inspect

import chex
import jax
import jax.numpy as jnp
from jax import test_util as jtu
import numpy as np
import pytest

import np_reference

from mexd import losses
from mexd.losses import erde
from mexd.losses import mate
from mexd.losses import phuong_lampert

ALL = ["byot", "ce", "eed", "erde", "imta", "kd", "mate", "pl", "pl_const",
       "sdn"]


def test_every_method_is_registered():
  assert losses.method_names() == ALL


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="unknown method 'dbt'; valid names: "
                     "byot, ce, eed, erde, imta, kd, mate, pl, pl_const, sdn"):
    losses.get_method("dbt")


def test_unknown_hparam_lists_valid_ones():
  with pytest.raises(ValueError, match=r"\['T'\] for method 'erde'; valid: "
                     "temperature, alpha, gamma, kl_on_wrong, "
                     "label_smoothing"):
    losses.get_method("erde", T=4.0)
  with pytest.raises(ValueError,
                     match="valid: temperature, alpha, label_smoothing$"):
    losses.get_method("kd", gamma=1.0)


@pytest.mark.parametrize("name,hp,match", [
    ("pl", dict(c=1.5), r"c .* must be in \[0, 1\]"),
    ("pl", dict(t0=0.0), "temperature must be > 0"),
    ("pl", dict(t_mult=0.9), "t_mult"),
    ("pl", dict(max_prob=0.0), "max_prob"),
    ("pl_const", dict(temperature=-1.0), "temperature must be > 0"),
    ("pl_const", dict(c=-0.1), r"\[0, 1\]"),
    ("sdn", dict(tau_max=[0.1, -0.2]), "tau_max entries must be >= 0"),
    ("byot", dict(alpha=-0.1), r"alpha must be in \[0, 1\]"),
    ("byot", dict(alpha=1.1), r"alpha must be in \[0, 1\]"),
    ("byot", dict(temperature=0.0), "temperature must be > 0"),
    ("byot", dict(feature_weight=-1.0), "feature_weight must be >= 0"),
    ("eed", dict(output_loss="l2"), "unknown output_loss 'l2'; valid: mse, kl"),
    ("eed", dict(temperature=0.0), "temperature must be > 0"),
    ("eed", dict(kl_weight=-0.1), "kl_weight must be >= 0"),
    ("mate", dict(beta=1.2), r"beta must be in \[0, 1\]"),
    ("mate", dict(beta=-0.5), r"beta must be in \[0, 1\]"),
    ("mate", dict(temperature=-3.0), "temperature must be > 0"),
    ("erde", dict(alpha=2.0), r"alpha must be in \[0, 1\]"),
    ("erde", dict(temperature=0.0), "temperature must be > 0"),
    ("erde", dict(temperature=float("nan")), "temperature must be > 0"),
    ("erde", dict(gamma=-1.0), "gamma must be >= 0"),
    ("kd", dict(alpha=-0.5), r"alpha must be in \[0, 1\]"),
    ("kd", dict(temperature=-4.0), "temperature must be > 0"),
    ("ce", dict(label_smoothing=1.0), r"label_smoothing must be in \[0, 1\)"),
    ("pl", dict(label_smoothing=-0.1), "label_smoothing must be in"),
])
def test_out_of_range_hparams(name, hp, match):
  with pytest.raises(ValueError, match=match):
    losses.get_method(name, **hp)


@pytest.mark.parametrize("name,hp", [
    ("byot", "temperature"), ("eed", "temperature"), ("mate", "temperature"),
    ("erde", "temperature"), ("kd", "temperature"), ("imta", "temperature"),
    ("pl", "t0"), ("pl_const", "temperature")])
def test_numpy_and_jax_scalars_are_accepted(name, hp):
  # A temperature read from an array (np.float32, a 0-d jnp array) is a
  # number like any other; 0 of the same types is still refused.
  for value in (np.float32(2.0), jnp.asarray(2.0)):
    losses.get_method(name, **{hp: value})
  for value in (np.float32(0.0), jnp.asarray(float("nan"))):
    with pytest.raises(ValueError, match="must be > 0"):
      losses.get_method(name, **{hp: value})


def test_defaults_match_methods_md():
  for name in ALL:
    method = losses.get_method(name)
    assert method.name == name
    assert method.needs_teacher == (name in ("erde", "kd"))
    assert method.gradient_equilibrium == (name == "imta")
  defaults = {
      "sdn": dict(tau_max=None),
      "byot": dict(alpha=0.3, temperature=3.0, feature_weight=0.03),
      "eed": dict(output_loss="mse", temperature=3.0, kl_weight=0.1,
                  feature_loss=True),
      "mate": dict(temperature=3.0, beta=0.7),
      "erde": dict(temperature=4.0, alpha=0.5, gamma=1.0, kl_on_wrong=False),
      "kd": dict(temperature=4.0, alpha=0.5),
      "imta": dict(temperature=3.0, gamma=0.9, class_mean=True),
  }
  registry = losses._REGISTRY  # pylint: disable=protected-access
  for name, want in defaults.items():
    params = inspect.signature(registry[name]).parameters
    for k, v in want.items():
      assert params[k].default == v, (name, k)


def _problems(num_exits=3, batch=5, classes=4, dim=6, n=3, seed=0):
  """n problems; problem 1 is partly, problem 2 entirely unlabeled."""
  rng = np.random.default_rng(seed)
  outputs = {
      "logits": rng.standard_normal((n, num_exits, batch, classes)),
      "features": rng.standard_normal((n, num_exits, batch, dim)),
      "teacher_logits": rng.standard_normal((n, num_exits, batch, classes)),
  }
  outputs = {k: v.astype(np.float32) for k, v in outputs.items()}
  y = rng.integers(0, classes, (n, batch))
  if n == 3:
    y[1, ::2] = -1
    y[2] = -1
  return outputs, y.astype(np.int32)


@pytest.mark.parametrize("name", ALL)
def test_every_method_jits_vmaps_and_differentiates(name):
  """jit(vmap(value_and_grad)); an unlabeled batch gives CE 0, finite grads."""
  num_exits, batch, classes, dim, n = 3, 5, 4, 6, 3
  method = losses.get_method(name)
  outputs, y = _problems(num_exits, batch, classes, dim, n)
  if not method.needs_teacher:
    del outputs["teacher_logits"]
  params = method.init_params(num_exits)
  state = method.init_state()

  def loss_fn(outputs, y, params):
    return method.loss_fn(outputs, y, params=params, state=state,
                          progress=jnp.float32(0.5))

  fn = jax.jit(jax.vmap(jax.value_and_grad(loss_fn, argnums=(0, 2),
                                           has_aux=True),
                        in_axes=(0, 0, None)))
  (loss, metrics), (g_out, g_params) = fn(outputs, y, params)
  chex.assert_shape(loss, (n,))
  chex.assert_shape(g_out["logits"], (n, num_exits, batch, classes))
  chex.assert_tree_all_finite((loss, metrics, g_out, g_params))
  for key, value in metrics.items():
    chex.assert_shape(value, (n,), custom_message=key)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
  for i in range(num_exits):
    assert float(metrics[f"ce/exit{i}"][2]) == 0.0
    assert float(metrics[f"ce/exit{i}"][0]) > 0.0
  if method.needs_teacher:
    np.testing.assert_array_equal(g_out["teacher_logits"], 0.0)
  if name == "mate":
    chex.assert_shape(g_params["ensemble_logits"], (n, num_exits, num_exits))


@pytest.mark.parametrize("name", ALL)
def test_label_smoothing_smooths_every_methods_ce(name):
  """With label_smoothing eps every method's per-exit CE is the CE against
  (1 - eps) one_hot + eps / C (NumPy, float64); None is plain CE."""
  num_exits, batch, classes, eps = 3, 5, 4, 0.2
  outputs, y = _problems(num_exits, batch, classes, 6, n=2)
  if not losses.get_method(name).needs_teacher:
    del outputs["teacher_logits"]
  got = {}
  for ls in (None, eps):
    method = losses.get_method(name, label_smoothing=ls)
    params = method.init_params(num_exits)
    for k in range(2):  # Problem 1 is partly unlabeled.
      o = {key: jnp.asarray(v[k]) for key, v in outputs.items()}
      _, m = method.loss_fn(o, jnp.asarray(y[k]), params=params,
                            state=method.init_state(), progress=0.5)
      got[ls, k] = [float(m[f"ce/exit{i}"]) for i in range(num_exits)]
  for k in range(2):
    lab = y[k] >= 0
    for i in range(num_exits):
      logp = np_reference.log_softmax(outputs["logits"][k, i])
      target = (1 - eps) * np.eye(classes)[np.maximum(y[k], 0)] + eps / classes
      want = np.sum(-(target * logp).sum(-1) * lab) / lab.sum()
      np.testing.assert_allclose(got[eps, k][i], want, rtol=1e-5)
      np.testing.assert_allclose(
          got[None, k][i], np_reference.ce(outputs["logits"][k, i], y[k]),
          rtol=1e-5)


def test_check_grads_on_small_cases():
  """Finite differences vs autodiff where no stop_gradient hides a path.

  Float32 losses: central differences with eps = 1e-2 keep both the
  truncation (eps^2) and the rounding (1e-7 / eps) error below the
  tolerance.
  """
  outputs, y = _problems(num_exits=3, batch=3, classes=4, n=1, seed=1)
  z, zt, y = outputs["logits"][0], outputs["teacher_logits"][0], y[0]
  y[0] = -1
  # P&L: the final exit is the detached teacher, so vary the early exits only.
  pl = jax.jit(lambda early: phuong_lampert.distillation_loss(
      jnp.concatenate([early, z[-1:]]), y, temperature=2.0, c=0.5)[0])
  jtu.check_grads(pl, (z[:-1],), order=1, modes=["rev"], eps=1e-2)
  # ERDE: student logits only (the teacher is a constant input).
  er = jax.jit(lambda z: erde.erde_loss(z, zt, y, temperature=2.0)[0])
  jtu.check_grads(er, (z,), order=1, modes=["rev"], eps=1e-2)
  # MATE: L_A as a function of the teacher-weight logits A.
  l_a = jax.jit(lambda a: mate.mate_loss(z, y, a)[1]["loss/teacher"])
  a = jnp.asarray(np.random.default_rng(2).standard_normal((3, 3)),
                  jnp.float32)
  jtu.check_grads(l_a, (a,), order=1, modes=["rev"], eps=1e-2)
