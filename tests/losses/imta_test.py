"""IMTA's one-for-all KD against a NumPy re-implementation (docs/methods.md §9)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mexd import losses
from mexd.losses import imta
import np_reference as ref

SHAPES = [(1, 1, 2), (2, 5, 3), (4, 8, 10)]


def np_imta(z, y, *, temp, gamma, class_mean):
  """CE_{E-1} + sum_{i<E-1} [(1-g) CE_i + g T^2 mean_b KL(t||p_i) / s]."""
  num_exits, num_classes = len(z), z.shape[-1]
  s = num_classes if class_mean else 1.0
  loss = ref.ce(z[-1], y)
  for i in range(num_exits - 1):
    loss += (1 - gamma) * ref.ce(z[i], y)
    loss += gamma * temp**2 * np.mean(ref.kl(z[-1], z[i], temp)) / s
  return loss


@pytest.mark.parametrize("shape,hp", zip(SHAPES, [
    dict(temperature=3.0, gamma=0.9, class_mean=True),
    dict(temperature=1.0, gamma=0.1, class_mean=True),
    dict(temperature=2.5, gamma=0.5, class_mean=False)]))
def test_imta_matches_numpy(shape, hp):
  z, _, y = ref.problems(0, *shape)
  method = losses.get_method("imta", **hp)
  assert method.gradient_equilibrium and not method.needs_teacher
  fn = jax.jit(jax.vmap(lambda z, y: method.loss_fn(
      {"logits": z}, y, params={}, state={}, progress=1.0)))
  loss, metrics = fn(z, y)
  for n in range(len(z)):
    ref.close(loss[n], np_imta(z[n], y[n], temp=hp["temperature"],
                               gamma=hp["gamma"],
                               class_mean=hp["class_mean"]))
    for i in range(shape[0] - 1):
      ref.close(metrics[f"kd/exit{i}"][n],
                np.mean(ref.kl(z[n, -1], z[n, i], hp["temperature"])))


def test_final_exit_gets_ce_only_and_no_teacher_gradient():
  z, _, y = ref.problems(1, 3, 6, 5)
  z, y = z[0], y[0]
  grad = jax.grad(lambda z: imta.imta_loss(z, y, gamma=0.7)[0])(z)
  # The teacher is detached: the final exit's gradient is its CE's alone.
  np.testing.assert_allclose(grad[-1], ref.ce_grad(z[-1], y), rtol=1e-5,
                             atol=1e-6)
  # gamma = 1: the early exits learn from the teacher only.
  g1 = jax.grad(lambda e: imta.imta_loss(jnp.concatenate([e, z[-1:]]), y,
                                         gamma=1.0)[1]["loss/ce"])(z[:-1])
  np.testing.assert_array_equal(g1, 0.0)


@pytest.mark.parametrize("hp,match", [
    (dict(gamma=1.5), r"gamma must be in \[0, 1\]"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(temperature=float("nan")), "temperature must be > 0"),
])
def test_out_of_range_hparams(hp, match):
  with pytest.raises(ValueError, match=match):
    losses.get_method("imta", **hp)


def test_second_stage_distils_from_the_teachers_final_exit():
  z, _, y = ref.problems(2, 3, 6, 5)
  zt = np.random.default_rng(3).standard_normal((2,) + z.shape[2:])
  zt = zt.astype(np.float32)  # A 2-exit teacher: only its final exit counts.
  method = losses.get_method("imta", target="teacher", temperature=2.0)
  assert method.needs_teacher and method.gradient_equilibrium
  loss, m = method.loss_fn({"logits": z[0], "teacher_logits": zt}, y[0],
                           params={}, state={}, progress=1.0)
  want = ref.ce(z[0, -1], y[0]) + sum(
      0.1 * ref.ce(z[0, i], y[0])
      + 0.9 * 4.0 * np.mean(ref.kl(zt[-1], z[0, i], 2.0)) / 5
      for i in range(2))
  ref.close(loss, want)
  with pytest.raises(ValueError, match="unknown target 'ensemble'"):
    losses.get_method("imta", target="ensemble")
