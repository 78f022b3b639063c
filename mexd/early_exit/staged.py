"""Real early exit: run stage k only on the examples that have not left yet.

`StagedPredictor` runs stage 0 on the whole batch, scores exit 0 with the
policy, retires the examples whose score reaches theta_0, gathers the
survivors' hidden state (and the policy state: previous argmax and run length,
for "patience") into a smaller batch and runs stage 1 on it, and so on. The
survivor count changes from batch to batch, so each batch is padded up to a
size from a fixed set of *buckets* (by default 1, 2, 3, 4, 6, 8, 12, 16, 24,
..., i.e. 2^k and 1.5 * 2^k, so padding wastes at most a third and ~1/6 on
average, where powers of two alone waste up to half): XLA compiles each
stage once per bucket and never per batch. Padding rows repeat a real row
and are dropped on the host.

Each stage is one program (the stage, its exit's score and the threshold
test) and one host sync (an int32 [bucket] code: the prediction of the rows
that leave, or -1 - prediction) that decides the next gather; everything else
stays on the device. The predictions equal
`policies.simulate` on the one-pass logits, because `__call__` of a
`MultiExitModel` is the loop over `stage` and each row is computed
independently (eval mode).

Usage:
  pred = StagedPredictor(model, variables, thresholds, "max_prob")
  predictions, exits = pred(images)           # [N], [N]
  label, exit_k = pred.predict_one(images[0])  # batch-size-1 latency path
  # A deployment: thresholds, policy, mean/std and image shape from
  # exit_policy.json; then raw uint8 images are normalised as in training.
  pred = StagedPredictor.from_exit_policy(
      model, variables, mexd.evaluate.load_exit_policy(workdir))
  predictions, exits = pred(uint8_images)

Inputs are checked at the boundary (an InputError naming the fix): image
rank, shape (against `image_shape`, if known), dtype (uint8 needs mean/std),
NaN/inf pixels of host (NumPy) images (a jax.Array's values are not read
back: that would add a host sync), and the thresholds (one per exit, no NaN).
"""

import collections
import functools
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mexd import errors
from mexd import xla_options
from mexd.data import augment
from mexd.early_exit import policies

Array = Any


class StagedResult(NamedTuple):
  """Outcome of one staged run.

  Attributes:
    predictions: [N] int32 class predicted at the exit taken.
    exits: [N] int32 exit index taken.
    reached: [E] int number of real examples that ran stage k.
    padded: [E] int bucket size stage k ran with (0 if nobody reached it).
  """
  predictions: np.ndarray
  exits: np.ndarray
  reached: np.ndarray
  padded: np.ndarray


def default_bucket(n: int) -> int:
  """Smallest 2^k or 3 * 2^(k-1) >= n (1, 2, 3, 4, 6, 8, 12, 16, ...)."""
  n = max(1, int(n))
  p = 1 << (n - 1).bit_length()  # Power of two >= n.
  three_quarters = 3 * p // 4
  return three_quarters if p >= 4 and three_quarters >= n else p


def _pad_index(idx: np.ndarray, size: int) -> np.ndarray:
  """Pads row indices [n] to [size] by repeating the last one."""
  return np.concatenate([idx, np.full(size - idx.size, idx[-1])]).astype(
      np.int32)


@jax.jit
def _gather(tree, idx):
  """Rows `idx` [b] of every leaf of `tree` (leading batch dim)."""
  return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), tree)


@functools.partial(jax.jit, donate_argnums=0)
def _append(pool, tree, idx, offset):
  """Writes rows `idx` [b] of `tree` into `pool` [2B, ...] at row `offset`.

  offset + b <= 2B always holds (pools hold < B rows before an append and
  b <= B), so `dynamic_update_slice` never clamps.
  """
  rows = _gather(tree, idx)
  return jax.tree.map(
      lambda p, r: jax.lax.dynamic_update_slice_in_dim(p, r, offset, axis=0),
      pool, rows)


@functools.partial(jax.jit, static_argnums=1, donate_argnums=0)
def _take(pool, b: int):
  """(first b rows of pool, pool with them moved to the back)."""
  head = jax.tree.map(lambda a: a[:b], pool)
  return head, jax.tree.map(lambda a: jnp.roll(a, -b, axis=0), pool)


# uint8 [N, H, W, C] -> (x / 255 - mean) / std float32, as in training.
_normalize = jax.jit(augment.normalize)

# (model, stage, bucket) of every stage trace, i.e. every XLA compilation.
_TRACES: List[Tuple[Any, int, int]] = []


def _all_scores(logits, state):
  """Every policy's score of one exit.

  Args:
    logits: [b, C] logits of the exit.
    state: policy state before it (previous argmax [b], run length [b]).

  Returns:
    (scores [P, b] in `policies.policy_names()` order, new policy state).
  """
  out = [policies.score_step(name, logits, state) for name in
         policies.policy_names()]
  return jnp.stack([score for score, _ in out]), out[0][1]


@functools.lru_cache(maxsize=None)
def _stage_fn(model, k: int):
  """Jitted stage k of `model` with its exit test, shared by all predictors.

  One program per stage and bucket does the stage, the exit's score and the
  threshold test, so a stage costs one dispatch and one small transfer back.
  Policy (an index) and threshold are arguments, not constants: predictors
  of one model that differ in policy or thresholds compile no stage anew
  (every policy's score is computed, a few reductions over [b, C], and the
  chosen one selected; no conditional, which XLA:GPU would sync on).
  """

  def fn(variables, h, state, policy_index, theta):
    """Stage k on a padded batch.

    Args:
      variables: the model variables.
      h: [b, ...] hidden state of stage k - 1 (images for k = 0).
      state: policy state (previous argmax [b], run length [b]).
      policy_index: int32 scalar, index into `policies.policy_names()`.
      theta: float32 scalar threshold of exit k.

    Returns:
      (h_k [b, ...], new policy state, code [b] int32): code = the argmax
      of exit k where the row leaves here, else -1 - argmax.
    """
    _TRACES.append((model, k, jax.tree.leaves(h)[0].shape[0]))
    h, logits, _ = model.apply(variables, k, h, train=False, method="stage")
    all_scores, state = _all_scores(logits, state)
    done = all_scores[policy_index] >= theta
    code = jnp.where(done, state[0], -1 - state[0])
    return h, state, code

  return xla_options.jit(fn)


def _check_thresholds(thresholds, num_exits: int) -> np.ndarray:
  """thresholds -> float32 [E]; raises on another shape or a NaN."""
  try:
    t = np.asarray(thresholds, np.float32)
  except (TypeError, ValueError):
    raise errors.InputError(f"thresholds must be numbers (or -inf / inf), got "
                            f"{thresholds!r}") from None
  if t.shape != (num_exits,):
    raise errors.InputError(
        f"thresholds of shape {t.shape} given to a model with "
        f"E = {num_exits} exits: pass one entry per exit, shape "
        f"({num_exits},) (the last is taken as -inf)")
  if np.isnan(t).any():
    raise errors.InputError(
        f"thresholds {t.tolist()} hold NaN at exit(s) "
        f"{np.flatnonzero(np.isnan(t)).tolist()}; a threshold "
        "is a number, inf (nobody exits there) or -inf")
  return t


def _check_stats(mean, std, image_shape):
  """(mean [C], std [C]) float32, or (None, None); raises if unusable."""
  if mean is None and std is None:
    return None, None
  if mean is None or std is None:
    raise errors.InputError("pass both mean and std (exit_policy.json's) or "
                            "neither")
  mean = np.asarray(mean, np.float32).reshape(-1)
  std = np.asarray(std, np.float32).reshape(-1)
  channels = None if image_shape is None else image_shape[-1]
  for name, v in (("mean", mean), ("std", std)):
    if v.size not in (1, channels or v.size) or not np.all(np.isfinite(v)):
      raise errors.InputError(
          f"{name} {v.tolist()} must be finite, one value per "
          f"channel (C_in = {channels}) or one in all")
  if np.any(std <= 0):
    raise errors.InputError(f"std {std.tolist()} must be > 0")
  return mean, std


def _normalised_range(mean, std):
  """(lowest, highest) value of a normalised pixel over every channel."""
  return np.min((0.0 - mean) / std), np.max((1.0 - mean) / std)


class StagedPredictor:
  """Stage-by-stage early-exit inference of a `MultiExitModel`.

  Args:
    model: a `mexd.models.MultiExitModel` (unbound Flax module).
    variables: its variables ({"params", "batch_stats", ...}); eval mode.
    thresholds: [E] thresholds on the policy score (last taken as -inf),
      e.g. `calibrate.calibrate_budget(...).thresholds`.
    policy: a name from `policies.policy_names()`.
    buckets: increasing batch sizes to pad to; None means 2^k and 1.5 * 2^k
      (`default_bucket`). A batch larger than the largest bucket runs in
      chunks of that size.
    mean, std: [C_in] (or one value) normalisation statistics of the
      training data, e.g. exit_policy.json's "mean" and "std". Given, the
      predictor also takes raw uint8 images (what the data sets hold) and
      normalises them as training did, (x / 255 - mean) / std; float images
      are taken as normalised already and must lie in that range. Not
      given: float images only, normalised by the caller (uint8 raises).
    image_shape: (H, W, C_in) the model was trained on (exit_policy.json's
      "image_shape"); images of another shape raise. None: not checked.

  Raises:
    InputError: thresholds not of shape [E] or NaN; bad mean/std.
  """

  def __init__(self, model, variables, thresholds: Sequence[float],
               policy: str = "max_prob",
               buckets: Optional[Sequence[int]] = None, *,
               mean: Optional[Sequence[float]] = None,
               std: Optional[Sequence[float]] = None,
               image_shape: Optional[Sequence[int]] = None):
    policies.check_policy(policy)
    self.model = model
    self.variables = variables
    self.policy = policy
    self.num_exits = model.bind(variables).num_exits
    self.thresholds = _check_thresholds(thresholds, self.num_exits)
    self.image_shape = (None if image_shape is None
                        else tuple(int(d) for d in image_shape))
    self.mean, self.std = _check_stats(mean, std, self.image_shape)
    # Device scalars, put once: a call passes them without a transfer.
    self._theta = [jax.device_put(t) for t in thresholds]
    self._policy_index = jax.device_put(
        np.int32(list(policies.policy_names()).index(policy)))
    if buckets is not None:
      buckets = sorted(set(int(b) for b in buckets))
      if buckets[0] < 1:
        raise errors.InputError(f"buckets must be positive, got {buckets}")
    self.buckets = buckets
    self._stage_fns = [_stage_fn(model, k) for k in range(self.num_exits)]

  @classmethod
  def from_exit_policy(cls, model, variables, exit_policy: Dict[str, Any],
                       **kwargs) -> "StagedPredictor":
    """The deployed rule: thresholds, policy, mean, std and image shape from
    `mexd.evaluate.load_exit_policy(workdir)`; takes raw uint8 images."""
    p = exit_policy
    return cls(model, variables, p["thresholds"], p["policy"],
               mean=p["mean"], std=p["std"], image_shape=p["image_shape"],
               **kwargs)

  def check_images(self, images: Array, one: bool = False) -> Array:
    """Checks images at the boundary; normalises uint8 ones.

    Args:
      images: [N, H, W, C_in] uint8 (with mean/std) or normalised floats;
        with `one`, a single image [H, W, C_in] or [1, H, W, C_in].
      one: for `predict_one`: a batch of more than one image raises.
      Values (NaN/inf, range) are checked for host arrays only; a
      `jax.Array` is checked for shape and dtype, without a device sync.

    Returns:
      [N, H, W, C_in] float images ([1, ...] with `one`).

    Raises:
      InputError: wrong rank or shape, a batch given as one image, uint8
        without mean/std, another non-float dtype, NaN/inf, or floats
        outside the normalised range (raw pixels passed as floats).
    """
    x = images if isinstance(images, jax.Array) else np.asarray(images)
    want = ("[H, W, C_in]" if self.image_shape is None
            else str(self.image_shape))
    if one and x.ndim == 4 and x.shape[0] != 1:
      raise errors.InputError(
          f"predict_one answers for one image {want}, got a "
          f"batch of {x.shape[0]} (shape {x.shape}); use "
          "pred(images) or pred.run(images) for a batch")
    if one and x.ndim == 3:
      x = x[None]
    if x.ndim != 4:
      what = "one image" if one else "images [N, H, W, C_in]"
      hint = ("; for one image use predict_one" if x.ndim == 3 else "")
      raise errors.InputError(
          f"expected {what} of shape {want}, got an array of "
          f"shape {x.shape}{hint}")
    if self.image_shape is not None and x.shape[1:] != self.image_shape:
      raise errors.InputError(
          f"images of shape {x.shape[1:]} given to a model "
          f"trained on {self.image_shape} images (H, W, C_in); "
          "resize them or use a model trained on this size")
    if x.dtype == np.uint8:
      if self.mean is None:
        raise errors.InputError(
            "uint8 images (raw pixels) given to a StagedPredictor without "
            "mean/std: pass mean= and std= (exit_policy.json's, or use "
            "StagedPredictor.from_exit_policy) so that it normalises them, "
            "or give float images normalised as (x / 255 - mean) / std")
      return _normalize(x, self.mean, self.std)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise errors.InputError(
          f"images of dtype {x.dtype}: give raw uint8 pixels "
          "(0..255) or normalised float images")
    if isinstance(x, jax.Array):
      # On the device already: reading its values back would cost a host
      # sync per call (on a GPU as much as a stage), so only shape and dtype
      # are checked.
      return x
    bad = ~np.isfinite(x)
    if bad.any():
      first = int(np.argmax(bad.reshape(x.shape[0], -1).any(-1)))
      raise errors.InputError(
          f"images hold {int(bad.sum())} NaN or infinite "
          f"values (the first in image {first}); the model's "
          "answer for them is meaningless: fix or drop them")
    if self.mean is not None and x.size:
      lo, hi = (float(v) for v in _normalised_range(self.mean, self.std))
      got = float(np.min(x)), float(np.max(x))
      tol = 0.01 * (hi - lo)  # float rounding, bfloat16 inputs
      if got[0] < lo - tol or got[1] > hi + tol:
        raise errors.InputError(
            f"float images range over [{got[0]:.4g}, {got[1]:.4g}], outside "
            f"[{lo:.4g}, {hi:.4g}], the range of pixels normalised with this "
            "predictor's mean/std (raw pixels as floats?): pass the uint8 "
            "pixels (the predictor normalises them) or normalise as "
            "(x / 255 - mean) / std")
    return x

  @property
  def compiled(self) -> List[Tuple[int, int]]:
    """(stage, bucket) of every stage compilation of this model so far."""
    return [(k, b) for m, k, b in _TRACES if m == self.model]

  def bucket(self, n: int) -> int:
    """The padded batch size for n live examples."""
    if self.buckets is None:
      return default_bucket(n)
    for b in self.buckets:
      if b >= n:
        return b
    raise errors.InputError(f"{n} examples exceed the largest bucket "
                            f"{self.buckets[-1]}")

  def run(self, images: Array) -> StagedResult:
    """Early-exit predictions with per-stage statistics.

    Args:
      images: [N, H, W, C_in] normalised float images, or uint8 pixels if
        the predictor has mean/std (see the class; `check_images`).

    Returns:
      a `StagedResult` (predictions [N], exits [N], reached [E], padded [E]).
    """
    images = self.check_images(images)
    n = images.shape[0]
    if n == 0:
      empty = np.zeros(0, np.int32)
      return StagedResult(empty, empty, np.zeros(self.num_exits, np.int64),
                          np.zeros(self.num_exits, np.int64))
    step = n if self.buckets is None else self.buckets[-1]
    parts = [self._run_chunk(images[i:i + step]) for i in range(0, n, step)]
    return StagedResult(
        np.concatenate([p.predictions for p in parts]),
        np.concatenate([p.exits for p in parts]),
        np.sum([p.reached for p in parts], axis=0),
        np.max([p.padded for p in parts], axis=0))

  def __call__(self, images: Array) -> Tuple[np.ndarray, np.ndarray]:
    """images [N, H, W, C_in] -> (predictions [N], exit index [N])."""
    out = self.run(images)
    return out.predictions, out.exits

  def predict_one(self, image: Array) -> Tuple[int, int]:
    """Batch-size-1 path: runs stages until the example exits.

    Args:
      image: [H, W, C_in] or [1, H, W, C_in] (dtype as for `run`); a batch
        of more than one image raises.

    Returns:
      (predicted class, exit index) as Python ints.
    """
    image = jnp.asarray(self.check_images(image, one=True))
    out = self._run_chunk(image, lambda n: n)
    return int(out.predictions[0]), int(out.exits[0])

  def run_pooled(self, images: Array, batch_size: int,
                 depth: int = 2) -> StagedResult:
    """Throughput path: every stage runs on full batches of `batch_size`.

    `run` compacts the survivors of one batch, so later stages run on ever
    smaller (padded) batches. Here the input is cut into batches of
    `batch_size` for stage 0, and the survivors of stage k from successive
    batches are pooled in a device buffer until `batch_size` of them are
    waiting; only then does stage k + 1 run, on exactly `batch_size` rows. At
    the end the partial pools are flushed in stage order (padded to
    `min(bucket, batch_size)`). This is what a server draining a stream of
    requests does: no padding waste and the batch size that the hardware is
    efficient at, for every stage. The predictions equal `run`'s (rows are
    computed independently in eval mode); only the order of work differs.

    The stage calls are software-pipelined: up to `depth` calls are
    dispatched before the host waits for the oldest one's exit decisions, so
    the accelerator computes the next batch while the host syncs (on a GPU a
    device-to-host copy costs far more than a small stage).

    Args:
      images: [N, H, W, C_in] images (dtype as for `run`).
      batch_size: B, rows per stage call.
      depth: stage calls in flight (>= 1; 1 waits for each call at once).

    Returns:
      a `StagedResult`; `padded[k]` is the largest batch stage k ran with.
    """
    bsz, depth = int(batch_size), int(depth)
    if bsz < 1:
      raise errors.InputError(f"batch_size must be >= 1, got {batch_size}")
    if depth < 1:
      raise errors.InputError(f"depth must be >= 1, got {depth}")
    images = self.check_images(images)
    n, e = images.shape[0], self.num_exits
    res = StagedResult(np.zeros(n, np.int32), np.zeros(n, np.int32),
                       np.zeros(e, np.int64), np.zeros(e, np.int64))
    # Pool k (k >= 1): device tree (h, state) with 2B rows, of which the
    # first count[k] are live; their original rows are pos[k].
    pools: List[Any] = [None] * e
    count = [0] * e
    pos: List[np.ndarray] = [np.zeros(0, np.int64)] * e
    in_flight = collections.deque()  # dispatched stage calls, oldest first

    def launch(k, h, state, rows):
      b = jax.tree.leaves(h)[0].shape[0]
      res.reached[k] += rows.size
      res.padded[k] = max(res.padded[k], b)
      in_flight.append((k, rows) + self._stage_launch(k, h, state))

    def finish():
      """Waits for the oldest call; pools its survivors; launches full pools."""
      k, rows, h, state, code = in_flight.popleft()
      keep = self._stage_finish(k, code, rows, res)
      if keep.size == 0:
        return
      nxt = k + 1
      b = jax.tree.leaves(h)[0].shape[0]
      if pools[nxt] is None:  # 2B rows shaped like this stage's output
        pools[nxt] = jax.tree.map(
            lambda a: jnp.zeros((2 * bsz,) + a.shape[1:], a.dtype),
            (h, state))
      pools[nxt] = _append(pools[nxt], (h, state),
                           jnp.asarray(_pad_index(keep, b)), count[nxt])
      count[nxt] += keep.size
      pos[nxt] = np.concatenate([pos[nxt], rows[keep]])
      while count[nxt] >= bsz:  # a full batch is waiting: launch it
        (h_b, s_b), pools[nxt] = _take(pools[nxt], bsz)
        taken, pos[nxt] = pos[nxt][:bsz], pos[nxt][bsz:]
        count[nxt] -= bsz
        launch(nxt, h_b, s_b, taken)

    def launch_partial(k, tree, rows):
      """Stage k on the first rows.size < B rows of tree, padded to a bucket."""
      b = min(self.bucket(rows.size), bsz)
      h, state = _gather(tree, jnp.asarray(_pad_index(np.arange(rows.size),
                                                      b)))
      launch(k, h, state, rows)

    for i in range(0, n, bsz):
      x = images[i:i + bsz]
      rows = np.arange(i, i + x.shape[0])
      if x.shape[0] == bsz:
        launch(0, x, policies.init_state(bsz), rows)
      else:
        launch_partial(0, (x, policies.init_state(x.shape[0])), rows)
      while len(in_flight) >= depth:
        finish()
    for k in range(1, e):  # flush: partial pools, in stage order
      while in_flight:  # pool k is final once every earlier call finished
        finish()
      if count[k]:
        rows, pos[k], count[k] = pos[k], np.zeros(0, np.int64), 0
        launch_partial(k, pools[k], rows)
    while in_flight:
      finish()
    return res

  def _run_chunk(self, images: Array, bucket=None) -> StagedResult:
    bucket = bucket or self.bucket
    n = images.shape[0]
    e = self.num_exits
    out = StagedResult(np.zeros(n, np.int32), np.zeros(n, np.int32),
                       np.zeros(e, np.int64), np.zeros(e, np.int64))
    pos = np.arange(n)  # original row of each live example
    b = bucket(n)
    h = images if b == n else _gather(images, _pad_index(pos, b))
    state = policies.init_state(b)
    for k in range(e):
      out.reached[k], out.padded[k] = pos.size, b
      n_live = pos.size
      h, state, keep = self._stage_step(k, h, state, pos, out)
      if keep.size == 0:
        break
      pos = pos[keep]
      if keep.size < n_live:  # someone left: compact the survivors
        b = bucket(keep.size)
        h, state = _gather((h, state), jnp.asarray(_pad_index(keep, b)))
    return out

  def _stage_launch(self, k: int, h, state):
    """Dispatches stage k with its exit test; nothing waits.

    Returns:
      (h_k [b, ...], policy state [b], code [b] on the device; see
      `_stage_fn`).
    """
    return self._stage_fns[k](self.variables, h, state, self._policy_index,
                              self._theta[k])

  def _stage_finish(self, k: int, code, rows: np.ndarray,
                    out: StagedResult) -> np.ndarray:
    """Waits for a stage's code and records the rows that leave at exit k.

    Writes the predictions and exit index of the rows that leave into
    `out` (at their original positions `rows`, the first rows.size of the
    b padded rows), with one host sync.

    Returns:
      indices into the first rows.size rows of those that go on.
    """
    code = jax.device_get(code)[:rows.size]  # the one sync of a stage
    done = code >= 0
    pred = np.where(done, code, -1 - code)
    if k == self.num_exits - 1:
      done = np.ones_like(done)  # the final exit takes everyone left
    out.predictions[rows[done]] = pred[done]
    out.exits[rows[done]] = k
    return np.flatnonzero(~done)

  def _stage_step(self, k: int, h, state, rows: np.ndarray,
                  out: StagedResult):
    """Stage k launched and finished at once (see the two methods above).

    Returns:
      (h_k [b, ...], policy state [b], indices into the first rows.size
      rows of those that go on).
    """
    h, state, code = self._stage_launch(k, h, state)
    return h, state, self._stage_finish(k, code, rows, out)
