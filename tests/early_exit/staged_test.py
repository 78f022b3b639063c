"""Staged early exit on digits_cnn equals simulate() on one-pass logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mexd import models
from mexd.data import augment
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
  with pytest.raises(ValueError, match=r"thresholds of shape \(2,\) given "
                     r"to a model with E = 3 exits: pass one entry per exit"):
    staged.StagedPredictor(model, variables, [0.5, -np.inf])
  with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
    staged.StagedPredictor(model, variables, np.zeros((2, 3)))
  with pytest.raises(ValueError, match=r"hold NaN at exit\(s\) \[1\]"):
    staged.StagedPredictor(model, variables, [0.5, np.nan, -np.inf])
  with pytest.raises(ValueError, match="must be numbers"):
    staged.StagedPredictor(model, variables, [0.5, "high", -np.inf])
  with pytest.raises(ValueError, match="valid policies"):
    staged.StagedPredictor(model, variables, [0.5, 0.5, -np.inf], "nope")
  th = [0.5, 0.5, -np.inf]
  with pytest.raises(ValueError, match="both mean and std"):
    staged.StagedPredictor(model, variables, th, mean=[0.3])
  with pytest.raises(ValueError, match=r"std \[0\.0\] must be > 0"):
    staged.StagedPredictor(model, variables, th, mean=[0.3], std=[0.0])
  with pytest.raises(ValueError, match=r"one value per channel \(C_in = 1"):
    staged.StagedPredictor(model, variables, th, mean=[0.3, 0.3],
                           std=[1.0, 1.0], image_shape=(8, 8, 1))


MEAN, STD = (0.3,), (0.4,)


def _pixels(n, seed=1):
  return np.random.default_rng(seed).integers(
      0, 256, (n, 8, 8, 1)).astype(np.uint8)


def test_uint8_images_are_normalised_with_mean_std(setup):
  """Raw pixels: normalised as in training with the predictor's mean/std,
  and refused (not silently misread) by a predictor without them."""
  model, variables, _, logits = setup
  th = _mixing_thresholds(np.asarray(policies.scores(logits, "max_prob")))
  raw = _pixels(N)
  x = np.asarray(augment.normalize(raw, MEAN, STD))
  ref = staged.StagedPredictor(model, variables, th).run(x)
  pred = staged.StagedPredictor(model, variables, th, mean=MEAN, std=STD,
                                image_shape=(8, 8, 1))
  for out in (pred.run(raw), pred.run_pooled(raw, 8)):
    np.testing.assert_array_equal(out.predictions, ref.predictions)
    np.testing.assert_array_equal(out.exits, ref.exits)
  assert pred.predict_one(raw[3]) == (ref.predictions[3], ref.exits[3])
  # Already normalised floats are taken as they are.
  np.testing.assert_array_equal(pred.run(x).predictions, ref.predictions)
  bare = staged.StagedPredictor(model, variables, th)
  for call in (bare, bare.run, bare.predict_one,
               lambda im: bare.run_pooled(im, 8)):
    with pytest.raises(ValueError, match=r"uint8 images \(raw pixels\) "
                       r"given to a StagedPredictor without mean/std: pass "
                       r"mean= and std="):
      call(raw[:1] if call == bare.predict_one else raw)
  with pytest.raises(ValueError, match="dtype int32: give raw uint8"):
    pred(raw.astype(np.int32))
  # Raw pixels converted to float (0..255) are outside the normalised range.
  with pytest.raises(ValueError, match=r"float images range over \[0, 255\]"
                     r", outside \[-0\.75, 1\.75\]"):
    pred(raw.astype(np.float32))


def test_from_exit_policy(setup):
  model, variables, _, logits = setup
  th = _mixing_thresholds(np.asarray(policies.scores(logits, "margin")))
  exit_policy = {"policy": "margin", "thresholds": th, "mean": list(MEAN),
                 "std": list(STD), "image_shape": [8, 8, 1]}
  pred = staged.StagedPredictor.from_exit_policy(model, variables,
                                                 exit_policy)
  assert (pred.policy, pred.image_shape) == ("margin", (8, 8, 1))
  raw = _pixels(7)
  ref = staged.StagedPredictor(model, variables, th, "margin")(
      np.asarray(augment.normalize(raw, MEAN, STD)))
  np.testing.assert_array_equal(pred(raw)[0], ref[0])


@pytest.mark.parametrize("shape,match", [
    ((4, 9, 9, 1), r"images of shape \(9, 9, 1\) given to a model trained "
                   r"on \(8, 8, 1\) images"),
    ((4, 8, 8, 3), r"images of shape \(8, 8, 3\) given to a model trained "
                   r"on \(8, 8, 1\) images"),
    ((8, 8, 1), r"expected images \[N, H, W, C_in\] of shape \(8, 8, 1\),"
                r" got an array of shape \(8, 8, 1\); for one image use "
                r"predict_one"),
    ((2, 4, 8, 8, 1), r"got an array of shape \(2, 4, 8, 8, 1\)"),
])
def test_images_of_wrong_shape(setup, shape, match):
  model, variables, _, _ = setup
  pred = staged.StagedPredictor(model, variables, [0.5, 0.5, -np.inf],
                                image_shape=(8, 8, 1))
  with pytest.raises(ValueError, match=match):
    pred(np.zeros(shape, np.float32))
  with pytest.raises(ValueError, match=match):
    pred.run_pooled(np.zeros(shape, np.float32), 4)


def test_predict_one_refuses_a_batch_and_wrong_shape(setup):
  model, variables, images, _ = setup
  for pred in (staged.StagedPredictor(model, variables, [0.5, 0.5, -np.inf]),
               staged.StagedPredictor(model, variables, [0.5, 0.5, -np.inf],
                                      image_shape=(8, 8, 1))):
    with pytest.raises(ValueError, match=r"predict_one answers for one image"
                       r" .*got a batch of 5 \(shape \(5, 8, 8, 1\)\); use "
                       r"pred\(images\)"):
      pred.predict_one(images[:5])
    pred.predict_one(images[:1])  # [1, H, W, C] is one image
  with pytest.raises(ValueError, match=r"images of shape \(9, 9, 1\)"):
    pred.predict_one(np.zeros((9, 9, 1), np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_images(setup, bad):
  model, variables, images, _ = setup
  pred = staged.StagedPredictor(model, variables, [0.5, 0.5, -np.inf])
  x = images.copy()
  x[7, 2, 3, 0] = x[9, 0, 0, 0] = bad
  match = (r"images hold 2 NaN or infinite values \(the first in image 7\)"
           r"; .*fix or drop them")
  for call in (pred, pred.run, lambda im: pred.run_pooled(im, 8)):
    with pytest.raises(ValueError, match=match):
      call(x)
  with pytest.raises(ValueError, match=r"hold 1 NaN or infinite .*image 0"):
    pred.predict_one(x[7])
  # A device array is not read back (no extra host sync): shape and dtype
  # are still checked.
  pred(jnp.asarray(x))
  with pytest.raises(ValueError, match=r"shape \(8, 8, 1\)"):
    pred(jnp.asarray(x[0]))
  with pytest.raises(ValueError, match="uint8 images"):
    pred(jnp.asarray(_pixels(2)))


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
