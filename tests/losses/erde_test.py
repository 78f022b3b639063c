"""ERDE and plain KD against NumPy re-implementations of docs/methods.md §4."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mexd.losses import erde
import np_reference as ref

SHAPES = [(1, 1, 2), (2, 5, 3), (4, 8, 10)]


def np_erde(z, zt, y, *, temp, alpha, gamma, kl_on_wrong):
  """sum_i [a CE_i + (1-a) T^2 mean_b right KL + g mean_b wrong (log C - H)].

  Unlabeled examples count as "teacher right" (the project's reading).
  """
  loss = 0.0
  num_classes = z.shape[-1]
  for i in range(len(z)):
    wrong = (zt[i].argmax(-1) != y) & (y >= 0)
    kl_mask = np.ones_like(wrong) if kl_on_wrong else ~wrong
    logp = ref.log_softmax(z[i])
    ent = -np.sum(np.exp(logp) * logp, -1)
    loss += alpha * ref.ce(z[i], y)
    loss += (1 - alpha) * temp**2 * np.mean(kl_mask * ref.kl(zt[i], z[i], temp))
    loss += gamma * np.mean(wrong * (np.log(num_classes) - ent))
  return loss


def problems(seed, num_exits, batch, classes):
  """4 problems: labeled, 40% unlabeled, all unlabeled, a single class.

  The teacher is pushed towards the true class on a random half of the
  examples, so it is right on some and wrong on others.
  """
  rng = np.random.default_rng(seed)
  z = 2.0 * rng.standard_normal((4, num_exits, batch, classes))
  truth = rng.integers(0, classes, (4, batch))
  truth[3] = rng.integers(0, classes)
  push = (4.0 * np.eye(classes)[truth][:, None]
          * (rng.random((4, 1, batch, 1)) < 0.5))               # [4, 1, B, C]
  zt = 2.0 * rng.standard_normal(z.shape) + push
  y = truth.copy()
  y[1] = np.where(rng.random(batch) < 0.4, -1, y[1])
  y[2] = -1
  return (z.astype(np.float32), zt.astype(np.float32), y.astype(np.int32))


def run_batched(method, z, zt, y, keep=()):
  """jit(vmap(loss_fn)); only metrics starting with a prefix in `keep`."""
  def one(z, zt, y):
    loss, metrics = method.loss_fn({"logits": z, "teacher_logits": zt}, y,
                                   params={}, state={}, progress=1.0)
    return loss, {k: v for k, v in metrics.items()
                  if k.startswith(tuple(keep))}

  return jax.jit(jax.vmap(one))(z, zt, y)


@pytest.mark.parametrize("shape,hp", zip(SHAPES, [
    dict(temperature=4.0, alpha=0.5, gamma=1.0, kl_on_wrong=False),
    dict(temperature=1.0, alpha=0.2, gamma=0.5, kl_on_wrong=True),
    dict(temperature=2.5, alpha=0.8, gamma=2.0, kl_on_wrong=False)]))
def test_erde_matches_numpy(shape, hp):
  z, zt, y = problems(0, *shape)
  method = erde.make_erde(**hp)
  assert method.needs_teacher
  loss, m = run_batched(method, z, zt, y, keep=["teacher_err/", "loss/ent"])
  for n in range(len(z)):
    ref.close(loss[n], np_erde(z[n], zt[n], y[n], temp=hp["temperature"],
                               alpha=hp["alpha"], gamma=hp["gamma"],
                               kl_on_wrong=hp["kl_on_wrong"]))
    lab = y[n] >= 0
    for i in range(shape[0]):
      err = np.sum((zt[n, i].argmax(-1) != y[n]) & lab) / max(lab.sum(), 1)
      ref.close(m[f"teacher_err/exit{i}"][n], err)
  # Unlabeled examples are never "teacher wrong": no entropy term.
  np.testing.assert_array_equal(m["loss/ent"][2], 0.0)


@pytest.mark.parametrize("shape,temp,alpha", zip(
    SHAPES, [4.0, 0.5, 2.0], [0.5, 0.0, 1.0]))
def test_kd_matches_numpy(shape, temp, alpha):
  z, zt, y = problems(1, *shape)
  method = erde.make_kd(temperature=temp, alpha=alpha)
  assert method.needs_teacher and method.name == "kd"
  loss, m = run_batched(method, z, zt, y, keep=["loss/"])
  assert "loss/ent" not in m
  for n in range(len(z)):
    ref.close(loss[n], np_erde(z[n], zt[n], y[n], temp=temp, alpha=alpha,
                               gamma=0.0, kl_on_wrong=True))


def test_no_gradient_into_the_teacher():
  z, zt, y = problems(2, 4, 8, 10)
  z, zt, y = z[1], zt[1], y[1]

  def loss(z, zt):
    return erde.erde_loss(z, zt, y, temperature=4.0, alpha=0.5, gamma=1.0)[0]

  gz, gt = jax.jit(jax.grad(loss, argnums=(0, 1)))(z, zt)
  np.testing.assert_array_equal(gt, 0.0)
  assert np.all(np.isfinite(gz)) and np.abs(gz).max() > 0


def test_teacher_always_right_gives_exactly_zero_entropy_term():
  rng = np.random.default_rng(3)
  y = rng.integers(0, 5, 8).astype(np.int32)
  z = rng.standard_normal((3, 8, 5)).astype(np.float32)
  zt = (rng.standard_normal((3, 8, 5)) + 10.0 * np.eye(5)[y]).astype(
      np.float32)
  y[2] = -1  # an unlabeled example counts as right, too

  def both(z):
    _, m = erde.erde_loss(z, zt, y, gamma=1.0)
    _, m0 = erde.erde_loss(z, zt, y, gamma=0.0, kl_on_wrong=True)
    return m, m0

  m, m0 = jax.jit(both)(z)
  assert float(m["loss/ent"]) == 0.0
  for i in range(3):
    assert float(m[f"ent/exit{i}"]) == 0.0
    assert float(m[f"teacher_err/exit{i}"]) == 0.0
  # ... and then ERDE is plain KD.
  np.testing.assert_allclose(m["loss"], m0["loss"], rtol=1e-6)


def test_teacher_always_wrong_drops_the_kl():
  y = np.array([0, 1, 2, 3], np.int32)
  zt = np.tile(10.0 * np.eye(4)[(y + 1) % 4], (2, 1, 1)).astype(np.float32)
  z = np.random.default_rng(4).standard_normal((2, 4, 4)).astype(np.float32)
  _, m = jax.jit(lambda z: erde.erde_loss(z, zt, y))(z)
  assert float(m["loss/kd"]) == 0.0 and float(m["loss/ent"]) > 0.0
  np.testing.assert_allclose([m["teacher_err/exit0"], m["teacher_err/exit1"]],
                             1.0)


def test_erde_errors():
  z = jnp.zeros((3, 2, 4))
  y = jnp.zeros(2, jnp.int32)
  with pytest.raises(ValueError, match="teacher has 2 exits and the student 3"):
    erde.erde_loss(z, jnp.zeros((2, 2, 4)), y)
  with pytest.raises(ValueError, match="differ in batch or class size"):
    erde.erde_loss(z, jnp.zeros((3, 2, 5)), y)
  with pytest.raises(ValueError, match="needs outputs\\['teacher_logits'\\]"):
    erde.make_erde().loss_fn({"logits": z}, y, params={}, state={},
                             progress=1.0)
