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
  python benchmarks/input_pipeline.py
  python benchmarks/input_pipeline.py --batch 256 --no_feed
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--num", type=int, default=50000)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=200,
                 help="batches per pipeline measurement")
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--step_json", default=os.path.join(
      common.RESULTS, "speed_step_time.json"))
  p.add_argument("--step_images_per_s", type=float, default=None)
  p.add_argument("--no_feed", action="store_true")
  p.add_argument("--feed_width", type=int, default=16)
  p.add_argument("--feed_steps", type=int, default=4)
  common.add_common_flags(p, "input_pipeline")
  return p.parse_args(argv)


def consumer_rate(args):
  """(images/s, source) the train step consumes, or (None, reason)."""
  if args.step_images_per_s:
    return args.step_images_per_s, "--step_images_per_s"
  try:
    with open(args.step_json) as f:
      rows = json.load(f)["rows"]
  except (OSError, ValueError, KeyError):
    return None, f"no {args.step_json}"
  same = [r for r in rows if r["batch"] == args.batch] or rows
  r = max(same, key=lambda r: r["jax_img_s"])
  return r["jax_img_s"], (f"{os.path.basename(args.step_json)}: "
                          f"{r['method']} batch {r['batch']} width "
                          f"{r['width']} (fastest row)")


def main(argv=None):
  args = parse_args(argv)
  common.setup_process(args)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mexd import sharding  # pylint: disable=g-import-not-at-top
  from mexd.data import base, pipeline  # pylint: disable=g-import-not-at-top,g-multiple-import
  env = common.environment()
  rng = np.random.default_rng(0)
  ds = base.Dataset(
      images=rng.integers(0, 256, (args.num, 32, 32, 3), dtype=np.uint8),
      labels=rng.integers(0, 100, (args.num,), dtype=np.int32),
      num_classes=100, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
  batches = pipeline.TrainBatches(ds, args.batch, seed=0)
  mesh = sharding.make_mesh()
  bsh = sharding.batch_sharding(mesh)
  batch = args.batch - args.batch % mesh.devices.size
  if batch != args.batch:
    raise ValueError(f"batch {args.batch} must divide by the "
                     f"{mesh.devices.size} devices")
  n = args.steps

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
  for _ in range(args.reps):
    for k, fn in variants.items():
      times[k].append(common.timeit(fn))
  rate, source = consumer_rate(args)
  rows = []
  for k in variants:
    ips = n * args.batch / common.median(times[k])
    rows.append({"stage": k, "img_s": ips, "batches_s": ips / args.batch,
                 "x_step_consumption": ips / rate if rate else None,
                 "times_s": times[k]})
  feed = None
  if not args.no_feed:
    feed = feed_test(args, batches, bsh)
  print(f"\nCIFAR-shaped uint8 {args.num}x32x32x3, batch {args.batch}, "
        f"{n} batches x {args.reps} reps; load {common.loadavg()}")
  print(common.format_table(rows, ("stage", "img_s", "batches_s",
                                   "x_step_consumption"), {
      "img_s": ".0f", "batches_s": ".1f", "x_step_consumption": ".1f"}))
  print(f"step consumes: {rate if rate is None else round(rate, 1)} img/s "
        f"({source})")
  if feed:
    print(f"feed test (width {args.feed_width}): fixed batch "
          f"{feed['fixed_img_s']:.1f} img/s, prefetch-fed "
          f"{feed['prefetch_img_s']:.1f} img/s (ratio "
          f"{feed['ratio']:.3f})")
  common.write_json(args.out, {
      "benchmark": "input_pipeline", "environment": env,
      "settings": {k: v for k, v in vars(args).items() if k != "out"},
      "consumer_img_s": rate, "consumer_source": source, "rows": rows,
      "feed_test": feed})
  return rows


def feed_test(args, batches, bsh):
  """Step img/s on a fixed device batch vs fed by `prefetch` (interleaved)."""
  import jax  # pylint: disable=g-import-not-at-top
  from mexd.data import pipeline  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import step_time  # pylint: disable=g-import-not-at-top
  step, state, _, _ = step_time.make_jax_step(
      width=args.feed_width, batch=args.batch, method_name="pl",
      num_classes=100, dtype="float32")
  fixed = pipeline.make_global(batches.host_batch(0), bsh)
  holder = {"state": state, "start": 0}
  k = args.feed_steps
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
  for _ in range(args.reps):
    tf.append(common.timeit(run_fixed, jax.block_until_ready))
    tp.append(common.timeit(run_fed, jax.block_until_ready))
  fixed_ips = k * args.batch / common.median(tf)
  fed_ips = k * args.batch / common.median(tp)
  return {"width": args.feed_width, "fixed_img_s": fixed_ips,
          "prefetch_img_s": fed_ips, "ratio": fed_ips / fixed_ips,
          "fixed_times_s": tf, "prefetch_times_s": tp}


if __name__ == "__main__":
  main()
