"""Peak memory of one train step for every registered model (compiled, not run).

For each model at its canonical input size (CIFAR nets 32 x 32 x 3 with 100
classes, ImageNet nets 224 x 224 x 3 with 1000, the small CNNs 1 channel with
10) the real train step (`mexd.steps.make_train_step`, method `--method`,
SGD + momentum; `benchmarks.fixtures`) is lowered with abstract state and batch
(`jax.ShapeDtypeStruct`s: nothing is allocated or run), jitted with the state
donated, compiled for the default device, and its `memory_analysis()` read.

Rule: peak = temp + argument + output bytes (XLA's buffer assignment: live
temporaries at the high-water mark plus the step's inputs and outputs). With
the state donated XLA aliases the output state onto the input buffers; the
aliased bytes are reported and `peak_donated` = peak - alias is what a
donated step needs. The numbers are per device and depend on the backend
(CPU here unless a GPU is visible; XLA:GPU plans buffers differently).

Usage:
  python -m benchmarks.memory                       # every model, batch 128
  python -m benchmarks.memory --models resnet18,vgg16 --batch 64
"""

from absl import app
from absl import flags
import jax

from benchmarks import common
from benchmarks import fixtures
from mexd import models

FLAGS = flags.FLAGS
flags.DEFINE_string("models", None, "Comma list (default: all).")
flags.DEFINE_integer("batch", 128, "Batch size.")
flags.DEFINE_string("method", "pl", "The training method.")
flags.DEFINE_string("dtype", "float32", "Compute dtype.")
common.define_flags("memory")
flags.adopt_module_key_flags(common)

_COLUMNS = ("model", "input", "batch", "state_mib", "temp_mib",
            "argument_mib", "output_mib", "alias_mib", "peak_mib",
            "peak_donated_mib", "compile_s")
_FMT = {c: ".1f" for c in _COLUMNS if c.endswith("mib") or c == "compile_s"}


def measure(name, *, batch, method, dtype):
  """One row: the compiled step's memory analysis in MiB."""
  classes, shape = fixtures.canonical_setting(name)
  model = models.get_model(name, num_classes=classes, dtype=dtype)
  setup = fixtures.make_step(model, method, batch=batch, image_shape=shape,
                             num_classes=classes, dtype=dtype,
                             crop_pad=4 if shape[0] == 32 else 0,
                             abstract=True)
  compiled = [None]

  def compile_():
    compiled[0] = setup.lower().compile()

  t = common.timeit(compile_)
  m = compiled[0].memory_analysis()
  state_bytes = sum(a.size * a.dtype.itemsize
                    for a in jax.tree.leaves(setup.state))
  temp, arg, out = (m.temp_size_in_bytes, m.argument_size_in_bytes,
                    m.output_size_in_bytes)
  alias = getattr(m, "alias_size_in_bytes", 0)
  mib = 2.0 ** 20
  return {"model": name, "input": list(shape), "batch": batch,
          "state_mib": state_bytes / mib, "temp_mib": temp / mib,
          "argument_mib": arg / mib, "output_mib": out / mib,
          "alias_mib": alias / mib, "peak_mib": (temp + arg + out) / mib,
          "peak_donated_mib": (temp + arg + out - alias) / mib,
          "compile_s": t}


def main(argv):
  del argv
  common.setup_from_flags()
  env = common.environment()
  names = FLAGS.models.split(",") if FLAGS.models else models.model_names()
  rule = ("peak = temp + argument + output bytes of the compiled, donated "
          "train step (memory_analysis); peak_donated subtracts the aliased "
          "(donated) bytes")
  rows = []
  for name in names:
    rows.append(measure(name, batch=FLAGS.batch, method=FLAGS.method,
                        dtype=FLAGS.dtype))
    print(common.format_table(rows[-1:], _COLUMNS, _FMT), flush=True)
    # Partial results survive a kill.
    common.write_record("memory", rows, env, rule=rule)
  print(f"\npeak = temp + argument + output; peak_donated = peak - alias "
        f"(method {FLAGS.method}, {FLAGS.dtype}, "
        f"{env['device']['platform']})")
  print(common.format_table(rows, _COLUMNS, _FMT))


if __name__ == "__main__":
  app.run(main)
