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
(`mexd.xla_options`: convolutions on XLA's own emitter, not YNNPACK; the
default, as in `mexd.train`) and with XLA's defaults.

Both are timed in the same process, interleaved: each repetition runs
`--steps` steps of JAX then `--steps` steps of PyTorch; the tables give the
median images/s over repetitions and the median of the per-repetition ratio
JAX / PyTorch (robust to other jobs on the machine). The defaults (one step
of each per repetition, 15 repetitions) pair neighbouring steps, which is
what the quoted CPU ratio uses: the 2-core VM's speed drifts within minutes
(docs/benchmarks.md, section 1).

Usage (one command, CPU or GPU; torch optional):
  python benchmarks/step_time.py          # batch 128 width 16; batch 64 width 64
  python benchmarks/step_time.py --batch 64 --width 64 --methods pl,eed
  python benchmarks/step_time.py --no_torch            # JAX only
  python benchmarks/step_time.py --xla_flags="--xla_cpu_use_thunk_runtime=false"
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmarks import common  # pylint: disable=g-import-not-at-top


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--configs", default="128:16,64:64",
                 help="comma list of batch:width pairs (width 64 = ResNet-18)")
  p.add_argument("--batch", default=None,
                 help="comma list of batch sizes (with --width: the cross "
                 "product replaces --configs)")
  p.add_argument("--width", default=None, help="comma list of base widths")
  p.add_argument("--methods", default="pl", help="comma list: pl, eed")
  p.add_argument("--steps", type=int, default=1, help="steps per repetition")
  p.add_argument("--reps", type=int, default=15,
                 help="interleaved repetitions")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps")
  p.add_argument("--dtype", default="float32", help="mexd compute dtype")
  p.add_argument("--conv_impl", default="auto",
                 help="comma list of mexd.models.conv impls to time: auto "
                 "(Winograd 3x3 on CPU), xla, winograd")
  p.add_argument("--xla_options", default="mexd",
                 help="comma list: mexd (mexd.xla_options, the default: "
                 "XLA:CPU convolutions without YNNPACK), none (XLA defaults)")
  p.add_argument("--matmul_precision", default=None,
                 help="jax_default_matmul_precision (e.g. bfloat16, float32)")
  p.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS")
  p.add_argument("--no_torch", action="store_true", help="JAX only")
  p.add_argument("--torch_channels_last", action="store_true",
                 help="PyTorch in channels_last memory format")
  p.add_argument("--torch_device", default="auto",
                 help="auto (cuda when JAX runs on a GPU and torch sees one, "
                 "else cpu), cpu or cuda")
  p.add_argument("--num_classes", type=int, default=100)
  p.add_argument("--stages", default="2,2,2,2",
                 help="blocks per stage (1,1,1,1: a ResNet-10, for tests)")
  common.add_common_flags(p, "step_time")
  return p.parse_args(argv)


def build_model(width: int, num_classes: int, dtype: str,
                stages=(2, 2, 2, 2)):
  """The multi-exit ResNet-18 at base width `width` (BYOT heads)."""
  from mexd import models  # pylint: disable=g-import-not-at-top
  from mexd.models import resnet  # pylint: disable=g-import-not-at-top
  if width == 64 and tuple(stages) == (2, 2, 2, 2):
    return models.get_model("resnet18", num_classes=num_classes, head="byot",
                            dtype=dtype)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  widths = tuple(width * m for m in (1, 2, 4, 8))
  return resnet.ResNet(stage_sizes=tuple(stages), widths=widths,
                       stem_width=width, num_classes=num_classes,
                       head="byot", dtype=jnp.dtype(dtype))


def make_jax_step(*, width, batch, method_name, num_classes, dtype,
                  stages=(2, 2, 2, 2)):
  """(jitted donated step, state, device batch) for the mexd step."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mexd import losses, optim, state as state_lib, steps  # pylint: disable=g-import-not-at-top,g-multiple-import
  from mexd import xla_options  # pylint: disable=g-import-not-at-top
  model = build_model(width, num_classes, dtype, stages)
  method = losses.get_method(method_name)
  cfg = ml_collections.ConfigDict(dict(
      name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
      schedule="constant"))
  tx, _ = optim.make_optimizer(cfg, 390, 200)
  step_fn = steps.make_train_step(
      model=model, method=method, tx=tx, mean=(0.5, 0.5, 0.5),
      std=(0.25, 0.25, 0.25), crop_pad=4, flip=True, steps_per_epoch=390,
      num_epochs=200, dtype=jnp.dtype(dtype))
  state = jax.jit(lambda r: state_lib.create(
      r, model=model, method=method, tx=tx, image_shape=(32, 32, 3)))(
          jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  data = {"image": jax.device_put(rng.integers(0, 256, (batch, 32, 32, 3),
                                               dtype=np.uint8)),
          "label": jax.device_put(rng.integers(0, num_classes, (batch,),
                                               dtype=np.int32))}
  step = xla_options.jit(step_fn, donate_argnums=(0,))
  return step, state, data, model


def torch_device(name: str) -> str:
  """"auto" -> "cuda" when JAX runs on a GPU and torch sees one, else "cpu"."""
  if name != "auto":
    return name
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
  return "cuda" if on_gpu else "cpu"


def make_torch_step(*, width, batch, method_name, num_classes, channels_last,
                    stages=(2, 2, 2, 2), device="cpu"):
  """(PyTorch step, images, labels), the batch already on `device`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch_reference  # pylint: disable=g-import-not-at-top
  if device == "cuda":  # What the research code does: cuDNN autotuning.
    torch.backends.cudnn.benchmark = True
  step = torch_reference.TrainStep(num_classes=num_classes, width=width,
                                   method=method_name,
                                   channels_last=channels_last,
                                   stage_sizes=stages, device=device)
  rng = np.random.default_rng(0)
  images = torch.from_numpy(rng.integers(0, 256, (batch, 32, 32, 3),
                                         dtype=np.uint8)).to(device)
  labels = torch.from_numpy(rng.integers(0, num_classes, (batch,))).to(device)
  return step, images, labels


def _stages(args):
  return tuple(int(v) for v in args.stages.split(","))


def param_count_torch(step) -> int:
  return sum(p.numel() for p in step.model.parameters())


def run_config(args, width, batch, method_name, conv_impl="auto"):
  """Times one (width, batch, method, conv impl) configuration; a row."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mexd.models import conv  # pylint: disable=g-import-not-at-top
  step, state, data, _ = make_jax_step(
      width=width, batch=batch, method_name=method_name,
      num_classes=args.num_classes, dtype=args.dtype, stages=_stages(args))
  n_params_jax = int(sum(np.prod(a.shape) for a in
                         jax.tree.leaves(state.params["model"])))
  compiled = [None]

  def compile_():
    with conv.use_impl(conv_impl):  # Chosen while the step is traced.
      lowered = step.lower(state, data)
    compiled[0] = lowered.compile()

  t_compile = common.timeit(compile_)
  step = compiled[0]  # the executable itself: no second compile on call
  holder = {"state": state}

  def jax_steps():
    s = holder["state"]
    for _ in range(args.steps):
      s, metrics = step(s, data)
    holder["state"] = s
    return s.step, metrics["loss"]

  sync = jax.block_until_ready
  for _ in range(args.warmup):
    s, metrics = step(holder["state"], data)
    holder["state"] = s
  sync(holder["state"])

  torch_fn = None
  n_params_torch = None
  if not args.no_torch:
    tstep, timages, tlabels = make_torch_step(
        width=width, batch=batch, method_name=method_name,
        num_classes=args.num_classes, channels_last=args.torch_channels_last,
        stages=_stages(args), device=args.torch_device)
    n_params_torch = param_count_torch(tstep)

    def torch_fn():
      for _ in range(args.steps):
        loss = tstep(timages, tlabels)
      return float(loss)

    for i in range(args.warmup):
      loss = tstep(timages, tlabels)
      if i == args.warmup - 1:
        float(loss)  # Waits for the queued warm-up work (CUDA).

  t_jax, t_torch, ratios = [], [], []
  for _ in range(args.reps):
    tj = common.timeit(jax_steps, sync)
    t_jax.append(tj)
    if torch_fn is not None:
      tt = common.timeit(torch_fn)
      t_torch.append(tt)
      ratios.append(tt / tj)  # = (img/s JAX) / (img/s torch)
  n = args.steps * batch
  row = {"method": method_name, "batch": batch, "width": width,
         "conv_impl": conv_impl,
         "params_jax": n_params_jax, "params_torch": n_params_torch,
         "jax_img_s": n / common.median(t_jax),
         "jax_ms_step": 1e3 * common.median(t_jax) / args.steps,
         "jax_compile_s": t_compile,
         "jax_times_s": t_jax, "loadavg": common.loadavg()}
  if t_torch:
    row.update({"torch_img_s": n / common.median(t_torch),
                "torch_ms_step": 1e3 * common.median(t_torch) / args.steps,
                "ratio_jax_over_torch": common.median(ratios),
                "torch_times_s": t_torch})
  return row


def main(argv=None):
  args = parse_args(argv)
  common.setup_process(args)
  if args.xla_flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " +
                               args.xla_flags).strip()
  import jax  # pylint: disable=g-import-not-at-top
  if args.matmul_precision:
    jax.config.update("jax_default_matmul_precision", args.matmul_precision)
  if not args.no_torch:
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      print("torch is not installed (pip install -e .[bench]); JAX only")
      args.no_torch = True
    else:
      if args.threads:
        torch.set_num_threads(args.threads)
  env = common.environment()
  env["torch_threads"] = None
  if not args.no_torch:
    import torch  # pylint: disable=g-import-not-at-top
    env["torch_threads"] = torch.get_num_threads()
    args.torch_device = torch_device(args.torch_device)
    env["torch_device"] = args.torch_device
  print(f"device: {env['device']['platform']} {env['device']['device_kind']}"
        f" x{env['device']['device_count']} ({env['device']['cpu']}, "
        f"{env['device']['cpu_count']} cpus); load {common.loadavg()}",
        flush=True)
  if args.batch or args.width:
    configs = [(int(b), int(w))
               for w in (args.width or "64").split(",")
               for b in (args.batch or "128").split(",")]
  else:
    configs = [tuple(int(v) for v in c.split(":"))
               for c in args.configs.split(",")]
  rows = []
  for method_name in args.methods.split(","):
    for batch, width in configs:
      for opts in args.xla_options.split(","):
        # Read by mexd.xla_options when the step is jitted.
        os.environ["MEXD_XLA_OPTIONS"] = "0" if opts == "none" else "1"
        for impl in args.conv_impl.split(","):
          row = run_config(args, width, batch, method_name, impl)
          row["xla_options"] = opts
          rows.append(row)
          print(common.format_table([row], _COLUMNS, _FMT), flush=True)
  print()
  print(common.format_table(rows, _COLUMNS, _FMT))
  common.write_json(args.out, {
      "benchmark": "step_time", "environment": env,
      "settings": {k: v for k, v in vars(args).items() if k != "out"},
      "rows": rows})
  return rows


_COLUMNS = ("method", "batch", "width", "xla_options", "conv_impl",
            "jax_img_s", "torch_img_s",
            "ratio_jax_over_torch", "jax_ms_step", "torch_ms_step", "loadavg")
_FMT = {"jax_img_s": ".1f", "torch_img_s": ".1f", "ratio_jax_over_torch":
        ".3f", "jax_ms_step": ".0f", "torch_ms_step": ".0f"}

if __name__ == "__main__":
  main()
