"""Host input pipeline throughput vs what the train step consumes.

Synthetic CIFAR-shaped uint8 data (`--num` x 32 x 32 x 3, default 50,000) in
a `mexd.data.base.Dataset`, batched by `mexd.data.pipeline.TrainBatches`:

* host_batch: `TrainBatches.host_batch(step)` alone (permutation + gather);
* host_batch + make_global: plus the transfer to a global `jax.Array` on the
  data-parallel mesh (blocked until ready);
* prefetch: the background-thread iterator `pipeline.prefetch` drained as
  fast as possible;
* consumer: the images/s a train step consumes, read from
  `--step_json` (a `speed_step_time.json` row with the same batch, else its
  first row) or `--step_images_per_s`.
* feed test (unless --no_feed): a small jitted step (multi-exit ResNet-18 of
  base width `--feed_width`, P&L) timed on a fixed device batch vs fed by
  `prefetch`; the ratio shows whether the pipeline slows the step.

Usage:
  python -m benchmarks.input_pipeline
  python -m benchmarks.input_pipeline --batch 256 --no_feed
"""

import json
import os

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import common
from benchmarks import fixtures
from mexd import sharding
from mexd.data import base
from mexd.data import pipeline

FLAGS = flags.FLAGS
flags.DEFINE_integer("num", 50000, "Images of the synthetic data set.")
flags.DEFINE_integer("batch", 128, "Batch size.")
flags.DEFINE_integer("steps", 200, "Batches per pipeline measurement.")
flags.DEFINE_integer("reps", 3, "Interleaved repetitions.")
flags.DEFINE_string("step_json", os.path.join(common.RESULTS,
                                              "speed_step_time.json"),
                    "step_time record whose img/s is the consumer rate.")
flags.DEFINE_float("step_images_per_s", None,
                   "Consumer rate in img/s (instead of --step_json).")
flags.DEFINE_bool("no_feed", False, "Skip the feed test.")
flags.DEFINE_integer("feed_width", 16,
                     "Base width of the feed test's ResNet-18.")
flags.DEFINE_integer("feed_steps", 4, "Steps per feed-test repetition.")
common.define_flags("input_pipeline")
flags.adopt_module_key_flags(common)


def consumer_rate(step_json, batch, images_per_s=None):
  """(images/s, source) the train step consumes, or (None, reason)."""
  if images_per_s:
    return images_per_s, "--step_images_per_s"
  try:
    with open(step_json) as f:
      rows = json.load(f)["rows"]
  except (OSError, ValueError, KeyError):
    return None, f"no {step_json}"
  same = [r for r in rows if r["batch"] == batch] or rows
  r = max(same, key=lambda r: r["jax_img_s"])
  return r["jax_img_s"], (f"{os.path.basename(step_json)}: "
                          f"{r['method']} batch {r['batch']} width "
                          f"{r['width']} (fastest row)")


def main(argv):
  del argv
  common.setup_from_flags()
  env = common.environment()
  rng = np.random.default_rng(0)
  ds = base.Dataset(
      images=rng.integers(0, 256, (FLAGS.num, 32, 32, 3), dtype=np.uint8),
      labels=rng.integers(0, 100, (FLAGS.num,), dtype=np.int32),
      num_classes=100, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
  batches = pipeline.TrainBatches(ds, FLAGS.batch, seed=0)
  mesh = sharding.make_mesh()
  bsh = sharding.batch_sharding(mesh)
  batch = FLAGS.batch - FLAGS.batch % mesh.devices.size
  if batch != FLAGS.batch:
    raise ValueError(f"batch {FLAGS.batch} must divide by the "
                     f"{mesh.devices.size} devices")
  n = FLAGS.steps

  def host_only():
    for s in range(n):
      batches.host_batch(s)

  def host_global():
    out = None
    for s in range(n):
      out = pipeline.make_global(batches.host_batch(s), bsh)
    jax.block_until_ready(out)

  def prefetched():
    out = None
    for _, out in pipeline.prefetch(batches, 0, n, bsh):
      pass
    jax.block_until_ready(out)

  variants = {"host_batch": host_only, "host_batch+make_global": host_global,
              "prefetch": prefetched}
  times = {k: [] for k in variants}
  host_global()  # warm-up (permutation cache, transfer path)
  for _ in range(FLAGS.reps):
    for k, fn in variants.items():
      times[k].append(common.timeit(fn))
  rate, source = consumer_rate(FLAGS.step_json, FLAGS.batch,
                               FLAGS.step_images_per_s)
  rows = []
  for k in variants:
    ips = n * FLAGS.batch / common.median(times[k])
    rows.append({"stage": k, "img_s": ips, "batches_s": ips / FLAGS.batch,
                 "x_step_consumption": ips / rate if rate else None,
                 "times_s": times[k]})
  feed = None
  if not FLAGS.no_feed:
    feed = feed_test(batches, bsh, width=FLAGS.feed_width, batch=FLAGS.batch,
                     steps=FLAGS.feed_steps, reps=FLAGS.reps)
  print(f"\nCIFAR-shaped uint8 {FLAGS.num}x32x32x3, batch {FLAGS.batch}, "
        f"{n} batches x {FLAGS.reps} reps; load {common.loadavg()}")
  print(common.format_table(rows, ("stage", "img_s", "batches_s",
                                   "x_step_consumption"), {
      "img_s": ".0f", "batches_s": ".1f", "x_step_consumption": ".1f"}))
  print(f"step consumes: {rate if rate is None else round(rate, 1)} img/s "
        f"({source})")
  if feed:
    print(f"feed test (width {FLAGS.feed_width}): fixed batch "
          f"{feed['fixed_img_s']:.1f} img/s, prefetch-fed "
          f"{feed['prefetch_img_s']:.1f} img/s (ratio "
          f"{feed['ratio']:.3f})")
  common.write_record("input_pipeline", rows, env, consumer_img_s=rate,
                      consumer_source=source, feed_test=feed)


def feed_test(batches, bsh, *, width, batch, steps, reps):
  """Step img/s on a fixed device batch vs fed by `prefetch` (interleaved)."""
  setup = fixtures.make_step(fixtures.resnet18(width), "pl", batch=batch)
  step = setup.step
  fixed = pipeline.make_global(batches.host_batch(0), bsh)
  holder = {"state": setup.state, "start": 0}
  k = steps
  for _ in range(2):
    holder["state"], _ = step(holder["state"], fixed)
  jax.block_until_ready(holder["state"])

  def run_fixed():
    s = holder["state"]
    for _ in range(k):
      s, _ = step(s, fixed)
    holder["state"] = s
    return s

  def run_fed():
    s = holder["state"]
    start = holder["start"]
    for _, b in pipeline.prefetch(batches, start, start + k, bsh):
      s, _ = step(s, b)
    holder["state"], holder["start"] = s, start + k
    return s

  tf, tp = [], []
  for _ in range(reps):
    tf.append(common.timeit(run_fixed, jax.block_until_ready))
    tp.append(common.timeit(run_fed, jax.block_until_ready))
  fixed_ips = k * batch / common.median(tf)
  fed_ips = k * batch / common.median(tp)
  return {"width": width, "fixed_img_s": fixed_ips,
          "prefetch_img_s": fed_ips, "ratio": fed_ips / fixed_ips,
          "fixed_times_s": tf, "prefetch_times_s": tp}


if __name__ == "__main__":
  app.run(main)
