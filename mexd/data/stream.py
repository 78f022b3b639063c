"""Streaming input pipeline on grain, for data sets that do not fit in memory.

The in-memory path (`mexd.data.base.Dataset`) decodes a whole split into one
host array. This path reads tfds-prepared array_record files record by
record instead (random access, no TensorFlow), so ImageNet at 224 px trains
on hosts with far less memory than its ~190 GB of pixels:

  splits, indices = stream.load_splits(config.data)   # StreamSplits
  train = stream.TrainStream(splits["train"], batch_size, seed, ...)
  for batch in train.host_batches(start_step, total_steps): ...

What is a function of what:

* The global batch of step s is `sampler.EpochSampler(len(train), B,
  seed).indices(s)`: a permutation seeded by (seed, epoch), the same sampler
  as the in-memory path. Process p reads rows [p*B/P, (p+1)*B/P) of it and
  nothing else: each host reads only its share, and the shares of one step
  are disjoint with the global batch as their union.
* Row r of step s is cropped with a generator seeded by (seed, s, r), so the
  pixels of every batch are a function of (seed, step) alone: they do not
  depend on the number of worker processes or hosts.
* Decoding (JPEG, Pillow) and the crops run in grain worker processes
  (`workers`; 0 decodes in the training process with `read_threads`
  threads), batched to the per-host batch; `pipeline.prefetch` then puts
  each host batch on the mesh with `jax.make_array_from_process_local_data`.
* Because the position is a function of the step, resuming at step k
  rebuilds the pipeline at k (`TrainStream.host_batches(k, ...)`); the
  position is also saved with every checkpoint through grain's orbax handler
  (`Position`, one JSON file per process) and checked on restore.

Training images get the Inception-style random-resized crop
(`image_ops.random_resized_crop`; horizontal flips are the train step's,
`config.augment.flip`), evaluation images the resize + center crop
(`image_ops.center_crop`). docs/data.md says how to prepare ImageNet.
"""

import dataclasses
import functools
import json
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

from mexd import errors
from mexd.data import base
from mexd.data import image_ops
from mexd.data import records as records_lib
from mexd.data import sampler

StreamSplit = records_lib.StreamSplit
Records = records_lib.Records
decoded_gib = records_lib.decoded_gib

# Defaults of the optional config.data fields this path reads.
DEFAULTS = dict(workers=0, read_threads=16, crop_fraction=0.875,
                crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3),
                stats_images=1000, max_gib=32.0)


def option(cfg, name: str):
  """config.data.<name>, or its default (`DEFAULTS`) when unset."""
  value = cfg.get(name) if cfg is not None else None
  return DEFAULTS[name] if value is None else value


def load_splits(cfg) -> Tuple[Dict[str, StreamSplit], Dict[str, np.ndarray]]:
  """The streamed train/val/test splits of tfds set `cfg.name`.

  As `base.make_splits`: a permutation seeded by `cfg.split_seed` orders the
  official train split and its last `cfg.val_size` records are the
  validation split; "test" is tfds' "test" split, else its "validation"
  split (imagenet2012). mean/std are `cfg.mean`/`cfg.std`, or estimated
  from `cfg.stats_images` seeded training images.

  Returns:
    (splits, indices): StreamSplits "train", "val", "test", and the record
    ids of "train" and "val" in the official train split (splits.npz).
  """
  if not str(cfg.name).startswith("tfds:"):
    raise errors.InputError(
        f"config.data.stream=True streams tfds:* sets (array_record files); "
        f"{cfg.name!r} is read into memory: leave data.stream unset")
  if cfg.get("labeled_per_class") or cfg.get("unlabeled_batch"):
    raise errors.InputError(
        "the data-limited setting (data.labeled_per_class, "
        "data.unlabeled_batch) needs every label in memory; it is not "
        "available with data.stream=True")
  name = cfg.name[len("tfds:"):]
  data_dir = None if cfg.get("data_dir") is None else str(cfg.data_dir)
  builder = records_lib.open_builder(name, data_dir)
  num_classes = builder.info.features["label"].num_classes
  have = list(builder.info.splits)
  test_split = "test" if "test" in have else "validation"
  for s in ("train", test_split):
    if s not in have:
      raise base.DataError(f"tfds:{name} in {builder.data_dir} has no {s!r} "
                           f"split (has {sorted(have)}).")
  train_records = Records(name, data_dir, "train")
  test_records = Records(name, data_dir, test_split)
  n = len(train_records)
  val_size = cfg.val_size
  if not 0 <= val_size < n:
    raise errors.InputError(
        f"val_size must be in [0, {n}) for a train split of {n} images, "
        f"got {val_size}")
  perm = np.random.default_rng(cfg.get("split_seed", 0)).permutation(n)
  indices = {"train": np.sort(perm[:n - val_size]),
             "val": np.sort(perm[n - val_size:])}
  channels = builder.info.features["image"].shape[-1] or 3
  size = records_lib.image_size(cfg)
  crop = float(option(cfg, "crop_fraction"))
  if not 0 < crop <= 1:
    raise errors.InputError(
        f"config.data.crop_fraction must be in (0, 1], got {crop}")
  make = functools.partial(StreamSplit, num_classes=num_classes,
                           image_shape=(size, size, channels),
                           crop_fraction=crop)
  train = make(train_records, indices["train"], mean=(0.0,) * channels,
               std=(1.0,) * channels)
  mean, std = cfg.get("mean"), cfg.get("std")
  if mean is None or std is None:
    mean, std = records_lib.estimate_stats(train, int(option(cfg, "stats_images")),
                               seed=cfg.get("split_seed", 0))
  for what, v in (("mean", mean), ("std", std)):
    if len(v) != channels:
      raise errors.InputError(
          f"config.data.{what} has {len(v)} values for {channels}-channel "
          "images")
  mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
  splits = {
      "train": make(train_records, indices["train"], mean=mean, std=std),
      "val": make(train_records, indices["val"], mean=mean, std=std),
      "test": make(test_records, np.arange(len(test_records)), mean=mean,
                   std=std)}
  return splits, indices


# ---------------------------------------------------------------------------
# Element functions (run in grain's worker processes; picklable).


@dataclasses.dataclass(frozen=True)
class _TrainExample:
  """Host position j -> {"image", "label"} of (step, row) it stands for."""

  split: StreamSplit
  sampler: Any  # sampler.EpochSampler
  first_row: int
  per_host: int
  seed: int
  scale: Tuple[float, float]
  ratio: Tuple[float, float]

  def __call__(self, j: int) -> Dict[str, np.ndarray]:
    step, r = divmod(int(j), self.per_host)
    row = self.first_row + r  # Row of the global batch.
    record = int(self.split.indices[self.sampler.indices(step)[row]])
    ex = self.split.records[record]
    size, _, channels = self.split.image_shape
    rng = np.random.default_rng([self.seed, 0x5EED, step, row])
    image = image_ops.random_resized_crop(
        ex["image"], rng, size, channels=channels, scale=self.scale,
        ratio=self.ratio)
    return {"image": image, "label": np.int32(ex["label"])}


@dataclasses.dataclass(frozen=True)
class _EvalExample:
  """Host position j -> {"image", "label"} of its row of a padded global
  eval batch (label -1 past the end of the split)."""

  split: StreamSplit
  batch_size: int
  first_row: int
  per_host: int

  def __call__(self, j: int) -> Dict[str, np.ndarray]:
    g, r = divmod(int(j), self.per_host)
    pos = g * self.batch_size + self.first_row + r
    if pos < len(self.split):
      image, label = self.split.eval_image(pos)
    else:
      image, label = self.split.eval_image(0)[0], -1
    return {"image": image, "label": np.int32(label)}


def import_grain():
  """The grain module, or one clear error saying how to install it."""
  try:
    import grain  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise base.DataError(
        f"the streaming pipeline (data.stream) needs grain, which is not "
        f"importable ({e}). Install it with `pip install 'mexd[stream]'`."
    ) from e
  return grain


def _iterate(ds, workers: int, read_threads: int) -> Iterator:
  """Iterates a grain MapDataset of host batches, decoding in `workers`
  processes (0: in this process, with `read_threads` threads)."""
  grain = import_grain()
  # Elements are host batches: one in flight per read thread. With worker
  # processes each runs a few threads (file reads overlap the decoding).
  threads = max(1, read_threads if not workers else min(
      4, read_threads // workers))
  it_ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=threads, prefetch_buffer_size=threads))
  if workers:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():
      # grain's worker start reads an absl flag; outside an absl app (a
      # notebook, a test) the flags are unparsed and keep their defaults.
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=2))
  iterator = iter(it_ds)
  try:
    yield from iterator
  finally:
    close = getattr(iterator, "close", None)
    if close is not None:
      close()


def _host_rows(global_batch: int) -> Tuple[int, int]:
  from mexd.data import pipeline  # pylint: disable=g-import-not-at-top
  rows = pipeline.host_slice(global_batch)
  return rows.start, rows.stop - rows.start


class TrainStream:
  """Global train batches streamed from a `StreamSplit`.

  The streaming twin of `pipeline.TrainBatches`: `host_batches(start, stop)`
  yields this process's rows {"image": uint8 [B/P, S, S, C], "label": int32
  [B/P]} of the global batches of steps [start, stop).
  """

  def __init__(self, split: StreamSplit, batch_size: int, seed: int, *,
               workers: int = 0, read_threads: int = 16,
               scale: Sequence[float] = (0.08, 1.0),
               ratio: Sequence[float] = (3 / 4, 4 / 3)):
    if not isinstance(workers, int) or workers < 0:
      raise errors.InputError(
          f"config.data.workers must be an integer >= 0, got {workers!r}")
    lo, hi = (float(s) for s in scale)
    if not 0 < lo <= hi <= 1:
      raise errors.InputError(
          f"config.data.crop_scale must be (low, high) with 0 < low <= high "
          f"<= 1, got {tuple(scale)}")
    rlo, rhi = (float(r) for r in ratio)
    if not 0 < rlo <= rhi:
      raise errors.InputError(
          f"config.data.crop_ratio must be (low, high) with 0 < low <= "
          f"high, got {tuple(ratio)}")
    self.split, self.batch_size, self.seed = split, batch_size, seed
    self.sampler = sampler.EpochSampler(len(split), batch_size, seed)
    self.steps_per_epoch = self.sampler.steps_per_epoch
    self.workers, self.read_threads = workers, read_threads
    self.scale, self.ratio = (lo, hi), (rlo, rhi)

  def dataset(self, start: int, stop: int):
    """grain MapDataset whose element i is the host batch of step start+i."""
    grain = import_grain()
    first, per = _host_rows(self.batch_size)
    fn = _TrainExample(self.split, self.sampler, first, per, self.seed,
                       self.scale, self.ratio)
    return (grain.MapDataset.range(start * per, stop * per).map(fn)
            .batch(per, drop_remainder=True))

  def host_batches(self, start: int, stop: int) -> Iterator[Dict]:
    """This process's rows of the global batches of steps [start, stop)."""
    if stop <= start:
      return iter(())
    return _iterate(self.dataset(start, stop), self.workers,
                    self.read_threads)

  def host_batch(self, step: int) -> Dict[str, np.ndarray]:
    """This process's rows of the global batch of `step` (no workers)."""
    return self.dataset(step, step + 1)[0]

  def position(self, next_step: int) -> Dict[str, Any]:
    """The pipeline's position before step `next_step` (checkpointed)."""
    import jax  # pylint: disable=g-import-not-at-top
    return {"next_step": int(next_step), "seed": self.seed,
            "global_batch": self.batch_size, "records": len(self.split),
            "process_index": jax.process_index(),
            "process_count": jax.process_count()}

  def check_position(self, saved: Dict[str, Any], step: int) -> int:
    """The step a restored `position` resumes at; raises if it is not this
    pipeline's position at `step` (another seed, batch or split)."""
    want = self.position(step)
    keys = ("next_step", "seed", "global_batch", "records")
    differ = [f"{k} {saved.get(k)!r} saved, {want[k]!r} now" for k in keys
              if saved.get(k) != want[k]]
    if differ:
      raise errors.InputError(
          f"the input pipeline's position saved with checkpoint {step} does "
          f"not match this run ({'; '.join(differ)})")
    return int(saved["next_step"])


class Position:
  """A pipeline position as grain's orbax handler saves it (one JSON file
  per process in the checkpoint's "data" item): `get_state` / `set_state`
  of bytes, as grain's DataLoader iterator offers."""

  def __init__(self, state: Optional[Dict[str, Any]] = None):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(self.state, sort_keys=True).encode()

  def set_state(self, state: bytes):
    self.state = json.loads(state)

  def start_prefetch(self):  # Called by grain's handler after a restore.
    pass


def eval_host_batches(split: StreamSplit, batch_size: int, *,
                      workers: int = 0, read_threads: int = 16
                      ) -> Iterator[Tuple[Dict[str, np.ndarray], int]]:
  """Yields (this process's rows of each padded global eval batch, number
  of valid rows of that global batch), as `pipeline.eval_batches` does for
  an in-memory split. Padded rows have label -1."""
  grain = import_grain()
  first, per = _host_rows(batch_size)
  n = len(split)
  num_batches = -(-n // batch_size)
  fn = _EvalExample(split, batch_size, first, per)
  ds = (grain.MapDataset.range(num_batches * per).map(fn)
        .batch(per, drop_remainder=True))
  for g, batch in enumerate(_iterate(ds, workers, read_threads)):
    yield batch, min(batch_size, n - g * batch_size)
