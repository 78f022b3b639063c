"""Step-time overhead of each training method vs plain CE on the same network.

Every method runs the real `mexd.steps.make_train_step` (jitted, state
donated) on the same multi-exit ResNet-18 with BYOT heads (default: base
width 16, batch 64 on CPU; `--width 64 --batch 128` is the paper setting).
Teacher-student methods (erde, kd) also run a frozen teacher forward pass (a
copy of the same network in eval mode), so their overhead includes it.

Timing is round-robin: each repetition times `--steps` steps of every method
in turn; a method's overhead is the median over repetitions of
t(method) / t(ce) - 1 within the repetition (robust to slow drifts of the
machine load). XLA's flop count of each compiled step (`cost_analysis`) gives
a noise-free companion number.

Usage:
  python benchmarks/overhead.py
  python benchmarks/overhead.py --methods ce,pl,eed --width 64 --batch 128
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top

METHODS = ("ce", "sdn", "byot", "pl", "eed", "mate", "erde", "kd")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--width", type=int, default=16,
                 help="base width of the ResNet-18 (64 = the real one)")
  p.add_argument("--stages", default="2,2,2,2",
                 help="blocks per stage (1,1,1,1: a ResNet-10, for tests)")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--reps", type=int, default=7)
  p.add_argument("--warmup", type=int, default=2)
  common.add_common_flags(p, "overhead")
  return p.parse_args(argv)


def init_variables(model, seed=0):
  """Model variables, initialised once (jit) and shared by every method."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  v = jax.jit(lambda r: model.init({"params": r, "dropout": r}, jnp.zeros(
      (1, 32, 32, 3), jnp.float32)))(jax.random.PRNGKey(seed))
  return {"params": v["params"], "batch_stats": v["batch_stats"]}


def build_step(name, *, model, variables, batch, num_classes=100):
  """(compiled donated step, state, batch, XLA flops) for method `name`.

  The state is assembled from `variables` as `mexd.state.create` does (so the
  model's init is compiled once, not once per method).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mexd import losses, optim, state as state_lib, steps  # pylint: disable=g-import-not-at-top,g-multiple-import
  from mexd import xla_options  # pylint: disable=g-import-not-at-top
  method = losses.get_method(name)
  cfg = ml_collections.ConfigDict(dict(
      name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
      schedule="constant"))
  tx, _ = optim.make_optimizer(cfg, 390, 200)
  teacher_model = teacher = None
  if method.needs_teacher:  # a frozen copy of the same network
    teacher_model, teacher = model, variables
  step_fn = steps.make_train_step(
      model=model, method=method, tx=tx, mean=(0.5, 0.5, 0.5),
      std=(0.25, 0.25, 0.25), crop_pad=4, flip=True, steps_per_epoch=390,
      num_epochs=200, teacher_model=teacher_model)
  num_exits = model.apply(variables, method=lambda m: m.num_exits)
  params = {"model": variables["params"],
            "method": method.init_params(num_exits)}
  copy = lambda t: jax.tree.map(jnp.array, t)  # own buffers (donated)
  state = state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=copy(params),
      batch_stats=copy(variables["batch_stats"]),
      opt_state=jax.jit(tx.init)(params), method_state=method.init_state(),
      teacher=copy(teacher or {}), rng=jax.random.PRNGKey(1),
      skipped=jnp.zeros((), jnp.int32))
  rng = np.random.default_rng(0)
  data = {"image": jax.device_put(rng.integers(0, 256, (batch, 32, 32, 3),
                                               dtype=np.uint8)),
          "label": jax.device_put(rng.integers(0, num_classes, (batch,),
                                               dtype=np.int32))}
  # Call the compiled executable itself: compiles once (jit's own call
  # path would compile a second time).
  step = xla_options.jit(step_fn, donate_argnums=(0,)).lower(state, data).compile()
  ca = step.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  return step, state, data, float((ca or {}).get("flops", float("nan")))


def main(argv=None):
  args = parse_args(argv)
  common.setup_process(args)
  import jax  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from step_time import build_model  # pylint: disable=g-import-not-at-top
  env = common.environment()
  names = args.methods.split(",")
  if names[0] != "ce":
    names = ["ce"] + [n for n in names if n != "ce"]
  model = build_model(args.width, 100, "float32",
                      tuple(int(v) for v in args.stages.split(",")))
  variables = init_variables(model)
  runs = {}
  for name in names:
    step, state, data, flops = build_step(name, model=model,
                                          variables=variables,
                                          batch=args.batch)
    for _ in range(args.warmup):
      state, _ = step(state, data)
    jax.block_until_ready(state)
    runs[name] = {"step": step, "state": state, "data": data,
                  "flops": flops, "times": []}
    print(f"compiled {name}: {flops / 1e9:.2f} GFLOP/step", flush=True)

  def timed(r):
    def fn():
      s = r["state"]
      for _ in range(args.steps):
        s, _ = r["step"](s, r["data"])
      r["state"] = s
      return s
    return common.timeit(fn, jax.block_until_ready)

  ratios = {n: [] for n in names}
  for _ in range(args.reps):
    for name in names:
      runs[name]["times"].append(timed(runs[name]))
    for name in names:
      ratios[name].append(runs[name]["times"][-1] / runs["ce"]["times"][-1])
  rows = []
  for name in names:
    r = runs[name]
    t = common.median(r["times"]) / args.steps
    rows.append({
        "method": name, "teacher_forward": name in ("erde", "kd"),
        "ms_step": 1e3 * t, "img_s": args.batch / t,
        "overhead_pct": 100 * (common.median(ratios[name]) - 1),
        "overhead_min_max_pct": [100 * (min(ratios[name]) - 1),
                                 100 * (max(ratios[name]) - 1)],
        "gflop_step": r["flops"] / 1e9,
        "flop_overhead_pct": 100 * (r["flops"] / runs["ce"]["flops"] - 1),
        "times_s": r["times"]})
  cols = ("method", "teacher_forward", "ms_step", "overhead_pct",
          "flop_overhead_pct", "gflop_step")
  print(f"\nbatch {args.batch}, width {args.width}, {args.steps} steps x "
        f"{args.reps} reps; load {common.loadavg()}")
  print(common.format_table(rows, cols, {
      "ms_step": ".0f", "overhead_pct": "+.1f", "flop_overhead_pct": "+.2f",
      "gflop_step": ".2f"}))
  common.write_json(args.out, {
      "benchmark": "overhead", "environment": env,
      "settings": {k: v for k, v in vars(args).items() if k != "out"},
      "rows": rows})
  return rows


if __name__ == "__main__":
  main()
