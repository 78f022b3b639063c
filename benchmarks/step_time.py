"""Train-step throughput: mexd's jitted step vs the same step in PyTorch.

The network is the CIFAR multi-exit ResNet-18 with BYOT/EED exit heads
(`get_model("resnet18", head="byot")`); `--width w` scales it to stage widths
(w, 2w, 4w, 8w) with stem w (the registry has no width option: w=64 is
"resnet18", w=32 is "resnet18_half"; other w build `resnet.ResNet` with those
widths). The loss is P&L distillation ("pl", adaptive T, stop-gradient
teacher, T^2 scaling) and optionally EED; the optimizer SGD 0.1 + Nesterov
0.9, weight decay 5e-4 on kernels. mexd runs the real
`mexd.steps.make_train_step` under `jax.jit(donate_argnums=0)`, on a batch
already on the device; PyTorch runs `torch_reference.TrainStep` eagerly.

`--xla_options mexd,none` times the step compiled with mexd's XLA:CPU options
(`mexd.cpu.xla_options`: convolutions on XLA's own emitter, not YNNPACK; the
default, as in `mexd.train`) and with XLA's defaults. `--layers cpu,flax`
times the network built with mexd's CPU layers (`mexd.cpu.conv.Conv`,
`mexd.cpu.norm.BatchNorm`) and with stock flax layers
(`mexd.models.layers`); the default, "backend", takes the backend's choice
(`layers.for_backend()`: cpu on CPU, flax elsewhere).

Both are timed in the same process, interleaved: each repetition runs
`--steps` steps of JAX then `--steps` steps of PyTorch; the tables give the
median images/s over repetitions and the median of the per-repetition ratio
JAX / PyTorch (robust to other jobs on the machine). The defaults (one step
of each per repetition, 15 repetitions) pair neighbouring steps, which is
what the quoted CPU ratio uses: the 2-core VM's speed drifts within minutes
(docs/benchmarks.md, section 1).

`--nets fashion_cnn,fashion_student` times the Fashion-MNIST recipe's CNN
and its student (28 x 28 x 1, 10 classes, crop pad 2) against their twin
`torch_reference.MultiExitSmallCNN`; `--torch_modes eager,compile` adds
rows against `torch.compile` (inductor; compiled in the warm-up step).

Usage (one command, CPU or GPU; torch optional):
  python -m benchmarks.step_time         # batch 128 width 16; batch 64 width 64
  python -m benchmarks.step_time --nets fashion_cnn,fashion_student \\
      --batch 128 --torch_modes eager,compile
  python -m benchmarks.step_time --batch 64 --width 64 --methods pl,eed
  python -m benchmarks.step_time --no_torch            # JAX only
  python -m benchmarks.step_time --layers flax,cpu --xla_options none,mexd
  python -m benchmarks.step_time --xla_flags="--xla_cpu_use_thunk_runtime=false"
"""

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import common
from benchmarks import fixtures
from mexd.models import layers as layers_lib

try:  # PyTorch is the optional `bench` extra.
  import torch
  from benchmarks import torch_reference
except ImportError:
  torch = torch_reference = None

FLAGS = flags.FLAGS
flags.DEFINE_string("nets", "resnet18", "Comma list of networks "
                    "(fixtures.NETS): resnet18 (at the --configs widths), "
                    "fashion_cnn and fashion_student (the Fashion-MNIST "
                    "recipe's CNN and student; width ignored).")
flags.DEFINE_string("torch_modes", "eager", "Comma list: eager, compile "
                    "(torch.compile of the network, inductor).")
flags.DEFINE_string("configs", "128:16,64:64",
                    "Comma list of batch:width pairs (width 64 = ResNet-18).")
flags.DEFINE_string("batch", None, "Comma list of batch sizes (with --width: "
                    "the cross product replaces --configs).")
flags.DEFINE_string("width", None, "Comma list of base widths.")
flags.DEFINE_string("methods", "pl", "Comma list: pl, eed.")
flags.DEFINE_integer("steps", 1, "Steps per repetition.")
flags.DEFINE_integer("reps", 15, "Interleaved repetitions.")
flags.DEFINE_integer("warmup", 1, "Untimed steps.")
flags.DEFINE_string("dtype", "float32", "mexd compute dtype.")
flags.DEFINE_string("layers", "backend", "Comma list of the network's "
                    "layers (mexd.models.layers): backend (the backend's "
                    "choice), cpu (mexd.cpu's conv and batch norm), flax.")
flags.DEFINE_string("xla_options", "mexd", "Comma list: mexd "
                    "(mexd.cpu.xla_options, the default: XLA:CPU "
                    "convolutions without YNNPACK), none (XLA defaults).")
flags.DEFINE_string("matmul_precision", None, "jax_default_matmul_precision "
                    "(e.g. bfloat16, float32).")
flags.DEFINE_string("xla_flags", "", "Appended to XLA_FLAGS.")
flags.DEFINE_bool("no_torch", False, "JAX only.")
flags.DEFINE_bool("torch_channels_last", False,
                  "PyTorch in channels_last memory format.")
flags.DEFINE_string("torch_device", "auto", "auto (cuda when JAX runs on a "
                    "GPU and torch sees one, else cpu), cpu or cuda.")
flags.DEFINE_integer("num_classes", 100, "Classes of the exits.")
flags.DEFINE_string("stages", "2,2,2,2",
                    "Blocks per stage (1,1,1,1: a ResNet-10, for tests).")
common.define_flags("step_time")
flags.adopt_module_key_flags(common)

_COLUMNS = ("net", "method", "batch", "width", "xla_options", "layers",
            "torch_mode", "jax_img_s", "torch_img_s",
            "ratio_jax_over_torch", "jax_ms_step", "torch_ms_step", "loadavg")
_FMT = {"jax_img_s": ".1f", "torch_img_s": ".1f", "ratio_jax_over_torch":
        ".3f", "jax_ms_step": ".0f", "torch_ms_step": ".0f"}


def torch_device(name: str) -> str:
  """"auto" -> "cuda" when JAX runs on a GPU and torch sees one, else "cpu"."""
  if name != "auto":
    return name
  on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
  return "cuda" if on_gpu else "cpu"


def make_torch_step(*, model, net="resnet18", width, batch, method_name,
                    num_classes, channels_last, stages=(2, 2, 2, 2),
                    device="cpu", mode="eager"):
  """(PyTorch step, images, labels), the batch of the JAX step on `device`.

  `model` is the mexd network the step twins; `mode` "eager" or "compile".
  """
  if device == "cuda":  # What the research code does: cuDNN autotuning.
    torch.backends.cudnn.benchmark = True
  shape, _, pad = fixtures.NETS[net]
  c = shape[-1]
  step = torch_reference.TrainStep(
      model=torch_reference.twin(model, net, num_classes, width, stages,
                                 in_channels=c),
      method=method_name, mean=(0.5,) * c, std=(0.25,) * c, pad=pad,
      channels_last=channels_last, device=device, compile=mode == "compile")
  host = fixtures.random_batch(batch, shape, num_classes)
  images = torch.from_numpy(host["image"]).to(device)
  labels = torch.from_numpy(host["label"].astype(np.int64)).to(device)
  return step, images, labels


def _layers(name: str) -> str:
  """A --layers entry as "cpu" or "flax" ("backend": the backend's choice)."""
  if name == "backend":
    return "cpu" if layers_lib.for_backend() == layers_lib.CPU else "flax"
  layers_lib.by_name(name)  # Raises for an unknown name.
  return name


def run_config(*, width, batch, method_name, net="resnet18", layers="backend",
               xla_options=True, steps=1, reps=15, warmup=1,
               num_classes=100, dtype="float32", stages=(2, 2, 2, 2),
               torch_opts=None):
  """Times one (width, batch, method, layers, XLA options) setting; a row.

  `net` is a `fixtures.NETS` name (resnet18 at base `width`; the
  Fashion-MNIST nets have their recipe's classes, input and crop pad).
  `layers` is a --layers entry (the row names the choice it resolves to,
  "cpu" or "flax"); `xla_options` False compiles with plain
  `jax.jit`. `torch_opts` ({"channels_last", "device", "mode"}) adds the
  interleaved PyTorch step; None times JAX alone.
  """
  layers = _layers(layers)
  shape, classes, pad = fixtures.NETS[net]
  if net != "resnet18":
    num_classes, width = classes, None
  model = fixtures.net(net, width=width, num_classes=num_classes, dtype=dtype,
                       stages=stages, layers=layers_lib.by_name(layers))
  setup = fixtures.make_step(
      model, method_name, batch=batch, image_shape=shape,
      num_classes=num_classes, dtype=dtype, crop_pad=pad,
      xla_cpu_options=None if xla_options else False)
  data = setup.batch
  compiled = [None]

  def compile_():
    compiled[0] = setup.compile()[0]

  t_compile = common.timeit(compile_)
  step = compiled[0]
  holder = {"state": setup.state}

  def jax_steps():
    s = holder["state"]
    for _ in range(steps):
      s, metrics = step(s, data)
    holder["state"] = s
    return s.step, metrics["loss"]

  sync = jax.block_until_ready
  for _ in range(warmup):
    holder["state"], _ = step(holder["state"], data)
  sync(holder["state"])

  torch_fn = None
  n_params_torch = None
  if torch_opts is not None:
    tstep, timages, tlabels = make_torch_step(
        model=model, net=net, width=width, batch=batch,
        method_name=method_name,
        num_classes=num_classes, stages=stages, **torch_opts)
    n_params_torch = sum(p.numel() for p in tstep.model.parameters())

    def torch_fn():
      for _ in range(steps):
        loss = tstep(timages, tlabels)
      return float(loss)

    for i in range(warmup):
      loss = tstep(timages, tlabels)
      if i == warmup - 1:
        float(loss)  # Waits for the queued warm-up work (CUDA).

  t_jax, t_torch, ratios = [], [], []
  for _ in range(reps):
    tj = common.timeit(jax_steps, sync)
    t_jax.append(tj)
    if torch_fn is not None:
      tt = common.timeit(torch_fn)
      t_torch.append(tt)
      ratios.append(tt / tj)  # = (img/s JAX) / (img/s torch)
  n = steps * batch
  row = {"net": net, "method": method_name, "batch": batch, "width": width,
         "torch_mode": torch_opts and torch_opts.get("mode", "eager"),
         "layers": layers, "xla_options": "mexd" if xla_options else "none",
         "params_jax": fixtures.param_count(setup),
         "params_torch": n_params_torch,
         "jax_img_s": n / common.median(t_jax),
         "jax_ms_step": 1e3 * common.median(t_jax) / steps,
         "jax_compile_s": t_compile,
         "jax_times_s": t_jax, "loadavg": common.loadavg()}
  if t_torch:
    row.update({"torch_img_s": n / common.median(t_torch),
                "torch_ms_step": 1e3 * common.median(t_torch) / steps,
                "ratio_jax_over_torch": common.median(ratios),
                "torch_times_s": t_torch})
  return row


def _configs():
  """[(batch, width)] from --batch/--width, else --configs."""
  if FLAGS.batch or FLAGS.width:
    return [(int(b), int(w))
            for w in (FLAGS.width or "64").split(",")
            for b in (FLAGS.batch or "128").split(",")]
  return [tuple(int(v) for v in c.split(":"))
          for c in FLAGS.configs.split(",")]


def main(argv):
  del argv
  common.setup_from_flags(xla_flags=FLAGS.xla_flags)
  if FLAGS.matmul_precision:
    jax.config.update("jax_default_matmul_precision", FLAGS.matmul_precision)
  use_torch, env = common.torch_environment(torch, not FLAGS.no_torch)
  FLAGS.no_torch = not use_torch
  torch_opts = None
  if use_torch:
    FLAGS.torch_device = torch_device(FLAGS.torch_device)
    env["torch_device"] = FLAGS.torch_device
    torch_opts = {"channels_last": FLAGS.torch_channels_last,
                  "device": FLAGS.torch_device}
  common.print_device(env)
  stages = tuple(int(v) for v in FLAGS.stages.split(","))
  rows = []
  modes = FLAGS.torch_modes.split(",") if torch_opts else [None]
  for net in FLAGS.nets.split(","):
    configs = _configs()
    if net != "resnet18":  # No width option: one row per batch size.
      configs = [(b, None) for b in dict.fromkeys(b for b, _ in configs)]
    for method_name in FLAGS.methods.split(","):
      for batch, width in configs:
        for opts in FLAGS.xla_options.split(","):
          for name in FLAGS.layers.split(","):
            for mode in modes:
              row = run_config(
                  width=width, batch=batch, method_name=method_name,
                  net=net, layers=name, xla_options=opts != "none",
                  steps=FLAGS.steps, reps=FLAGS.reps, warmup=FLAGS.warmup,
                  num_classes=FLAGS.num_classes, dtype=FLAGS.dtype,
                  stages=stages,
                  torch_opts=mode and dict(torch_opts, mode=mode))
              rows.append(row)
              print(common.format_table([row], _COLUMNS, _FMT), flush=True)
  print()
  print(common.format_table(rows, _COLUMNS, _FMT))
  common.write_record("step_time", rows, env)


if __name__ == "__main__":
  app.run(main)
