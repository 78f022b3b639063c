"""Per-layer convolution times: mexd's CPU conv vs PyTorch, one network.

Every 3x3 convolution of a Fashion-MNIST recipe network (`fixtures.NETS`:
the trunk's convs at each stage's resolution and the exit heads' strided
convs) is timed alone at batch B, interleaved with PyTorch's `F.conv2d`:

* forward: mexd's `mexd.cpu.conv.conv3x3_fast_grad` (XLA's convolution)
  under `mexd.cpu.xla_options.jit` vs `F.conv2d` under `torch.no_grad()`;
* forward + backward of sum(y^2): mexd's custom VJP (GEMM-based gradients)
  vs autograd. The network's first conv (whose input is the image) takes
  only the kernel gradient on both sides, as in a train step.

The totals say how much of the train-step gap (`step_time.py`) is the
convolution kernels themselves.

Usage (torch is the optional `bench` extra):
  python -m benchmarks.conv_layers
  python -m benchmarks.conv_layers --net fashion_student --batch 256
"""

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks import fixtures
from mexd.cpu import conv as cpu_conv
from mexd.cpu import xla_options

try:  # PyTorch is the optional `bench` extra.
  import torch
  import torch.nn.functional as F
except ImportError:
  torch = F = None

FLAGS = flags.FLAGS
flags.DEFINE_string("net", "fashion_cnn", "fashion_cnn or fashion_student.")
flags.DEFINE_integer("batch", 128, "Batch size B.")
flags.DEFINE_integer("reps", 15, "Interleaved repetitions.")
common.define_flags("conv_layers")
flags.adopt_module_key_flags(common)

_COLUMNS = ("layer", "hw", "cin", "cout", "stride", "jax_fwd_ms",
            "torch_fwd_ms", "fwd_ratio", "jax_fwd_bwd_ms", "torch_fwd_bwd_ms",
            "fwd_bwd_ratio")
_FMT = {k: ".2f" for k in _COLUMNS[5:]}


def conv_shapes(model, image_hw: int, in_channels: int):
  """[(name, H, C_in, C_out, stride)] of a SmallCNN's 3x3 convolutions."""
  out, hw, cin = [], image_hw, in_channels
  for i, (w, s) in enumerate(zip(model.widths, model.strides)):
    pool = model.downsample == "maxpool" and s > 1
    if pool:
      hw = -(-hw // s)
    for j in range(2):
      stride = s if (j == 0 and not pool) else 1
      out.append((f"stage{i}.conv{j}", hw, cin, w, stride))
      hw, cin = -(-hw // stride), w
    out.append((f"head{i}.conv", hw, w, model.head_features, 2))
  return out


def bench_layer(name, hw, cin, cout, stride, *, batch, reps, first):
  """One row: median ms of each side, ratios PyTorch / mexd."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((batch, hw, hw, cin)).astype(np.float32)
  w = (rng.standard_normal((3, 3, cin, cout)) * 0.1).astype(np.float32)
  xd, wd = jax.device_put(x), jax.device_put(w)

  def conv(x, w):
    return cpu_conv.conv3x3_fast_grad(x, w, stride)

  fwd = xla_options.jit(conv)
  grad = xla_options.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2),
                                  argnums=1 if first else (0, 1)))
  jax_fns = {"fwd": lambda: jax.block_until_ready(fwd(xd, wd)),
             "fwd_bwd": lambda: jax.block_until_ready(grad(xd, wd))}
  torch_fns = {}
  if torch is not None:
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    xt.requires_grad_(not first)
    wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
    wt.requires_grad_()

    def t_fwd():
      with torch.no_grad():
        return F.conv2d(xt, wt, stride=stride, padding=1)

    def t_fwd_bwd():
      wt.grad = xt.grad = None
      (F.conv2d(xt, wt, stride=stride, padding=1) ** 2).sum().backward()
      return wt.grad

    torch_fns = {"fwd": t_fwd, "fwd_bwd": t_fwd_bwd}
  times = {}
  for side, fns in (("jax", jax_fns), ("torch", torch_fns)):
    for k, f in fns.items():
      f()
      times[(side, k)] = []
  for _ in range(reps):
    for k in jax_fns:
      times[("jax", k)].append(common.timeit(jax_fns[k]))
      if k in torch_fns:
        times[("torch", k)].append(common.timeit(torch_fns[k]))
  row = {"layer": name, "hw": hw, "cin": cin, "cout": cout,
         "stride": stride}
  for k in jax_fns:
    row[f"jax_{k}_ms"] = 1e3 * common.median(times[("jax", k)])
    if k in torch_fns:
      row[f"torch_{k}_ms"] = 1e3 * common.median(times[("torch", k)])
      row[f"{k}_ratio"] = common.median(
          [b / a for a, b in zip(times[("jax", k)], times[("torch", k)])])
  return row


def main(argv):
  del argv
  common.setup_from_flags()
  _, env = common.torch_environment(torch)
  common.print_device(env)
  model = fixtures.net(FLAGS.net)
  (h, _, c), _, _ = fixtures.NETS[FLAGS.net]
  rows = []
  for i, shape in enumerate(conv_shapes(model, h, c)):
    rows.append(bench_layer(*shape, batch=FLAGS.batch, reps=FLAGS.reps,
                            first=i == 0))
    print(common.format_table(rows[-1:], _COLUMNS, _FMT), flush=True)
  total = {"layer": "total"}
  for k in ("jax_fwd_ms", "torch_fwd_ms", "jax_fwd_bwd_ms",
            "torch_fwd_bwd_ms"):
    if all(k in r for r in rows):
      total[k] = sum(r[k] for r in rows)
  for k in ("fwd", "fwd_bwd"):
    if f"torch_{k}_ms" in total:
      total[f"{k}_ratio"] = total[f"torch_{k}_ms"] / total[f"jax_{k}_ms"]
  print()
  print(common.format_table(rows + [total], _COLUMNS, _FMT))
  common.write_record("conv_layers", rows + [total], env, net=FLAGS.net,
                      batch=FLAGS.batch)


if __name__ == "__main__":
  app.run(main)
