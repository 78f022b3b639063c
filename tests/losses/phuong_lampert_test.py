"""Phuong & Lampert (DBT) vs a NumPy re-implementation of docs/methods.md §1.

The code reports the distillation term as KL (soft cross-entropy minus the
teacher entropy; same gradient), and so does the reference here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mexd.losses import phuong_lampert
import np_reference as ref

SHAPES = [(1, 1, 2), (2, 5, 3), (4, 8, 10)]


def np_pl(z, y, *, c, temp, scale):
  """s [(1-C) sum_i CE_i + C T^2 sum_{i<E-1} mean_b KL(t || p_i^T)]."""
  loss = (1 - c) * sum(ref.ce(z[i], y) for i in range(len(z)))
  for i in range(len(z) - 1):
    loss += c * temp**2 * np.mean(ref.kl(z[-1], z[i], temp))
  return scale * loss


def np_mean_max_prob(z_final, temp):
  return np.mean(ref.softmax(z_final / temp).max(-1))


def problems(seed, num_exits, batch, classes):
  """4 problems: labeled, 40% unlabeled, all unlabeled, a single class."""
  z, _, y = ref.problems(seed, num_exits, batch, classes)
  return z, y


def batched(method, keep=()):
  """jit(vmap(loss_fn)) over the problems; the state is a shared argument.

  Returns `fn(outputs, labels, state)`; build it once per method so new
  temperatures reuse the compiled program. Only metrics starting with a
  prefix in `keep` come back (fewer outputs compile faster).
  """
  def one(o, y, s):
    loss, metrics = method.loss_fn(o, y, params={}, state=s, progress=1.0)
    return loss, {k: v for k, v in metrics.items()
                  if k.startswith(tuple(keep))}

  return jax.jit(jax.vmap(one, in_axes=(0, 0, None)))


@pytest.mark.parametrize("shape,c,scale", zip(
    SHAPES, [0.5, 0.3, 1.0], [1.0, 10 / 11, 2.0]))
def test_pl_matches_numpy(shape, c, scale):
  num_exits = shape[0]
  z, y = problems(0, *shape)
  run = batched(phuong_lampert.make_pl(c=c, global_scale=scale),
                keep=["mean_max_prob", "temperature", "kd/", "ce/"])
  for temp in (1.0, 2.5, 0.7):  # T is traced state: one compile
    loss, m = run({"logits": z}, y, {"temperature": jnp.float32(temp)})
    for n in range(len(z)):
      ref.close(loss[n], np_pl(z[n], y[n], c=c, temp=temp, scale=scale))
      ref.close(m["mean_max_prob"][n], np_mean_max_prob(z[n, -1], temp))
      ref.close(m["temperature"][n], temp)
      for i in range(num_exits - 1):
        ref.close(m[f"kd/exit{i}"][n],
                  np.mean(ref.kl(z[n, -1], z[n, i], temp)))
      for i in range(num_exits):
        ref.close(m[f"ce/exit{i}"][n], ref.ce(z[n, i], y[n]))


@pytest.mark.parametrize("shape,c,temp", zip(
    SHAPES, [0.5, 0.0, 0.8], [4.0, 0.5, 2.0]))
def test_pl_const_matches_numpy(shape, c, temp):
  z, y = problems(1, *shape)
  method = phuong_lampert.make_pl_const(c=c, temperature=temp)
  loss, _ = batched(method)({"logits": z}, y, {})
  for n in range(len(z)):
    ref.close(loss[n], np_pl(z[n], y[n], c=c, temp=temp, scale=1.0))


def test_final_exit_gets_only_the_ce_gradient():
  z, y = problems(2, 3, 6, 5)
  z, y = z[1], y[1]  # partly unlabeled
  c, temp, scale = 0.5, 2.0, 10 / 11

  def loss(z):
    return phuong_lampert.distillation_loss(
        z, y, temperature=jnp.float32(temp), c=c, global_scale=scale)[0]

  g = jax.jit(jax.grad(loss))(z)
  np.testing.assert_allclose(g[-1], scale * (1 - c) * ref.ce_grad(z[-1], y),
                             atol=1e-6)
  # Early exits: s [(1-C) dCE + C T^2 dKL], dKL/dz = (p^T - q) / (T B).
  q = ref.softmax(z[-1] / temp)
  for i in range(2):
    pt = ref.softmax(z[i] / temp)
    want = scale * ((1 - c) * ref.ce_grad(z[i], y)
                    + c * temp * (pt - q) / len(y))
    np.testing.assert_allclose(g[i], want, atol=1e-6)


def test_temperature_sequence_by_hand():
  method = phuong_lampert.make_pl()
  state = method.init_state()
  np.testing.assert_array_equal(state["temperature"], 1.0)
  temps = []
  for mp in (0.6, 0.4, 0.7, 0.5):  # 0.5 is not > 0.5: no change
    state = method.update_state(state, {"mean_max_prob": jnp.float32(mp)})
    temps.append(float(state["temperature"]))
  np.testing.assert_allclose(temps, [1.05, 1.05, 1.1025, 1.1025], rtol=1e-6)
  custom = phuong_lampert.make_pl(t0=2.0, t_mult=1.5, max_prob=0.9)
  state = custom.update_state(custom.init_state(),
                              {"mean_max_prob": jnp.float32(0.95)})
  np.testing.assert_allclose(state["temperature"], 3.0, rtol=1e-6)


def test_temperature_update_uses_this_steps_temperature():
  """Step k's loss uses T_k; T_{k+1} follows from the max-prob at T_k."""
  rng = np.random.default_rng(3)
  z = rng.standard_normal((1, 3, 8, 5)).astype(np.float32)
  z[0, -1] *= 6.0  # a confident teacher: mean max-prob > 0.5 at T = 1
  y = rng.integers(0, 5, (1, 8)).astype(np.int32)
  method = phuong_lampert.make_pl(c=0.5)
  run = batched(method, keep=["mean_max_prob"])
  state, temp = method.init_state(), 1.0
  for _ in range(3):
    loss, m = run({"logits": z}, y, state)
    ref.close(loss[0], np_pl(z[0], y[0], c=0.5, temp=temp, scale=1.0))
    mp = np_mean_max_prob(z[0, -1], temp)
    ref.close(m["mean_max_prob"][0], mp)
    state = method.update_state(state, {"mean_max_prob": m["mean_max_prob"][0]})
    temp = temp * 1.05 if mp > 0.5 else temp
    ref.close(state["temperature"], temp)
  assert temp > 1.0
