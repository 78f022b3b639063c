"""Batch norm + ReLU, forward and backward: mexd's closed-form vjp vs flax.

One jitted program holds the training-mode batch norms of a network's
activation shapes (default: the 20 of the CIFAR ResNet-18 backbone at batch
64: 5 x [64, 32, 32, 64], 5 x [64, 16, 16, 128], 5 x [64, 8, 8, 256],
5 x [64, 4, 4, 512]), each followed by a ReLU and a dot with a fixed
cotangent; the program returns the gradients of x, scale and bias.
"flax" differentiates `flax.linen.BatchNorm` by autodiff, "mexd" runs
`mexd.models.norm.batch_norm_train` (`jax.custom_vjp`, one two-output
reduction and one elementwise pass backward). Both are compiled with mexd's
XLA options (`mexd.xla_options.jit`) and timed interleaved; the table gives
median ms per call and the median of the per-repetition ratio flax / mexd.

Usage:
  python benchmarks/batch_norm.py
  python benchmarks/batch_norm.py --batch 128 --reps 21
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--width", type=int, default=64,
                 help="stage widths (w, 2w, 4w, 8w) at 32, 16, 8, 4 pixels")
  p.add_argument("--per_stage", type=int, default=5,
                 help="batch norms per stage")
  p.add_argument("--reps", type=int, default=15)
  common.add_common_flags(p, "batch_norm")
  return p.parse_args(argv)


def make_grad_fn(kind: str):
  """jitted (xs, params, cotangents) -> (d xs, d params) for "flax"/"mexd"."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mexd import xla_options  # pylint: disable=g-import-not-at-top
  from mexd.models import norm  # pylint: disable=g-import-not-at-top

  def bn(x, p):
    if kind == "mexd":
      return norm.batch_norm_train(x, p["scale"], p["bias"], 1e-5)[0]
    stats = {"mean": jnp.zeros_like(p["scale"]),
             "var": jnp.ones_like(p["scale"])}
    return nn.BatchNorm(use_running_average=False, epsilon=1e-5).apply(
        {"params": p, "batch_stats": stats}, x, mutable=["batch_stats"])[0]

  def loss(xs, ps, gs):
    return sum(jnp.sum(jax.nn.relu(bn(x, p)) * g)
               for x, p, g in zip(xs, ps, gs))

  return xla_options.jit(jax.grad(loss, (0, 1)))


def main(argv=None):
  args = parse_args(argv)
  common.setup_process(args)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  w, b = args.width, args.batch
  shapes = [(b, 32 >> s, 32 >> s, w << s) for s in range(4)
            for _ in range(args.per_stage)]
  rng = np.random.default_rng(0)
  xs = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]
  gs = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]
  ps = [{"scale": jnp.asarray(rng.uniform(0.5, 2, s[-1]), jnp.float32),
         "bias": jnp.zeros(s[-1], jnp.float32)} for s in shapes]
  fns = {k: make_grad_fn(k) for k in ("flax", "mexd")}
  outs = {k: jax.block_until_ready(f(xs, ps, gs)) for k, f in fns.items()}
  # Same gradients (the timing compares equal work).
  err = max(float(jnp.max(jnp.abs(a - c))) for a, c in zip(
      jax.tree_util.tree_leaves(outs["flax"]),
      jax.tree_util.tree_leaves(outs["mexd"])))
  times = {k: [] for k in fns}
  for _ in range(args.reps):
    for k, f in fns.items():
      times[k].append(common.timeit(lambda f=f: f(xs, ps, gs),
                                    jax.block_until_ready))
  ratio = common.median([a / c for a, c in zip(times["flax"], times["mexd"])])
  row = {"layers": len(shapes), "batch": b, "width": w,
         "flax_ms": 1e3 * common.median(times["flax"]),
         "mexd_ms": 1e3 * common.median(times["mexd"]),
         "ratio_flax_over_mexd": ratio, "max_abs_grad_diff": err}
  print(common.format_table([row], list(row), {
      "flax_ms": ".1f", "mexd_ms": ".1f", "ratio_flax_over_mexd": ".3f",
      "max_abs_grad_diff": ".2g"}))
  common.write_json(args.out, {"args": vars(args), "rows": [row],
                               "times_s": times})


if __name__ == "__main__":
  main()
