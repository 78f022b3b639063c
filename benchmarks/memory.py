"""Peak memory of one train step for every registered model (compiled, not run).

For each model at its canonical input size (CIFAR nets 32 x 32 x 3 with 100
classes, ImageNet nets 224 x 224 x 3 with 1000, the small CNNs 1 channel with
10) the real train step (`mexd.steps.make_train_step`, method `--method`,
SGD + momentum) is lowered with abstract state and batch
(`jax.ShapeDtypeStruct`s: nothing is allocated or run), jitted with the state
donated, compiled for the default device, and its `memory_analysis()` read.

Rule: peak = temp + argument + output bytes (XLA's buffer assignment: live
temporaries at the high-water mark plus the step's inputs and outputs). With
the state donated XLA aliases the output state onto the input buffers; the
aliased bytes are reported and `peak_donated` = peak - alias is what a
donated step needs. The numbers are per device and depend on the backend
(CPU here unless a GPU is visible; XLA:GPU plans buffers differently).

Usage:
  python benchmarks/memory.py                        # every model, batch 128
  python benchmarks/memory.py --models resnet18,vgg16 --batch 64
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top

_SMALL = ("digits_cnn", "fashion_cnn", "small_cnn")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", default=None, help="comma list (default: all)")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--method", default="pl")
  p.add_argument("--dtype", default="float32")
  common.add_common_flags(p, "memory")
  return p.parse_args(argv)


def setting(name):
  """(num_classes, (H, W, C)) of a registered model."""
  from mexd import models  # pylint: disable=g-import-not-at-top
  hw = models.input_size(name)
  if name in _SMALL:
    return 10, (hw, hw, 1)
  return (1000 if hw == 224 else 100), (hw, hw, 3)


def measure(name, args):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from mexd import losses, models, optim, state as state_lib, steps  # pylint: disable=g-import-not-at-top,g-multiple-import
  from mexd import xla_options  # pylint: disable=g-import-not-at-top
  classes, shape = setting(name)
  model = models.get_model(name, num_classes=classes, dtype=args.dtype)
  method = losses.get_method(args.method)
  cfg = ml_collections.ConfigDict(dict(
      name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
      schedule="constant"))
  tx, _ = optim.make_optimizer(cfg, 390, 200)
  abstract = jax.eval_shape(lambda r: state_lib.create(
      r, model=model, method=method, tx=tx, image_shape=shape),
                            jax.random.PRNGKey(0))
  batch = {"image": jax.ShapeDtypeStruct((args.batch,) + shape, jnp.uint8),
           "label": jax.ShapeDtypeStruct((args.batch,), jnp.int32)}
  mean = (0.5,) * shape[-1]
  step_fn = steps.make_train_step(
      model=model, method=method, tx=tx, mean=mean, std=mean,
      crop_pad=4 if shape[0] == 32 else 0, flip=True, steps_per_epoch=390,
      num_epochs=200, dtype=jnp.dtype(args.dtype))
  t = common.timeit(lambda: None)
  compiled = [None]

  def compile_():
    compiled[0] = xla_options.jit(step_fn, donate_argnums=(0,)).lower(
        abstract, batch).compile()

  t = common.timeit(compile_)
  m = compiled[0].memory_analysis()
  state_bytes = sum(a.size * a.dtype.itemsize
                    for a in jax.tree.leaves(abstract))
  temp, arg, out = (m.temp_size_in_bytes, m.argument_size_in_bytes,
                    m.output_size_in_bytes)
  alias = getattr(m, "alias_size_in_bytes", 0)
  mib = 2.0 ** 20
  return {"model": name, "input": list(shape), "batch": args.batch,
          "state_mib": state_bytes / mib, "temp_mib": temp / mib,
          "argument_mib": arg / mib, "output_mib": out / mib,
          "alias_mib": alias / mib, "peak_mib": (temp + arg + out) / mib,
          "peak_donated_mib": (temp + arg + out - alias) / mib,
          "compile_s": t}


def main(argv=None):
  args = parse_args(argv)
  common.setup_process(args)
  from mexd import models  # pylint: disable=g-import-not-at-top
  env = common.environment()
  names = args.models.split(",") if args.models else models.model_names()
  rows = []
  cols = ("model", "input", "batch", "state_mib", "temp_mib", "argument_mib",
          "output_mib", "alias_mib", "peak_mib", "peak_donated_mib",
          "compile_s")
  fmt = {c: ".1f" for c in cols if c.endswith("mib") or c == "compile_s"}
  record = {
      "benchmark": "memory", "environment": env,
      "rule": "peak = temp + argument + output bytes of the compiled, donated "
              "train step (memory_analysis); peak_donated subtracts the "
              "aliased (donated) bytes",
      "settings": {k: v for k, v in vars(args).items() if k != "out"},
      "rows": rows}
  for name in names:
    rows.append(measure(name, args))
    print(common.format_table(rows[-1:], cols, fmt), flush=True)
    common.write_json(args.out, record)  # partial results survive a kill
  print(f"\npeak = temp + argument + output; peak_donated = peak - alias "
        f"(method {args.method}, {args.dtype}, "
        f"{env['device']['platform']})")
  print(common.format_table(rows, cols, fmt))
  return rows


if __name__ == "__main__":
  main()
