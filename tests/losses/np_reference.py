"""NumPy float64 references and test problems shared by the loss tests.

These re-implement the building blocks of every method's loss (log-softmax,
cross-entropy with unlabeled examples, KL with a temperature, the masked
feature distance) in plain NumPy, in float64 and independently of
`mexd.losses` (docs/methods.md §0), so each test compares the JAX float32 code
with a separate implementation. Method-specific references (np_byot,
np_eed, np_erde, np_mate, np_pl, ...) stay in their own test files and are
built from these. `problems` draws the test inputs most of the files share.

Conventions: logits z are [..., C]; labels y are [B] ints, -1 = unlabeled.

Import it as a top-level module (`import np_reference as ref`): tests/ has no
__init__.py, so pytest's default (prepend) import mode puts this folder on
sys.path for the test files next to it.
"""

import numpy as np

# Tolerances of `close`: float32 JAX results against float64 references.
RTOL = 1e-5
ATOL = 1e-6


def log_softmax(x):
  """log softmax(x) over the last axis, in float64, max-shifted."""
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def softmax(x):
  """softmax(x) over the last axis, in float64."""
  return np.exp(log_softmax(x))


def ce(z, y):
  """CE(z [B, C], y [B]) averaged over the labeled examples (0 if none)."""
  y = np.asarray(y)
  lab = y >= 0
  nll = -log_softmax(z)[np.arange(len(y)), np.maximum(y, 0)]
  return np.sum(nll * lab) / max(lab.sum(), 1)


def ce_grad(z, y):
  """d CE(z, y) / d z for z [B, C]: (softmax - onehot) / n_labeled."""
  y = np.asarray(y)
  lab = (y >= 0).astype(np.float64)[:, None]
  onehot = np.eye(np.shape(z)[-1])[np.maximum(y, 0)]
  return (softmax(z) - onehot) * lab / max(lab.sum(), 1)


def kl(t, s, temp):
  """[B] KL(softmax(t / T) || softmax(s / T)): teacher t, student s."""
  t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
  lq, lp = log_softmax(t / temp), log_softmax(s / temp)
  return np.sum(np.exp(lq) * (lq - lp), -1)


def feat(f, g):
  """Masked feature MSE: mean of 1{f > 0 or g > 0} (f - g)^2."""
  f, g = np.asarray(f, np.float64), np.asarray(g, np.float64)
  return np.mean(np.where((f > 0) | (g > 0), (f - g) ** 2, 0.0))


def close(actual, expected):
  """assert_allclose of a (float32) result, as float64, with RTOL / ATOL."""
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected,
                             rtol=RTOL, atol=ATOL)


def problems(seed, num_exits, batch, classes, dim=None):
  """The 4 standard problems of one shape: the inputs of the loss tests.

  Args:
    seed: an int, or a np.random.Generator to draw from (a test can go on
      drawing from it afterwards).
    num_exits, batch, classes: E, B, C.
    dim: the feature size D; None draws no features.

  Returns:
    (z, f, y): float32 logits z [4, E, B, C] (scale 2), float32 features
    f [4, E, B, D] (None without dim), int32 labels y [4, B]. Problem 0 is
    fully labeled, 1 about 40% unlabeled (-1), 2 all unlabeled, 3 a single
    class.
  """
  rng = np.random.default_rng(seed)
  z = 2.0 * rng.standard_normal((4, num_exits, batch, classes))
  f = None if dim is None else rng.standard_normal((4, num_exits, batch, dim))
  y = rng.integers(0, classes, (4, batch))
  y[1] = np.where(rng.random(batch) < 0.4, -1, y[1])
  y[2] = -1
  y[3] = rng.integers(0, classes)
  return (z.astype(np.float32), None if f is None else f.astype(np.float32),
          y.astype(np.int32))
