"""MATE (project reading) vs a NumPy re-implementation of docs/methods.md §3.1.

Distillation values are KL (as P&L's code reports them); gradients equal the
soft cross-entropy ones.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mexd.losses import mate
import np_reference as ref

SHAPES = [(1, 1, 2), (2, 5, 3), (4, 8, 10)]


def np_weights(a, restrict_deeper=False):
  """W = softmax(P + A), P[k, j] = -|j - min(k + 1, E - 1)|."""
  e = len(a)
  k, j = np.meshgrid(np.arange(e), np.arange(e), indexing="ij")
  scores = -np.abs(j - np.minimum(k + 1, e - 1)) + a.astype(np.float64)
  if restrict_deeper:
    scores = np.where(j >= k, scores, -np.inf)
  return ref.softmax(scores)


def np_mix(beta, e):
  """M[i, k]: beta_i on the primary teacher k = i, (1-beta_i)/(E-1) else."""
  b = np.broadcast_to(np.asarray(beta, np.float64), (e,))[:, None]
  return np.where(np.eye(e) > 0, b, (1 - b) / max(e - 1, 1))


def np_mate(z, y, a, *, temp, beta, restrict_deeper=False, objective="ce"):
  """Returns (loss, W, teacher logits, L_A)."""
  z = z.astype(np.float64)
  e = len(z)
  w = np_weights(a, restrict_deeper)
  t = np.einsum("kj,jbc->kbc", w, z)
  l_a = sum(ref.ce(t[k], y) for k in range(e))
  loss = sum(ref.ce(z[i], y) for i in range(e))
  if e > 1:
    mix = np_mix(beta, e)
    for i in range(e):
      for k in range(e):
        loss += temp**2 * mix[i, k] * np.mean(ref.kl(t[k], z[i], temp))
    if objective == "ce":
      loss += l_a
  return loss, w, t, l_a


def problems(seed, num_exits, batch, classes):
  """4 problems: labeled, 40% unlabeled, all unlabeled, a single class."""
  rng = np.random.default_rng(seed)
  z, _, y = ref.problems(rng, num_exits, batch, classes)
  a = 0.7 * rng.standard_normal((num_exits, num_exits))
  return z, y, a.astype(np.float32)


def run_batched(method, z, y, a):
  """jit(vmap(loss_fn)) over the problems; A is a shared jit argument."""
  fn = jax.vmap(lambda z, y, p: method.loss_fn(
      {"logits": z}, y, params=p, state={}, progress=1.0),
                in_axes=(0, 0, None))
  return jax.jit(fn)(z, y, {"ensemble_logits": a})


def check_against_numpy(method, z, y, a, **np_kw):
  loss, m = run_batched(method, z, y, a)
  e = z.shape[1]
  for n in range(len(z)):
    want, w, t, l_a = np_mate(z[n], y[n], a, **np_kw)
    ref.close(loss[n], want)
    lab = y[n] >= 0
    for k in range(e):
      acc = np.sum((t[k].argmax(-1) == y[n]) & lab) / max(lab.sum(), 1)
      ref.close(m[f"mate/teacher_acc{k}"][n], acc)
      ref.close(m[f"mate/teacher_ce{k}"][n], ref.ce(t[k], y[n]))
      for j in range(e):
        ref.close(m[f"mate/w{k}_{j}"][n], w[k, j])
    if e > 1 and np_kw.get("objective", "ce") == "ce":
      ref.close(m["loss/teacher"][n], l_a)
  return loss, m


@pytest.mark.parametrize("shape,temp,beta", zip(
    SHAPES, [3.0, 1.0, 2.0], [0.7, 0.2, 1.0]))
def test_mate_matches_numpy(shape, temp, beta):
  z, y, a = problems(0, *shape)
  method = mate.make_mate(temperature=temp, beta=beta)
  loss, m = check_against_numpy(method, z, y, a, temp=temp, beta=beta)
  if shape[0] == 1:  # one exit: just CE
    for n in range(len(z)):
      ref.close(loss[n], ref.ce(z[n, 0], y[n]))
    assert "loss/teacher" not in m and "loss/kd" not in m


@pytest.mark.parametrize("hp", [
    dict(restrict_deeper=True), dict(beta=[0.9, 0.7, 0.5, 0.3]),
    dict(weights_objective="kd")])
def test_mate_alternatives_match_numpy(hp):
  z, y, a = problems(1, 4, 8, 10)
  method = mate.make_mate(temperature=2.0, **hp)
  _, m = check_against_numpy(
      method, z, y, a, temp=2.0, beta=hp.get("beta", 0.7),
      restrict_deeper=hp.get("restrict_deeper", False),
      objective=hp.get("weights_objective", "ce"))
  if hp.get("restrict_deeper"):  # teacher k puts no weight on exits j < k
    for k in range(4):
      for j in range(k):
        np.testing.assert_array_equal(m[f"mate/w{k}_{j}"], 0.0)
  if hp.get("weights_objective") == "kd":
    assert "loss/teacher" not in m


def test_prior_and_initial_weights_by_hand():
  np.testing.assert_array_equal(mate.depth_prior(4), [
      [-1, 0, -1, -2], [-2, -1, 0, -1], [-3, -2, -1, 0], [-3, -2, -1, 0]])
  np.testing.assert_array_equal(mate.depth_prior(1), [[0]])
  a = mate.make_mate().init_params(3)["ensemble_logits"]
  np.testing.assert_array_equal(a, np.zeros((3, 3)))
  w = jax.jit(mate.teacher_weights)(a)
  e1 = math.exp(-1)
  np.testing.assert_allclose(w[0], np.array([e1, 1, e1]) / (1 + 2 * e1),
                             rtol=1e-6)
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)


def test_gradients_of_a_come_from_l_a_only():
  z, y, a = problems(2, 4, 6, 5)
  z, y = z[1], y[1]  # partly unlabeled
  temp, beta = 2.0, 0.7

  def parts(z, a):
    loss, m = mate.mate_loss(z, y, a, temperature=temp, beta=beta)
    return loss, m["loss/teacher"]

  @jax.jit
  def grads(z, a):
    g_loss = jax.grad(lambda z, a: parts(z, a)[0], argnums=(0, 1))(z, a)
    g_la = jax.grad(lambda z, a: parts(z, a)[1], argnums=(0, 1))(z, a)
    return g_loss, g_la

  (gz, ga), (gz_la, ga_la) = grads(z, a)
  # L_A moves A only; A is moved by L_A only.
  np.testing.assert_array_equal(gz_la, 0.0)
  np.testing.assert_allclose(ga, ga_la, rtol=1e-6, atol=1e-7)
  # dL_A/dA through the softmax, by hand: G[k, j] = <dCE/dt_k, z_j>.
  _, w, t, _ = np_mate(z, y, a, temp=temp, beta=beta)
  g_t = np.stack([ref.ce_grad(t[k], y) for k in range(4)])
  big_g = np.einsum("kbc,jbc->kj", g_t, z.astype(np.float64))
  want = w * (big_g - np.sum(w * big_g, -1, keepdims=True))
  np.testing.assert_allclose(ga, want, atol=1e-6)
  # Exit gradients treat the teachers as constants:
  # dCE_i + T sum_k M[i, k] (p_i^T - q_k) / B.
  mix = np_mix(beta, 4)
  q = ref.softmax(t / temp)
  for i in range(4):
    pt = ref.softmax(z[i] / temp)
    kd = sum(mix[i, k] * (pt - q[k]) for k in range(4))
    np.testing.assert_allclose(gz[i], ref.ce_grad(z[i], y)
                               + temp * kd / len(y), atol=1e-6)


def test_mate_errors():
  z = jnp.zeros((3, 2, 4))
  y = jnp.zeros(2, jnp.int32)
  with pytest.raises(ValueError, match=r"shape \(2, 2\).*3 exits"):
    mate.mate_loss(z, y, jnp.zeros((2, 2)))
  with pytest.raises(ValueError, match="beta has 2 entries.*3 exits"):
    mate.make_mate(beta=[0.5, 0.5]).loss_fn(
        {"logits": z}, y, params={"ensemble_logits": jnp.zeros((3, 3))},
        state={}, progress=1.0)
  with pytest.raises(ValueError, match="weights_objective.*valid: ce, kd"):
    mate.make_mate(weights_objective="mse")
  with pytest.raises(ValueError, match="beta"):
    mate.make_mate(beta=[0.5, 1.5])
