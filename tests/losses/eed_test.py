"""EED against a NumPy re-implementation of docs/methods.md §2.1."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mexd.losses import eed
import np_reference as ref

SHAPES = [(1, 1, 2), (2, 5, 3), (4, 8, 10)]


def np_eed(z, y, f, *, output_loss, temp=3.0, kl_weight=0.1, features=True):
  """L_C + L_O + L_F with the logit / feature means as targets."""
  z, f = z.astype(np.float64), f.astype(np.float64)
  z_ens, f_ens = z.mean(0), f.mean(0)
  loss = 0.0
  for i in range(len(z)):
    loss += ref.ce(z[i], y)
    if output_loss == "mse":
      loss += np.mean((z[i] - z_ens) ** 2)
    else:
      loss += kl_weight * temp**2 * np.mean(ref.kl(z_ens, z[i], temp))
    if features:
      loss += ref.feat(f[i], f_ens)
  return loss


def problems(seed, num_exits, batch, classes, dim=6):
  """ref.problems (labeled, 40% unlabeled, all unlabeled, one class)."""
  return ref.problems(seed, num_exits, batch, classes, dim)


def run_batched(method, outputs, labels, keep=()):
  """jit(vmap(loss_fn)); only metrics starting with a prefix in `keep`."""
  def one(o, y):
    loss, metrics = method.loss_fn(o, y, params={}, state={}, progress=1.0)
    return loss, {k: v for k, v in metrics.items()
                  if k.startswith(tuple(keep))}

  return jax.jit(jax.vmap(one))(outputs, labels)


@pytest.mark.parametrize("shape", SHAPES)
def test_eed_mse_matches_numpy(shape):
  num_exits = shape[0]
  z, f, y = problems(0, *shape)
  loss, m = run_batched(eed.make_eed(), {"logits": z, "features": f}, y,
                        keep=["mse/", "feat/", "loss/mse"])
  for n in range(len(z)):
    ref.close(loss[n], np_eed(z[n], y[n], f[n], output_loss="mse"))
    z_ens = z[n].astype(np.float64).mean(0)
    for i in range(num_exits):
      ref.close(m[f"mse/exit{i}"][n], np.mean((z[n, i] - z_ens) ** 2))
      ref.close(m[f"feat/exit{i}"][n], ref.feat(f[n, i], f[n].mean(0)))
  if num_exits == 1:  # the ensemble of one exit is that exit
    np.testing.assert_allclose(m["loss/mse"], 0.0, atol=1e-7)


@pytest.mark.parametrize("shape,temp,kl_weight", zip(
    SHAPES, [3.0, 1.0, 0.5], [0.1, 1.0, 0.3]))
def test_eed_kl_matches_numpy(shape, temp, kl_weight):
  z, f, y = problems(1, *shape)
  method = eed.make_eed(output_loss="kl", temperature=temp,
                        kl_weight=kl_weight)
  loss, m = run_batched(method, {"logits": z, "features": f}, y,
                        keep=["kd/"])
  for n in range(len(z)):
    ref.close(loss[n], np_eed(z[n], y[n], f[n], output_loss="kl", temp=temp,
                              kl_weight=kl_weight))
    for i in range(shape[0]):
      ref.close(m[f"kd/exit{i}"][n],
                np.mean(ref.kl(z[n].astype(np.float64).mean(0), z[n, i],
                               temp)))


def test_eed_without_feature_loss_needs_no_features():
  z, f, y = problems(2, 4, 8, 10)
  loss, m = run_batched(eed.make_eed(feature_loss=False), {"logits": z}, y,
                        keep=["loss/"])
  assert "loss/feat" not in m
  for n in range(len(z)):
    ref.close(loss[n], np_eed(z[n], y[n], f[n], output_loss="mse",
                              features=False))
  with pytest.raises(ValueError, match="features"):
    eed.make_eed().loss_fn({"logits": z[0]}, y[0], params={}, state={},
                           progress=1.0)


@pytest.mark.parametrize("output_loss", ["mse", "kl"])
def test_ensemble_is_a_constant_for_the_gradient(output_loss):
  """grad of EED == grad with the ensemble passed in as a separate input."""
  z, f, y = problems(3, 4, 6, 5)
  z, f, y = z[1], f[1], y[1]  # partly unlabeled
  hp = dict(output_loss=output_loss, temperature=2.0, kl_weight=0.3)

  def full(z, f):
    return eed.eed_loss(z, y, f, **hp)[0]

  def with_targets(z, f, z_ens, f_ens):
    return eed.loss_with_targets(z, y, f, target_logits=z_ens,
                                 target_features=f_ens, **hp)[0]

  @jax.jit
  def all_grads(z, f, z_ens, f_ens):
    grads = jax.grad(full, argnums=(0, 1))(z, f)
    want = jax.grad(with_targets, argnums=(0, 1))(z, f, z_ens, f_ens)
    leaky = jax.grad(lambda z, f: with_targets(
        z, f, jnp.mean(z, 0), jnp.mean(f, 0)), argnums=(0, 1))(z, f)
    return grads, want, leaky

  grads, want, leaky = all_grads(z, f, np.mean(z, 0), np.mean(f, 0))
  for g, w in zip(grads, want):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
  # The check has teeth for the features: with the mask 1{f_i > 0 or
  # f_ens > 0}, letting gradients into the feature ensemble changes them.
  assert np.abs(leaky[1] - grads[1]).max() > 1e-4
  # For the logits the stop-gradient is invisible: both MSE to the mean and
  # KL(softmax(mean / T) || softmax(z_i / T)), summed over i, have zero
  # gradient w.r.t. the mean. So check the exit gradients by hand.
  np.testing.assert_allclose(leaky[0], grads[0], atol=1e-6)
  zd = z.astype(np.float64)
  for i in range(4):
    if output_loss == "mse":  # dCE + 2 (z_i - mean) / (B C)
      out = 2 * (zd[i] - zd.mean(0)) / z[i].size
    else:  # dCE + w T^2 (p_i^T - q) / (T B)
      q = ref.softmax(zd.mean(0) / 2.0)
      out = 0.3 * 2.0 * (ref.softmax(zd[i] / 2.0) - q) / len(y)
    np.testing.assert_allclose(grads[0][i], ref.ce_grad(z[i], y) + out,
                               atol=1e-6)


def test_unknown_output_loss():
  with pytest.raises(ValueError, match="unknown output_loss 'l1'.*mse, kl"):
    eed.make_eed(output_loss="l1")
  with pytest.raises(ValueError, match="unknown output_loss"):
    eed.loss_with_targets(jnp.zeros((2, 3, 4)), jnp.zeros(3, jnp.int32),
                          target_logits=jnp.zeros((3, 4)), output_loss="l1")
