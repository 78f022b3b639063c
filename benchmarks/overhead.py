"""Step-time overhead of each training method vs plain CE on the same network.

Every method runs the real `mexd.steps.make_train_step` (jitted, state
donated) on the same multi-exit ResNet-18 with BYOT heads (default: base
width 16, batch 64 on CPU; `--width 64 --batch 128` is the paper setting).
Teacher-student methods (erde, kd) also run a frozen teacher forward pass (a
copy of the same network in eval mode, `benchmarks.fixtures`), so their
overhead includes it.

Timing is round-robin: each repetition times `--steps` steps of every method
in turn; a method's overhead is the median over repetitions of
t(method) / t(ce) - 1 within the repetition (robust to slow drifts of the
machine load). XLA's flop count of each compiled step (`cost_analysis`) gives
a noise-free companion number.

Usage:
  python -m benchmarks.overhead
  python -m benchmarks.overhead --methods ce,pl,eed --width 64 --batch 128
"""

from absl import app
from absl import flags
import jax

from benchmarks import common
from benchmarks import fixtures

METHODS = ("ce", "sdn", "byot", "pl", "eed", "mate", "erde", "kd")

FLAGS = flags.FLAGS
flags.DEFINE_string("methods", ",".join(METHODS), "Comma list of methods "
                    "(ce, the reference, is always timed).")
flags.DEFINE_integer("batch", 64, "Batch size.")
flags.DEFINE_integer("width", 16,
                     "Base width of the ResNet-18 (64 = the real one).")
flags.DEFINE_string("stages", "2,2,2,2",
                    "Blocks per stage (1,1,1,1: a ResNet-10, for tests).")
flags.DEFINE_integer("steps", 3, "Steps per repetition.")
flags.DEFINE_integer("reps", 7, "Round-robin repetitions.")
flags.DEFINE_integer("warmup", 2, "Untimed steps per method.")
common.define_flags("overhead")
flags.adopt_module_key_flags(common)


def build_step(name, *, model, batch):
  """(compiled donated step, state, batch, XLA flops) for method `name`."""
  setup = fixtures.make_step(model, name, batch=batch)
  run, compiled = setup.compile()
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  flops = float((ca or {}).get("flops", float("nan")))
  return run, setup.state, setup.batch, flops


def main(argv):
  del argv
  common.setup_from_flags()
  env = common.environment()
  names = FLAGS.methods.split(",")
  if names[0] != "ce":
    names = ["ce"] + [n for n in names if n != "ce"]
  model = fixtures.resnet18(FLAGS.width, 100, "float32",
                            tuple(int(v) for v in FLAGS.stages.split(",")))
  runs = {}
  for name in names:
    step, state, data, flops = build_step(name, model=model,
                                          batch=FLAGS.batch)
    for _ in range(FLAGS.warmup):
      state, _ = step(state, data)
    jax.block_until_ready(state)
    runs[name] = {"step": step, "state": state, "data": data,
                  "flops": flops, "times": []}
    print(f"compiled {name}: {flops / 1e9:.2f} GFLOP/step", flush=True)

  def timed(r):
    def fn():
      s = r["state"]
      for _ in range(FLAGS.steps):
        s, _ = r["step"](s, r["data"])
      r["state"] = s
      return s
    return common.timeit(fn, jax.block_until_ready)

  ratios = {n: [] for n in names}
  for _ in range(FLAGS.reps):
    for name in names:
      runs[name]["times"].append(timed(runs[name]))
    for name in names:
      ratios[name].append(runs[name]["times"][-1] / runs["ce"]["times"][-1])
  rows = []
  for name in names:
    r = runs[name]
    t = common.median(r["times"]) / FLAGS.steps
    rows.append({
        "method": name, "teacher_forward": name in ("erde", "kd"),
        "ms_step": 1e3 * t, "img_s": FLAGS.batch / t,
        "overhead_pct": 100 * (common.median(ratios[name]) - 1),
        "overhead_min_max_pct": [100 * (min(ratios[name]) - 1),
                                 100 * (max(ratios[name]) - 1)],
        "gflop_step": r["flops"] / 1e9,
        "flop_overhead_pct": 100 * (r["flops"] / runs["ce"]["flops"] - 1),
        "times_s": r["times"]})
  cols = ("method", "teacher_forward", "ms_step", "overhead_pct",
          "flop_overhead_pct", "gflop_step")
  print(f"\nbatch {FLAGS.batch}, width {FLAGS.width}, {FLAGS.steps} steps x "
        f"{FLAGS.reps} reps; load {common.loadavg()}")
  print(common.format_table(rows, cols, {
      "ms_step": ".0f", "overhead_pct": "+.1f", "flop_overhead_pct": "+.2f",
      "gflop_step": ".2f"}))
  common.write_record("overhead", rows, env)


if __name__ == "__main__":
  app.run(main)
