"""The PyTorch twins of the speed benchmarks compute mexd's networks.

`torch_reference.MultiExitSmallCNN` loaded with a mexd SmallCNN's variables
(`load_small_cnn`) must give the same logits of every exit, in eval mode
(running statistics, perturbed away from 0 / 1 so that they matter) and in
train mode (batch statistics); otherwise the benchmark would time another
network. Runs only where torch (the optional `bench` extra) is installed.
"""

import importlib.util

import chex
import jax
import numpy as np
import pytest

from benchmarks import fixtures

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                reason="torch (the bench extra) not installed")


def _variables(model, shape, seed=0):
  """Random init with batch statistics and BN affine terms off 0 / 1."""
  x = np.zeros((1,) + shape, np.float32)
  v = jax.jit(model.init)(jax.random.PRNGKey(seed), x)
  rng = np.random.default_rng(seed)

  def perturb(path, a):
    name = jax.tree_util.keystr(path)
    a = np.asarray(a)
    if "'var'" in name or "'scale'" in name:
      return (a * rng.uniform(0.5, 2.0, a.shape)).astype(np.float32)
    if "'mean'" in name or ("bn" in name and "'bias'" in name):
      return (a + rng.normal(0, 0.2, a.shape)).astype(np.float32)
    return a
  return jax.tree_util.tree_map_with_path(perturb, jax.device_get(v))


@pytest.mark.parametrize("name, downsample", [
    ("fashion_cnn", "maxpool"), ("fashion_student", "maxpool"),
    ("fashion_cnn", "stride")])
def test_small_cnn_twin_equals_mexd(name, downsample):
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
  shape = fixtures.NETS[name][0]
  model = fixtures.net(name).clone(downsample=downsample)
  variables = _variables(model, shape)
  twin = torch_reference.twin(model, name, 10)
  torch_reference.load_small_cnn(twin, variables)
  n_torch = sum(p.numel() for p in twin.parameters())
  n_jax = sum(a.size for a in jax.tree.leaves(variables["params"]))
  assert n_torch == n_jax
  x = np.random.default_rng(1).normal(size=(6,) + shape).astype(np.float32)
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
  want = np.asarray(model.apply(variables, x, train=False)[0])
  chex.assert_shape(want, (len(model.widths), 6, 10))
  with torch.no_grad():
    got = twin.eval()(xt)[0].numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  (train_logits, _), _ = model.apply(variables, x, train=True,
                                     mutable=["batch_stats"])
  with torch.no_grad():
    got = twin.train()(xt)[0].numpy()
  np.testing.assert_allclose(got, np.asarray(train_logits), rtol=1e-4,
                             atol=1e-4)
  # The eval logits depend on the running statistics (so the copy counts).
  assert np.abs(np.asarray(train_logits) - want).max() > 1e-2


def test_load_small_cnn_refuses_another_shape():
  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
  student = fixtures.net("fashion_student")
  variables = _variables(fixtures.net("fashion_cnn"), (28, 28, 1))
  twin = torch_reference.twin(student, "fashion_student", 10)
  with pytest.raises(ValueError, match="shape"):
    torch_reference.load_small_cnn(twin, variables)
