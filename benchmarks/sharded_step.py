"""Images/s of the real sharded train step on 1 vs N (fake) devices.

  python benchmarks/sharded_step.py                      # resnet18, EED
  python benchmarks/sharded_step.py --model=digits_cnn --image=8,8,1 --classes=10

On a CPU the N devices are fake (`--xla_force_host_platform_device_count`),
so they share the same cores: this measures the overhead of the sharded
program (collectives, partitioning), not a speed-up. On a GPU/TPU host the
same script uses the real devices (the first N of them).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="resnet18")
  p.add_argument("--method", default="eed")
  p.add_argument("--classes", type=int, default=100)
  p.add_argument("--image", default="32,32,3")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--devices", default="1,8")
  p.add_argument("--steps", type=int, default=3)
  common.add_common_flags(p, "sharded_step")
  a = p.parse_args()
  counts = [int(d) for d in a.devices.split(",")]
  if "--xla_force_host_platform_device_count" not in os.environ.get(
      "XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count="
                               f"{max(counts)}").strip()
  common.setup_process(a)
  import functools  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mexd import config_lib, losses, models, optim, sharding  # pylint: disable=g-import-not-at-top
  from mexd import state as state_lib, steps, xla_options  # pylint: disable=g-import-not-at-top,g-multiple-import

  shape = tuple(int(s) for s in a.image.split(","))
  model = models.get_model(a.model, num_classes=a.classes)
  method = losses.get_method(a.method)
  cfg = config_lib.base_config().optimizer
  tx, _ = optim.make_optimizer(cfg, 100, 1)
  rng = np.random.default_rng(0)
  host = {"image": rng.integers(0, 256, (a.batch,) + shape, np.uint8),
          "label": rng.integers(0, a.classes, (a.batch,), np.int32)}
  rows = []
  for n in counts:
    mesh = sharding.make_mesh(n)
    sharding.check_batch_size(a.batch, mesh)
    repl, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    init = functools.partial(state_lib.create, model=model, method=method,
                             tx=tx, image_shape=shape)
    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
    ssh = jax.tree.map(lambda _: repl, abstract)
    t0 = time.perf_counter()
    state = jax.jit(init, out_shardings=ssh)(jax.random.PRNGKey(0))
    fn = steps.make_train_step(
        model=model, method=method, tx=tx, mean=(0.5,) * shape[-1],
        std=(0.25,) * shape[-1], crop_pad=4, flip=True, steps_per_epoch=100,
        num_epochs=1)
    step = xla_options.jit(fn, in_shardings=(ssh, bsh), out_shardings=(ssh, repl),
                   donate_argnums=(0,))
    batch = {k: jax.device_put(v, bsh) for k, v in host.items()}
    state, m = step(state, batch)
    jax.block_until_ready(m["loss"])
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(a.steps):
      t = time.perf_counter()
      state, m = step(state, batch)
      jax.block_until_ready(m["loss"])
      times.append(time.perf_counter() - t)
    med = common.median(times)
    rows.append({"devices": n, "batch": a.batch, "step_s": med,
                 "images_per_s": a.batch / med, "compile_s": compile_s,
                 "loss": float(m["loss"])})
    print(common.format_table(rows[-1:], list(rows[-1])), flush=True)
  print(common.format_table(rows, list(rows[0])))
  common.write_json(a.out, {"model": a.model, "method": a.method,
                            "rows": rows, "environment": common.environment()})


if __name__ == "__main__":
  main()
