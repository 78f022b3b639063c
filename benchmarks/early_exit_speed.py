"""Staged early-exit inference: wall-clock speed-up vs the cost model's ideal.

For each model (randomly initialised; speed does not depend on the weights)
the one-pass logits of N random images give max-prob scores, and thresholds
are set so that a fraction p of the examples still running leaves at every
early exit (p in `--fractions`; the last exit takes the rest). Then:

* ideal speed-up = C_full / mean_n C_cascade(exit_n), where C_cascade(k) is
  the XLA flop count of stages 0..k (blocks AND exit heads 0..k, as the
  cascade evaluates every head it passes) and C_full = C_cascade(E-1), the
  one-pass forward of every exit. exit_n are the exits the staged run took.
* wall speed-up = t(one-pass jitted forward of all N) / t(staged run of all
  N), both medians of `--reps` interleaved runs after warm-up (so every
  bucket is compiled). Two staged modes (`--modes`):
  - "batch": `StagedPredictor.run` on all N at once; the later stages run
    on the compacted (bucket-padded) survivors of that one batch; the
    one-pass reference runs all N at once too.
  - "pooled": `StagedPredictor.run_pooled(x, B)`: stage 0 on batches of B
    (`--batch`), survivors pooled across batches so every stage runs on
    full batches of B; the reference is the one-pass forward on the same
    batches of B.
* efficiency = wall / ideal (target >= 80 %).
* time model: each stage's jitted program timed alone at batch N (B for
  "pooled") gives
  cumulative seconds per image T(k); time-model speed-up = T(E-1) / mean_n
  T(exit_n). On CPU the flop model and the time model differ (early stages
  with large maps cost more time per flop), so both are reported: wall /
  time-model says how much the staged machinery (gathers, padding, host
  syncs) loses, wall / flop-ideal what a user gets against the cost model.

Batch-size-1 latency: `StagedPredictor.predict_one` with thresholds that
force exit k (median over `--latency_reps` calls), next to the one-pass
batch-1 forward.

Usage:
  python -m benchmarks.early_exit_speed
  python -m benchmarks.early_exit_speed --models digits_cnn --n 4096
"""

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import common
from benchmarks import fixtures
from mexd import models
from mexd.cpu import xla_options
from mexd.early_exit import policies
from mexd.early_exit import staged
from mexd.models import costs as costs_lib

# name -> (input shape, classes, default N, default pooled batch B)
_SETTINGS = {"digits_cnn": ((8, 8, 1), 10, 2048, 256),
             "small_cnn": ((8, 8, 1), 10, 2048, 256),
             "resnet18": ((32, 32, 3), 100, 256, 64)}

FLAGS = flags.FLAGS
flags.DEFINE_string("models", "digits_cnn,resnet18", "Comma list of models.")
flags.DEFINE_string("fractions", "0.25,0.5,0.75",
                    "Fraction p of the live examples leaving at each exit.")
flags.DEFINE_integer("n", None, "Images per run (default: 2048 small nets, "
                     "256 resnet).")
flags.DEFINE_string("modes", "batch,pooled", "Staged modes: batch (run on all "
                    "N), pooled (run_pooled in batches of --batch).")
flags.DEFINE_integer("batch", None, "B of the pooled mode (default: 256 "
                     "small nets, 64 resnet).")
flags.DEFINE_integer("reps", 5, "Interleaved repetitions.")
flags.DEFINE_integer("latency_reps", 20, "Calls per batch-1 latency.")
common.define_flags("early_exit")
flags.adopt_module_key_flags(common)


def cascade_costs(model, variables, image_shape):
  """[E] XLA flops of stages 0..k (blocks and heads 0..k) for one image.

  `mexd.models.costs.exit_costs(..., cascade=True)`: counted with stock
  flax layers (XLA's convolutions, the architecture's cost).
  """
  rows = costs_lib.exit_costs(model, variables, image_shape, cascade=True)
  return np.asarray([r["flops"] for r in rows])


def stage_times(model, variables, x, reps):
  """[E] cumulative seconds per image of stages 0..k, timed at batch N.

  Each stage is the jitted program `StagedPredictor` runs, timed alone on
  the hidden state of the previous one (median of `reps`); the cumulative
  sums give a *time* model of the cascade next to the flop model.
  """
  e = model.apply(variables, method=lambda m: m.num_exits)
  h, per = x, []
  state = policies.init_state(x.shape[0])
  index, theta = jax.device_put(np.int32(0)), jax.device_put(np.float32(2.0))
  for k in range(e):
    fn = staged.shared_programs(model)(k)
    args = (variables, h, state, index, theta)
    out = jax.block_until_ready(fn(*args))
    ts = [common.timeit(lambda: fn(*args), jax.block_until_ready)
          for _ in range(reps)]
    per.append(common.median(ts) / x.shape[0])
    h = out[0]
  return np.cumsum(per)


def bench_model(name, *, n=None, batch=None, modes=("batch", "pooled"),
                fractions=(0.25, 0.5, 0.75), reps=5, latency_reps=20):
  """(rows, batch-1 latency rows, cascade costs) of model `name`."""
  shape, classes, default_n, bsz = _SETTINGS[name]
  n = n or default_n
  bsz = min(batch or bsz, n)
  model = models.get_model(name, num_classes=classes)
  rng = np.random.default_rng(0)
  x = jax.device_put(rng.standard_normal((n,) + shape).astype(np.float32))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
  costs = cascade_costs(model, variables, shape)
  times = {m: stage_times(model, variables, x if m == "batch" else x[:bsz],
                          reps) for m in modes}
  e = len(costs)
  full = xla_options.jit(lambda v, x: model.apply(v, x, train=False)[0])
  logits = np.asarray(full(variables, x))
  scores = np.asarray(policies.scores(logits, "max_prob"))

  def one_pass(b):
    """The reference: one-pass forward of all N in batches of b."""
    out = [full(variables, x[i:i + b]) for i in range(0, n, b)]
    return jax.block_until_ready(out)

  rows = []
  for p in fractions:
    theta = fixtures.thresholds_for(scores, p)
    pred = staged.StagedPredictor(model, variables, theta, "max_prob")
    for mode in modes:
      b = n if mode == "batch" else bsz
      go = pred.run if mode == "batch" else (lambda x, b=b: pred.run_pooled(
          x, b))
      res = go(x)  # warm-up: compiles every bucket it needs
      one_pass(b)
      t_full, t_staged = [], []
      for _ in range(reps):
        t_full.append(common.timeit(lambda b=b: one_pass(b)))
        t_staged.append(common.timeit(lambda go=go: go(x)))
      rows.append(_row(name, mode, n, b, p, res, costs, times[mode], t_full,
                       t_staged))
  # Batch-size-1 latency per exit.
  lat = []
  x1 = x[:1]
  one = common.timeit(lambda: full(variables, x1), jax.block_until_ready)
  t_one = []
  for _ in range(latency_reps):
    t_one.append(common.timeit(lambda: full(variables, x1),
                               jax.block_until_ready))
  del one
  for k in range(e):
    theta = np.full(e, np.inf, np.float32)
    theta[k] = -np.inf
    pred = staged.StagedPredictor(model, variables, theta, "max_prob")
    assert pred.predict_one(x[0])[1] == k
    ts = [common.timeit(lambda: pred.predict_one(x[i % n]))
          for i in range(latency_reps)]
    lat.append({"model": name, "exit": k,
                "latency_ms": 1e3 * common.median(ts),
                "cost_frac": float(costs[k] / costs[-1]),
                "one_pass_ms": 1e3 * common.median(t_one)})
  return rows, lat, {"flops": costs.tolist(),
                     "stage_seconds_per_image": {
                         m: t.tolist() for m, t in times.items()}}


def _row(name, mode, n, b, p, res, costs, times, t_full, t_staged):
  """One table row: exit mix, flop and time-model ideals, wall speed-up."""
  e = len(costs)
  exit_frac = np.bincount(res.exits, minlength=e) / n
  ideal = costs[-1] / float(np.mean(costs[res.exits]))
  time_ideal = times[-1] / float(np.mean(times[res.exits]))
  wall = common.median(t_full) / common.median(t_staged)
  return {"model": name, "mode": mode, "n": n, "batch": b, "p": p,
          "exit_fractions": [round(float(f), 3) for f in exit_frac],
          "ideal_speedup": ideal, "wall_speedup": wall,
          "efficiency_pct": 100 * wall / ideal,
          "time_model_speedup": time_ideal,
          "time_model_efficiency_pct": 100 * wall / time_ideal,
          "full_ms": 1e3 * common.median(t_full),
          "staged_ms": 1e3 * common.median(t_staged),
          "buckets": res.padded.tolist()}


def main(argv):
  del argv
  common.setup_from_flags()
  env = common.environment()
  rows, lat, costs = [], [], {}
  for name in FLAGS.models.split(","):
    r, l, c = bench_model(
        name, n=FLAGS.n, batch=FLAGS.batch, modes=FLAGS.modes.split(","),
        fractions=[float(f) for f in FLAGS.fractions.split(",")],
        reps=FLAGS.reps, latency_reps=FLAGS.latency_reps)
    rows += r
    lat += l
    costs[name] = c
  print(f"\nstaged vs one-pass (load {common.loadavg()})")
  print(common.format_table(rows, (
      "model", "mode", "batch", "p", "exit_fractions", "ideal_speedup",
      "wall_speedup",
      "efficiency_pct", "time_model_speedup", "time_model_efficiency_pct",
      "full_ms", "staged_ms"), {
          "ideal_speedup": ".2f", "wall_speedup": ".2f",
          "efficiency_pct": ".0f", "time_model_speedup": ".2f",
          "time_model_efficiency_pct": ".0f", "full_ms": ".1f",
          "staged_ms": ".1f"}))
  print("\nbatch-size-1 latency (predict_one) per exit")
  print(common.format_table(lat, ("model", "exit", "cost_frac", "latency_ms",
                                  "one_pass_ms"), {
      "cost_frac": ".2f", "latency_ms": ".2f", "one_pass_ms": ".2f"}))
  common.write_record("early_exit_speed", rows, env, cascade=costs,
                      latency=lat)


if __name__ == "__main__":
  app.run(main)
