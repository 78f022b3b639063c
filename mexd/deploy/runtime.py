"""The exported cascade at run time: real early exit with jax and NumPy only.

`Cascade(folder)` (or `mexd.deploy.load(folder)`) reads a folder written by
`python -m mexd.export`, checks it (format, jax/jaxlib versions, the sha256
of every file, the platform) and runs it:

  cascade = mexd.deploy.load("export/")
  labels, exits = cascade.predict(uint8_images)     # [N], [N]
  label, exit_k = cascade.predict_one(uint8_images[0])
  for out in cascade.stages(images):  # as each stage finishes
    answer(out.rows, out.labels, out.exit)

Stage k runs only on the rows still in: after each stage the rows that
leave are answered, the survivors' hidden state is gathered into a smaller
batch padded to a bucket size (`mexd.deploy.buckets`), and stage k + 1 runs
on it; one program compilation per (stage, bucket). Each stage's exit test
is in its program, so a stage costs one dispatch and one int32 [b] transfer
back. The answers equal `mexd.early_exit.StagedPredictor`'s and
`policies.simulate`'s on the one-pass logits of the same weights.

This module imports jax and NumPy, never the model code, flax, optax or the
configs (mexd.errors, mexd.cpu's switch and the other mexd.deploy modules
are plain Python).
"""

import os
import warnings
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence

import jax
from jax import export as jax_export
import jax.numpy as jnp
import numpy as np

from mexd import cpu
from mexd.deploy import artifact
from mexd.deploy import buckets as buckets_lib
from mexd.deploy import checks


class StageExit(NamedTuple):
  """The rows that left at one exit (`Cascade.stages`).

  Attributes:
    exit: the exit index k.
    rows: [n_k] int positions (in the input batch) of the rows leaving here.
    labels: [n_k] int32 class predicted at exit k for them.
    reached: real rows that ran stage k; padded: the bucket it ran with.
  """
  exit: int
  rows: np.ndarray
  labels: np.ndarray
  reached: int
  padded: int


class CascadeResult(NamedTuple):
  """labels [N] int32, exits [N] int32, macs [N] (MACs spent per image),
  reached [E] and padded [E] (real rows and bucket of every stage)."""
  labels: np.ndarray
  exits: np.ndarray
  macs: np.ndarray
  reached: np.ndarray
  padded: np.ndarray


def installed_versions() -> Dict[str, str]:
  """{"jax", "jaxlib"} versions of this process."""
  import jaxlib  # pylint: disable=g-import-not-at-top
  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__}


def _compiler_options(manifest, platform: str) -> Dict[str, str]:
  """The manifest's XLA options for `platform`, if this jaxlib takes them.

  Off with mexd's CPU switch (MEXD_CPU_FAST=0) or when XLA_FLAGS sets the
  same options (the user's choice wins).
  """
  opts = dict(manifest.get("compiler_options", {}).get(platform, {}))
  if not opts or not cpu.enabled():
    return {}
  flags = os.environ.get("XLA_FLAGS", "")
  if any(name in flags for name in opts):
    return {}
  try:
    jax.jit(lambda x: x + 1, compiler_options=opts).lower(
        np.float32(0)).compile()
  except Exception as e:  # pylint: disable=broad-except
    warnings.warn(f"mexd.deploy: XLA options {opts} not supported by this "
                  f"jaxlib ({e}); using XLA's defaults")
    return {}
  return opts


class Cascade:
  """A loaded export folder, ready to answer.

  Args:
    folder: a folder written by `python -m mexd.export`.
    thresholds: [E] thresholds replacing the exported ones (the last is
      taken as -inf); None: the exported (calibrated) ones.
    policy: an exit policy replacing the exported one (one of the
      manifest's "policy_names"); its thresholds must then be given.
    buckets: increasing padded batch sizes; None: 2^k and 1.5 * 2^k. A batch
      larger than the largest bucket runs in chunks of that size.
    verify: check every file's sha256 (a few ms per MB).

  Attributes:
    manifest: the folder's manifest.json.
    num_exits, num_classes, image_shape, class_names, exit_macs, mean, std,
    policy, thresholds: from the manifest (mean/std float32 [C], thresholds
    float32 [E]).

  Raises:
    ExportError: a folder that is missing, damaged, of another format
      version, made by a newer jax/jaxlib, or not lowered for this platform.
    InputError: bad thresholds or policy.
  """

  def __init__(self, folder, *, thresholds: Optional[Sequence[float]] = None,
               policy: Optional[str] = None,
               buckets: Optional[Sequence[int]] = None, verify: bool = True):
    self.folder = os.fspath(folder)
    m = artifact.read_manifest(self.folder)
    artifact.check_versions(m, **installed_versions())
    if verify:
      artifact.verify_files(self.folder, m)
    self.manifest = m
    self.num_exits = int(m["num_exits"])
    self.num_classes = int(m["num_classes"])
    self.image_shape = tuple(int(d) for d in m["image_shape"])
    self.class_names = list(m["class_names"])
    self.exit_macs = np.asarray(m["exit_macs"], np.float64)
    self.mean = np.asarray(m["mean"], np.float32)
    self.std = np.asarray(m["std"], np.float32)
    self.policy, self.thresholds = checks.policy_and_thresholds(
        m, policy, thresholds)
    self.buckets = checks.buckets(buckets)
    self.platform = jax_export.default_export_platform()
    if self.platform not in m["platforms"]:
      raise artifact.ExportError(
          f"{self.folder} was exported for {m['platforms']}, not for this "
          f"{self.platform} backend: export again with "
          f"--platforms={','.join(m['platforms'] + [self.platform])}")
    self._opts = _compiler_options(m, self.platform)
    with np.load(os.path.join(self.folder, artifact.WEIGHTS),
                 allow_pickle=False) as w:
      self._weights = [jax.device_put(w[f"w{i:04d}"])
                       for i in range(len(w.files))]
    self._preprocess = self._program(artifact.PREPROCESS)
    self._forward = self._program(artifact.FORWARD)
    self._stages = [self._program(artifact.stage_file(k))
                    for k in range(self.num_exits)]
    self._policy_index = jax.device_put(np.int32(
        list(m["policy_names"]).index(self.policy)))
    self._theta = [jax.device_put(t) for t in self.thresholds]

  def _program(self, name: str):
    """The jitted call of one serialized program."""
    path = os.path.join(self.folder, name)
    with open(path, "rb") as f:
      data = bytearray(f.read())
    try:
      exported = jax_export.deserialize(data)
    except Exception as e:  # pylint: disable=broad-except
      raise artifact.ExportError(
          f"{path} cannot be read by jax {jax.__version__} ({e}); export "
          "the run again with this jax") from None
    return jax.jit(exported.call, compiler_options=self._opts or None)

  def bucket(self, n: int) -> int:
    """The padded batch size for n live rows."""
    return buckets_lib.bucket(n, self.buckets)

  def _chunks(self, n: int) -> List[slice]:
    step = n if self.buckets is None else self.buckets[-1]
    return [slice(i, min(n, i + step)) for i in range(0, n, max(1, step))]

  def _inputs(self, images, rows: np.ndarray, b: int):
    """Normalised float32 [b, H, W, C] of rows `rows` padded to b."""
    idx = buckets_lib.pad_index(rows, b)
    if isinstance(images, jax.Array):
      x = buckets_lib.gather(images, jnp.asarray(idx))
    else:
      x = jax.device_put(images[idx])
    if x.dtype == jnp.uint8:
      return self._preprocess(x)
    return x.astype(jnp.float32)

  def stages(self, images) -> Iterator[StageExit]:
    """Runs the cascade, yielding the rows that leave after each stage.

    Args:
      images: [N, H, W, C] raw uint8 pixels (normalised as in training) or
        float images normalised already ((x / 255 - mean) / std).

    Yields:
      one `StageExit` per stage that ran, shallowest first; together their
      rows are 0..N-1, each once.

    Raises:
      InputError: wrong rank, shape or dtype; NaN/inf or out-of-range
        float pixels (host arrays; a jax.Array is not read back).
    """
    images = checks.images(images, self.image_shape, self.mean, self.std)
    for chunk in self._chunks(images.shape[0]):
      yield from self._run_chunk(images, np.arange(chunk.start, chunk.stop))

  def _run_chunk(self, images, pos: np.ndarray) -> Iterator[StageExit]:
    b = self.bucket(pos.size)
    h = self._inputs(images, pos, b)
    prev = jnp.full((b,), -1, jnp.int32)
    run = jnp.zeros((b,), jnp.int32)
    for k in range(self.num_exits):
      h, prev, run, code = self._stages[k](
          self._weights, h, prev, run, self._policy_index, self._theta[k])
      code = np.asarray(jax.device_get(code))[:pos.size]  # the one sync
      done = (code >= 0) | (k == self.num_exits - 1)
      labels = np.where(code >= 0, code, -1 - code).astype(np.int32)
      yield StageExit(k, pos[done], labels[done], int(pos.size), b)
      keep = np.flatnonzero(~done)
      if keep.size == 0:
        return
      if keep.size < pos.size:  # someone left: compact the survivors
        b = self.bucket(keep.size)
        h, prev, run = buckets_lib.gather((h, prev, run),
                               jnp.asarray(buckets_lib.pad_index(keep, b)))
      pos = pos[keep]

  def run(self, images) -> CascadeResult:
    """Early-exit answers of a batch with per-stage statistics.

    Args:
      images: [N, H, W, C] (as for `stages`).

    Returns:
      a `CascadeResult`: labels [N], exits [N], macs [N], reached [E],
      padded [E] (the largest bucket a stage ran with).
    """
    e = self.num_exits
    n = np.shape(images)[0] if np.ndim(images) == 4 else 0
    labels, exits = np.zeros(n, np.int32), np.zeros(n, np.int32)
    reached, padded = np.zeros(e, np.int64), np.zeros(e, np.int64)
    for out in self.stages(images):
      labels[out.rows], exits[out.rows] = out.labels, out.exit
      reached[out.exit] += out.reached
      padded[out.exit] = max(padded[out.exit], out.padded)
    return CascadeResult(labels, exits, self.exit_macs[exits], reached,
                         padded)

  def predict(self, images):
    """images [N, H, W, C] -> (labels [N] int32, exit index [N] int32)."""
    out = self.run(images)
    return out.labels, out.exits

  def predict_one(self, image):
    """One image [H, W, C] (or [1, H, W, C]) -> (label, exit) as ints; the
    batch-size-1 latency path."""
    image = checks.images(image, self.image_shape, self.mean, self.std,
                          one=True)
    out = self.run(image)
    return int(out.labels[0]), int(out.exits[0])

  def logits(self, images) -> np.ndarray:
    """The one-pass network: [N, H, W, C] -> float32 logits [E, N, C] of
    every exit (no early exit; what the cascade's answers are checked
    against, and the one-pass baseline of the benchmarks)."""
    images = checks.images(images, self.image_shape, self.mean, self.std)
    n = images.shape[0]
    out = []
    for chunk in self._chunks(n):
      rows = np.arange(chunk.start, chunk.stop)
      x = self._inputs(images, rows, self.bucket(rows.size))
      out.append(np.asarray(self._forward(self._weights, x))[:, :rows.size])
    if not out:
      return np.zeros((self.num_exits, 0, self.num_classes), np.float32)
    return np.concatenate(out, axis=1)

  def warmup(self, max_batch: int, one_pass: bool = False) -> int:
    """Compiles every (stage, bucket) up to `bucket(max_batch)` (and the
    one-pass network's, with `one_pass`) so that no request waits for a
    compilation. Returns the number of buckets."""
    sizes = sorted({self.bucket(n) for n in range(1, int(max_batch) + 1)})
    never = jax.device_put(np.float32(np.inf))  # Every row goes on.
    for b in sizes:
      x = self._preprocess(jnp.zeros((b,) + self.image_shape, jnp.uint8))
      if one_pass:
        jax.block_until_ready(self._forward(self._weights, x))
        continue
      h, prev, run = x, jnp.full((b,), -1, jnp.int32), jnp.zeros(
          (b,), jnp.int32)
      for k in range(self.num_exits):
        h, prev, run, code = self._stages[k](
            self._weights, h, prev, run, self._policy_index, never)
      jax.block_until_ready(code)
      buckets_lib.gather((h, prev, run), jnp.zeros((b,), jnp.int32))
    return len(sizes)

  def describe(self) -> Dict[str, Any]:
    """A summary for logs and the server's /info: exits, classes, shape,
    policy, thresholds, exit MACs, platform, source run."""
    m = self.manifest
    return {"num_exits": self.num_exits, "num_classes": self.num_classes,
            "class_names": self.class_names,
            "image_shape": list(self.image_shape),
            "input_dtypes": ["uint8", "float32"], "policy": self.policy,
            "thresholds": [float(t) if np.isfinite(t) else str(t)
                           for t in self.thresholds],
            "exit_macs": self.exit_macs.tolist(), "platform": self.platform,
            "versions": m["versions"], "source": m.get("source", {})}


def load(folder, **kwargs) -> Cascade:
  """`Cascade(folder, **kwargs)`: a checked, loaded export folder."""
  return Cascade(folder, **kwargs)
