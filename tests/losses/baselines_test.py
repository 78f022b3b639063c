"""CE, SDN and BYOT against NumPy re-implementations of docs/methods.md §5.

Every reference test runs `jit(vmap(loss_fn))` over a stack of problems of
one shape (fully labeled, partly unlabeled, all unlabeled, one class) and
compares each problem with a float64 NumPy re-implementation, so one compile
covers jit, vmap and the masks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mexd.losses import baselines
import np_reference as ref

# (E, B, C) with one per-shape setting; E = 1 / B = 1 / C = 2 is the smallest.
SHAPES = [(1, 1, 2), (2, 5, 3), (4, 8, 10)]


# NumPy float64 references for SDN and BYOT (CE, KL: np_reference). --------


def np_sdn_weights(num_exits, progress):
  tmax = np.minimum(0.15 * np.arange(1, num_exits), 1.0)
  return np.append(np.minimum(tmax, 0.01 + progress * tmax), 1.0)


def np_byot(z, y, f, *, alpha, temp, lam):
  loss = (1 - alpha) * sum(ref.ce(z[i], y) for i in range(len(z)))
  for i in range(len(z) - 1):
    loss += alpha * temp**2 * np.mean(ref.kl(z[-1], z[i], temp))
    loss += lam * ref.feat(f[i], f[-1])
  return loss


def problems(seed, num_exits, batch, classes, dim=6):
  """ref.problems (labeled, 40% unlabeled, all unlabeled, one class)."""
  return ref.problems(seed, num_exits, batch, classes, dim)


def run_batched(method, outputs, labels, *, params=None, state=None,
                progress=1.0, keep=()):
  """jit(vmap(loss_fn)) over the leading problem axis of outputs and labels.

  params, state and progress are jit arguments shared by the problems, so
  new values (a temperature, a progress) do not recompile. Only metrics
  starting with a prefix in `keep` come back.
  """
  num_exits = outputs["logits"].shape[1]
  params = method.init_params(num_exits) if params is None else params
  state = method.init_state() if state is None else state
  def one(o, y, p, s, t):
    loss, metrics = method.loss_fn(o, y, params=p, state=s, progress=t)
    return loss, _only(metrics, keep)

  fn = jax.vmap(one, in_axes=(0, 0, None, None, None))
  return jax.jit(fn)(outputs, labels, params, state, jnp.float32(progress))


def _only(metrics, keep):
  """The metrics whose names start with one of `keep` (fewer outputs compile
  faster)."""
  return {k: v for k, v in metrics.items() if k.startswith(tuple(keep))}


# CE. -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_ce_matches_numpy(shape):
  z, _, y = problems(0, *shape)
  loss, metrics = run_batched(baselines.make_ce(), {"logits": z}, y,
                              keep=["ce/"])
  for n in range(len(z)):
    ref.close(loss[n], sum(ref.ce(z[n, i], y[n]) for i in range(shape[0])))
    for i in range(shape[0]):
      ref.close(metrics[f"ce/exit{i}"][n], ref.ce(z[n, i], y[n]))
  assert np.all(np.asarray(loss[2]) == 0.0)  # all unlabeled


def test_ce_exit_weights_and_count_check():
  z, _, y = problems(1, 3, 5, 4)
  method = baselines.make_ce(exit_weights=[0.5, 0.0, 2.0])
  loss, _ = run_batched(method, {"logits": z}, y)
  for n in range(len(z)):
    ref.close(loss[n],
              0.5 * ref.ce(z[n, 0], y[n]) + 2.0 * ref.ce(z[n, 2], y[n]))
  with pytest.raises(ValueError, match="2 entries but the model has 3"):
    run_batched(baselines.make_ce(exit_weights=[1.0, 1.0]), {"logits": z}, y)


# SDN. ----------------------------------------------------------------------


def test_sdn_weights_hand_values():
  official = [0.15, 0.30, 0.45, 0.60, 0.75, 0.90]
  assert baselines.sdn_tau_max(6) == tuple(official)

  @jax.jit
  def weights():
    return (baselines.sdn_weights(7, 1.0), baselines.sdn_weights(7, 0.0),
            baselines.sdn_weights(3, 0.5), baselines.sdn_weights(9, 1.0),
            baselines.sdn_weights(1, 0.3))

  at_1, at_0, half, nine, one = weights()
  np.testing.assert_allclose(at_1, official + [1.0], rtol=1e-6)
  np.testing.assert_allclose(at_0, [0.01] * 6 + [1.0], rtol=1e-6)
  # Halfway: min(tau_max, 0.01 + 0.5 tau_max).
  np.testing.assert_allclose(half, [0.085, 0.16, 1.0], rtol=1e-6)
  # More than 6 ICs: the rule goes on, capped at the final exit's weight 1.
  np.testing.assert_allclose(nine, official + [1.0, 1.0, 1.0], rtol=1e-6)
  np.testing.assert_array_equal(one, [1.0])


@pytest.mark.parametrize("shape,progress", zip(SHAPES, [0.0, 0.3, 1.0]))
def test_sdn_matches_numpy(shape, progress):
  num_exits = shape[0]
  z, _, y = problems(2, *shape)
  loss, metrics = run_batched(baselines.make_sdn(), {"logits": z}, y,
                              progress=jnp.float32(progress),
                              keep=["sdn/"])
  w = np_sdn_weights(num_exits, progress)
  for n in range(len(z)):
    ref.close(loss[n],
              sum(w[i] * ref.ce(z[n, i], y[n]) for i in range(num_exits)))
    ref.close([metrics[f"sdn/tau/exit{i}"][n] for i in range(num_exits)], w)


def test_sdn_custom_tau_max_traced_progress():
  z, _, y = problems(3, 3, 4, 5)
  method = baselines.make_sdn(tau_max=[0.2, 0.4])
  fn = jax.jit(lambda p: method.loss_fn({"logits": z[0]}, y[0], params={},
                                        state={}, progress=p)[0])
  for p in (0.1, 0.9):  # one compile: progress is traced
    w = [min(0.2, 0.01 + p * 0.2), min(0.4, 0.01 + p * 0.4), 1.0]
    ref.close(fn(jnp.float32(p)), sum(w[i] * ref.ce(z[0, i], y[0])
                                      for i in range(3)))
  with pytest.raises(ValueError, match="2 entries but the model has 3"):
    method.loss_fn({"logits": jnp.zeros((4, 2, 3))}, jnp.zeros(2, jnp.int32),
                   params={}, state={}, progress=1.0)


# BYOT. ---------------------------------------------------------------------


@pytest.mark.parametrize("shape,hp", zip(SHAPES, [
    dict(alpha=0.3, temperature=3.0, feature_weight=0.03),
    dict(alpha=0.7, temperature=1.0, feature_weight=0.5),
    dict(alpha=1.0, temperature=0.5, feature_weight=0.1)]))
def test_byot_matches_numpy(shape, hp):
  num_exits = shape[0]
  z, f, y = problems(4, *shape)
  loss, metrics = run_batched(baselines.make_byot(**hp),
                              {"logits": z, "features": f}, y,
                              keep=["kd/", "feat/"])
  temp = hp["temperature"]
  for n in range(len(z)):
    ref.close(loss[n], np_byot(z[n], y[n], f[n], alpha=hp["alpha"],
                               temp=temp, lam=hp["feature_weight"]))
    for i in range(num_exits - 1):
      ref.close(metrics[f"kd/exit{i}"][n],
                np.mean(ref.kl(z[n, -1], z[n, i], temp)))
      ref.close(metrics[f"feat/exit{i}"][n], ref.feat(f[n, i], f[n, -1]))


def test_byot_stop_gradient_on_final_exit_and_features():
  z, f, y = problems(5, 3, 6, 4)
  z, f, y = z[1], f[1], y[1]  # partly unlabeled
  alpha, temp = 0.3, 3.0

  def loss(z, f):
    return baselines.byot_loss(z, y, f, alpha=alpha, temperature=temp,
                               feature_weight=0.5)[0]

  gz, gf = jax.jit(jax.grad(loss, argnums=(0, 1)))(z, f)
  # The final exit gets only (1 - alpha) * CE; its features no gradient.
  np.testing.assert_allclose(gz[-1], (1 - alpha) * ref.ce_grad(z[-1], y),
                             atol=1e-6)
  np.testing.assert_array_equal(gf[-1], 0.0)
  assert np.abs(gf[:-1]).max() > 0
  # Early exits: (1-a) CE + a T^2 KL, with d/dz KL = (p^T - q) / (T B).
  q = ref.softmax(z[-1] / temp)
  for i in range(2):
    pt = ref.softmax(z[i] / temp)
    want = ((1 - alpha) * ref.ce_grad(z[i], y)
            + alpha * temp * (pt - q) / len(y))
    np.testing.assert_allclose(gz[i], want, atol=1e-6)


def test_byot_needs_features_only_when_weighted():
  z, _, y = problems(6, 2, 3, 4)
  with pytest.raises(ValueError, match="features"):
    baselines.make_byot().loss_fn({"logits": z[0]}, y[0], params={}, state={},
                                  progress=1.0)
  loss, metrics = run_batched(baselines.make_byot(feature_weight=0.0),
                              {"logits": z}, y, keep=["loss/"])
  assert "loss/feat" not in metrics and np.all(np.isfinite(loss))
