"""Batch norm + ReLU, forward and backward: mexd's closed-form vjp vs flax.

One jitted program holds the training-mode batch norms of a network's
activation shapes (default: the 20 of the CIFAR ResNet-18 backbone at batch
64: 5 x [64, 32, 32, 64], 5 x [64, 16, 16, 128], 5 x [64, 8, 8, 256],
5 x [64, 4, 4, 512]), each followed by a ReLU and a dot with a fixed
cotangent; the program returns the gradients of x, scale and bias.
"flax" differentiates `flax.linen.BatchNorm` by autodiff, "mexd" runs
`mexd.cpu.norm.batch_norm_train` (`jax.custom_vjp`, one two-output
reduction and one elementwise pass backward). Both are compiled with mexd's
XLA options (`mexd.cpu.xla_options.jit`) and timed interleaved; the table
gives median ms per call and the median of the per-repetition ratio
flax / mexd.

Usage:
  python -m benchmarks.batch_norm
  python -m benchmarks.batch_norm --batch 128 --reps 21
"""

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from mexd.cpu import norm
from mexd.cpu import xla_options

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 64, "Batch size.")
flags.DEFINE_integer("width", 64,
                     "Stage widths (w, 2w, 4w, 8w) at 32, 16, 8, 4 pixels.")
flags.DEFINE_integer("per_stage", 5, "Batch norms per stage.")
flags.DEFINE_integer("reps", 15, "Interleaved repetitions.")
common.define_flags("batch_norm")
flags.adopt_module_key_flags(common)


def make_grad_fn(kind: str):
  """jitted (xs, params, cotangents) -> (d xs, d params) for "flax"/"mexd"."""
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


def main(argv):
  del argv
  common.setup_from_flags()
  env = common.environment()
  w, b = FLAGS.width, FLAGS.batch
  shapes = [(b, 32 >> s, 32 >> s, w << s) for s in range(4)
            for _ in range(FLAGS.per_stage)]
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
  for _ in range(FLAGS.reps):
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
  common.write_record("batch_norm", [row], env, times_s=times)


if __name__ == "__main__":
  app.run(main)
