r"""Images/s of the real sharded train step on 1 vs N (fake) devices.

  python -m benchmarks.sharded_step                    # resnet18, EED
  python -m benchmarks.sharded_step --model=digits_cnn --image=8,8,1 \
      --classes=10

The step is `mexd.train`'s (`benchmarks.fixtures` with a mesh: state
replicated, batch sharded along the data axis, state donated, cosine SGD).
On a CPU the N devices are fake (`--xla_force_host_platform_device_count`),
so they share the same cores: this measures the overhead of the sharded
program (collectives, partitioning), not a speed-up. On a GPU/TPU host the
same script uses the real devices (the first N of them).
"""

import time

from absl import app
from absl import flags
import jax

from benchmarks import common
from benchmarks import fixtures
from mexd import models
from mexd import sharding

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "resnet18", "A registered model.")
flags.DEFINE_string("method", "eed", "The training method.")
flags.DEFINE_integer("classes", 100, "Number of classes.")
flags.DEFINE_string("image", "32,32,3", "H,W,C of one image.")
flags.DEFINE_integer("batch", 64, "Global batch size.")
flags.DEFINE_string("devices", "1,8", "Comma list of device counts.")
flags.DEFINE_integer("steps", 3, "Timed steps after the compiling one.")
common.define_flags("sharded_step")
flags.adopt_module_key_flags(common)


def measure(model, n, shape):
  """One row: the step on the first n devices."""
  mesh = sharding.make_mesh(n)
  sharding.check_batch_size(FLAGS.batch, mesh)
  t0 = time.perf_counter()
  setup = fixtures.make_step(model, FLAGS.method, batch=FLAGS.batch,
                             image_shape=shape, num_classes=FLAGS.classes,
                             schedule="cosine", steps_per_epoch=100,
                             num_epochs=1, mesh=mesh)
  state, m = setup.step(setup.state, setup.batch)
  jax.block_until_ready(m["loss"])
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(FLAGS.steps):
    t = time.perf_counter()
    state, m = setup.step(state, setup.batch)
    jax.block_until_ready(m["loss"])
    times.append(time.perf_counter() - t)
  med = common.median(times)
  return {"devices": n, "batch": FLAGS.batch, "step_s": med,
          "images_per_s": FLAGS.batch / med, "compile_s": compile_s,
          "loss": float(m["loss"])}


def main(argv):
  del argv
  counts = [int(d) for d in FLAGS.devices.split(",")]
  common.setup_from_flags(host_devices=max(counts))
  env = common.environment()
  shape = tuple(int(s) for s in FLAGS.image.split(","))
  model = models.get_model(FLAGS.model, num_classes=FLAGS.classes)
  rows = []
  for n in counts:
    rows.append(measure(model, n, shape))
    print(common.format_table(rows[-1:], list(rows[-1])), flush=True)
  print(common.format_table(rows, list(rows[0])))
  common.write_record("sharded_step", rows, env, model=FLAGS.model,
                      method=FLAGS.method)


if __name__ == "__main__":
  app.run(main)
