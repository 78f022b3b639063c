"""Staged early exit on digits_cnn equals simulate() on one-pass logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mexd import models
from mexd.early_exit import policies
from mexd.early_exit import staged

N = 50


@pytest.fixture(scope="module")
def setup():
  """digits_cnn with random NumPy weights (no PRNG compiles), images, logits.

  Every head's output bias gets the same random offsets so that exits often
  agree (the patience policy then exits early too).
  """
  model = models.get_model("digits_cnn", num_classes=10)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, 8, 8, 1)))
  rng = np.random.default_rng(0)
  class_bias = rng.normal(size=10) * 3

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      fan_in = np.prod(leaf.shape[:-1])
      return rng.normal(size=leaf.shape).astype(np.float32) * np.sqrt(
          2 / fan_in)
    if "'out'" in name and "bias" in name:
      return class_bias.astype(np.float32)
    if "scale" in name or "var" in name:
      return np.ones(leaf.shape, np.float32)
    return rng.normal(size=leaf.shape).astype(np.float32) * 0.1

  variables = jax.tree_util.tree_map_with_path(fill, shapes)
  images = rng.normal(size=(N, 8, 8, 1)).astype(np.float32)
  logits, _ = jax.jit(model.apply)(variables, images)
  return model, variables, images, np.asarray(logits)


def _mixing_thresholds(s, fractions=(0.35, 0.4)):
  """Thresholds between two distinct sorted scores, far from both.

  About `fractions[k]` of the examples pass exit k's test; the midpoint of
  the widest nearby gap keeps rounding differences between the staged and
  the one-pass logits away from the decision.
  """
  th = []
  for k, f in enumerate(fractions):
    v = np.sort(np.unique(s[k]))[::-1]
    i = int(f * v.size)
    gaps = v[i - 3:i + 3] - v[i - 2:i + 4]
    j = i - 3 + int(np.argmax(gaps))
    th.append((v[j] + v[j + 1]) / 2)
  return np.array(th + [-np.inf], np.float32)


@pytest.mark.parametrize("policy", ["max_prob", "patience"])
def test_staged_equals_simulate(setup, policy):
  model, variables, images, logits = setup
  s = np.asarray(policies.scores(logits, policy))
  # Patience: run lengths at exit 0 are all 1, so exit 0 gets nobody.
  th = (np.array([2, 2, -np.inf], np.float32) if policy == "patience"
        else _mixing_thresholds(s))
  ref = policies.simulate(logits, np.zeros(N, np.int32), th, policy)
  out = staged.StagedPredictor(model, variables, th, policy).run(images)
  np.testing.assert_array_equal(out.exits, ref["exit"])
  np.testing.assert_array_equal(out.predictions, ref["predictions"])
  counts = np.bincount(out.exits, minlength=3)
  assert np.all(counts[policy == "patience":] > 0), counts  # a mix of exits
  # Examples reaching stage k: everybody not gone at an earlier exit.
  np.testing.assert_array_equal(out.reached,
                                [N, N - counts[0], counts[2]])
  assert out.reached[0] >= out.reached[1] > out.reached[2]
  assert (out.reached[0] > out.reached[1]) == (policy != "patience")
  np.testing.assert_array_equal(
      out.padded, [staged.default_bucket(r) for r in out.reached])


def test_default_buckets_by_hand():
  """2^k and 1.5 * 2^k: padding wastes at most a third."""
  assert [staged.default_bucket(n) for n in
          (0, 1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 17, 25, 33, 49, 100, 769)] == [
              1, 1, 2, 3, 4, 6, 6, 8, 12, 12, 16, 24, 32, 48, 64, 128, 1024]
  for n in range(1, 5000):
    b = staged.default_bucket(n)
    assert n <= b and (b - n) / b < 1 / 3 + 1e-9, n


def test_buckets_compile_once_and_chunk(setup):
  model, variables, images, logits = setup
  th = _mixing_thresholds(np.asarray(policies.scores(logits, "margin")))
  ref = policies.simulate(logits, np.zeros(N, np.int32), th, "margin")
  pred = staged.StagedPredictor(model, variables, th, "margin")
  pred(images)
  assert (0, 64) in pred.compiled
  # Another batch size in the same stage-0 bucket (64) reuses its program,
  pred(images[:49])
  # and so does a predictor with another policy and other thresholds.
  staged.StagedPredictor(model, variables, th * 0.9, "max_prob")(images)
  assert pred.compiled.count((0, 64)) == 1
  assert len(pred.compiled) == len(set(pred.compiled))  # once per bucket
  # Fixed buckets: chunks of the largest one (32 + 18), padded to a listed
  # size (32 only, here).
  one = staged.StagedPredictor(model, variables, th, "margin", buckets=(32,))
  out = one.run(images)
  np.testing.assert_array_equal(out.predictions, ref["predictions"])
  np.testing.assert_array_equal(out.exits, ref["exit"])
  np.testing.assert_array_equal(out.padded, [32, 32, 32])
  assert out.reached[0] == N
  several = staged.StagedPredictor(model, variables, th, buckets=(16, 4, 8))
  assert [several.bucket(n) for n in (1, 4, 5, 9, 16)] == [4, 4, 8, 16, 16]
  with pytest.raises(ValueError, match="largest bucket"):
    several.bucket(17)


def test_predict_one(setup):
  model, variables, images, logits = setup
  th = _mixing_thresholds(np.asarray(policies.scores(logits, "max_prob")))
  ref = policies.simulate(logits, np.zeros(N, np.int32), th, "max_prob")
  pred = staged.StagedPredictor(model, variables, th)
  exits = np.asarray(ref["exit"])
  for k in range(3):  # one example leaving at each exit
    i = int(np.flatnonzero(exits == k)[0])
    assert pred.predict_one(images[i]) == (int(ref["predictions"][i]), k)
  assert {(0, 1), (1, 1), (2, 1)} <= set(pred.compiled)


def test_bad_arguments(setup):
  model, variables, _, _ = setup
  with pytest.raises(ValueError, match="one entry per exit"):
    staged.StagedPredictor(model, variables, [0.5, -np.inf])
  with pytest.raises(ValueError, match="valid policies"):
    staged.StagedPredictor(model, variables, [0.5, 0.5, -np.inf], "nope")


@pytest.mark.parametrize("policy,batch", [("max_prob", 8), ("patience", 7),
                                          ("entropy", 64)])
def test_pooled_equals_simulate(setup, policy, batch):
  """run_pooled: full batches of B for every stage, same answers as simulate.

  B = 8 and 7 cut N = 50 into several input batches (7 is no bucket, so the
  flushes pad to min(bucket, B)); B = 64 > N is a single partial batch.
  """
  model, variables, images, logits = setup
  s = np.asarray(policies.scores(logits, policy))
  th = (np.array([2, 2, -np.inf], np.float32) if policy == "patience"
        else _mixing_thresholds(s))
  ref = policies.simulate(logits, np.zeros(N, np.int32), th, policy)
  pred = staged.StagedPredictor(model, variables, th, policy)
  before = len(pred.compiled)
  out = pred.run_pooled(images, batch)
  np.testing.assert_array_equal(out.exits, ref["exit"])
  np.testing.assert_array_equal(out.predictions, ref["predictions"])
  counts = np.bincount(out.exits, minlength=3)
  np.testing.assert_array_equal(out.reached, [N, N - counts[0], counts[2]])
  assert np.all(out.padded <= batch)
  # Stage k ran on B rows except for the flushes (one per stage, < B rows).
  seen = {b for k, b in pred.compiled[before:]}
  assert all(b <= batch for b in seen), seen
  # Same again (pools start empty each call): identical answers.
  again = pred.run_pooled(images, batch)
  np.testing.assert_array_equal(again.predictions, out.predictions)
  # Pipelining depth changes the order of work only.
  for depth in (1, 3):
    other = pred.run_pooled(images, batch, depth=depth)
    np.testing.assert_array_equal(other.exits, ref["exit"])
    np.testing.assert_array_equal(other.predictions, ref["predictions"])
    np.testing.assert_array_equal(other.reached, out.reached)
  with pytest.raises(ValueError, match="batch_size"):
    pred.run_pooled(images, 0)
  with pytest.raises(ValueError, match="depth"):
    pred.run_pooled(images, batch, depth=0)
