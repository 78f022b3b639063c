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
back: that would add a host sync), and the thresholds (one per exit, no NaN);
see `mexd.early_exit.inputs`. The pooled (throughput) schedule of
`run_pooled` is `mexd.early_exit.pooled`.
"""

import functools
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mexd import errors
from mexd.cpu import xla_options
from mexd.deploy import buckets as buckets_lib
from mexd.deploy import checks
from mexd.early_exit import batching
from mexd.early_exit import inputs
from mexd.early_exit import policies
from mexd.early_exit import pooled

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


# Smallest 2^k or 3 * 2^(k-1) >= n (1, 2, 3, 4, 6, 8, 12, 16, ...).
default_bucket = buckets_lib.default_bucket


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


class StagePrograms:
  """The jitted stages of one model, each with its exit test.

  One program per stage and bucket does the stage, the exit's score and the
  threshold test, so a stage costs one dispatch and one small transfer back.
  Policy (an index) and threshold are arguments, not constants: predictors
  of one model that differ in policy or thresholds share these programs and
  compile no stage anew (every policy's score is computed, a few reductions
  over [b, C], and the chosen one selected; no conditional, which XLA:GPU
  would sync on).

  Attributes:
    model: the `MultiExitModel`.
    traces: (stage, bucket) of every stage trace so far, i.e. every XLA
      compilation.
  """

  def __init__(self, model):
    self.model = model
    self.traces: List[Tuple[int, int]] = []
    self._fns = {}

  def __call__(self, k: int):
    """The jitted stage k: fn(variables, h, state, policy_index, theta)."""
    if k not in self._fns:
      self._fns[k] = xla_options.jit(functools.partial(self._stage, k))
    return self._fns[k]

  def _stage(self, k, variables, h, state, policy_index, theta):
    """Stage k on a padded batch.

    Args:
      k: the stage (static).
      variables: the model variables.
      h: [b, ...] hidden state of stage k - 1 (images for k = 0).
      state: policy state (previous argmax [b], run length [b]).
      policy_index: int32 scalar, index into `policies.policy_names()`.
      theta: float32 scalar threshold of exit k.

    Returns:
      (h_k [b, ...], new policy state, code [b] int32): code = the argmax
      of exit k where the row leaves here, else -1 - argmax.
    """
    self.traces.append((k, jax.tree.leaves(h)[0].shape[0]))
    h, logits, _ = self.model.apply(variables, k, h, train=False,
                                    method="stage")
    all_scores, state = _all_scores(logits, state)
    done = all_scores[policy_index] >= theta
    code = jnp.where(done, state[0], -1 - state[0])
    return h, state, code


@functools.lru_cache(maxsize=4)
def shared_programs(model) -> StagePrograms:
  """The stage programs that predictors of `model` share by default.

  Kept for the 4 models used last (a bounded cache: the programs hold their
  model and compiled code alive). Pass `programs=` to a StagedPredictor to
  own them instead.
  """
  return StagePrograms(model)


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
    programs: the jitted stages (`StagePrograms(model)`); default the ones
      shared by every predictor of this model (`shared_programs`).

  Raises:
    InputError: thresholds not of shape [E] or NaN; bad mean/std.
  """

  def __init__(self, model, variables, thresholds: Sequence[float],
               policy: str = "max_prob",
               buckets: Optional[Sequence[int]] = None, *,
               mean: Optional[Sequence[float]] = None,
               std: Optional[Sequence[float]] = None,
               image_shape: Optional[Sequence[int]] = None,
               programs: Optional[StagePrograms] = None):
    policies.check_policy(policy)
    self.model = model
    self.variables = variables
    self.policy = policy
    self.num_exits = model.bind(variables).num_exits
    self.thresholds = checks.thresholds(thresholds, self.num_exits)
    self.image_shape = (None if image_shape is None
                        else tuple(int(d) for d in image_shape))
    self.mean, self.std = inputs.check_stats(mean, std, self.image_shape)
    # Device scalars, put once: a call passes them without a transfer.
    self._theta = [jax.device_put(t) for t in thresholds]
    self._policy_index = jax.device_put(
        np.int32(list(policies.policy_names()).index(policy)))
    if buckets is not None:
      buckets = sorted(set(int(b) for b in buckets))
      if buckets[0] < 1:
        raise errors.InputError(f"buckets must be positive, got {buckets}")
    self.buckets = buckets
    self.programs = programs or shared_programs(model)
    if self.programs.model != model:
      raise ValueError("programs= were built for another model")
    self._stage_fns = [self.programs(k) for k in range(self.num_exits)]

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
    return inputs.check_images(images, image_shape=self.image_shape,
                               mean=self.mean, std=self.std, one=one)

  @property
  def compiled(self) -> List[Tuple[int, int]]:
    """(stage, bucket) of every stage compilation of its programs so far."""
    return list(self.programs.traces)

  def bucket(self, n: int) -> int:
    """The padded batch size for n live examples."""
    try:
      return buckets_lib.bucket(n, self.buckets)
    except ValueError as e:
      raise errors.InputError(str(e)) from None

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
    pooled.PooledRun(self, res, bsz, depth).run(images)
    return res

  def _run_chunk(self, images: Array, bucket=None) -> StagedResult:
    bucket = bucket or self.bucket
    n = images.shape[0]
    e = self.num_exits
    out = StagedResult(np.zeros(n, np.int32), np.zeros(n, np.int32),
                       np.zeros(e, np.int64), np.zeros(e, np.int64))
    pos = np.arange(n)  # original row of each live example
    b = bucket(n)
    h = images if b == n else batching.gather(images, batching.pad_index(pos, b))
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
        h, state = batching.gather((h, state), jnp.asarray(batching.pad_index(keep, b)))
    return out

  def launch_stage(self, k: int, h, state):
    """Dispatches stage k with its exit test; nothing waits.

    Returns:
      (h_k [b, ...], policy state [b], code [b] on the device; see
      `StagePrograms._stage`).
    """
    return self._stage_fns[k](self.variables, h, state, self._policy_index,
                              self._theta[k])

  def finish_stage(self, k: int, code, rows: np.ndarray,
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
    h, state, code = self.launch_stage(k, h, state)
    return h, state, self.finish_stage(k, code, rows, out)
