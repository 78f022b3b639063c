"""Inference throughput: mexd's one-pass and staged programs vs PyTorch.

For each network (`fixtures.NETS`: the Fashion-MNIST recipe's CNN and its
student, the CIFAR ResNet-18) and N random normalised images in batches of
B, interleaved in every repetition:

* one pass: mexd's jitted eval forward of every exit
  (`model.apply(train=False)` under `mexd.cpu.xla_options.jit`) vs the
  PyTorch twin (`torch_reference`) in `torch.inference_mode()`, eager and,
  with `--torch_modes eager,compile`, under `torch.compile`;
* staged early exit (the Fashion-MNIST nets, whose twin gets mexd's weights
  through `torch_reference.load_small_cnn`): `StagedPredictor.run` on each
  batch vs `torch_reference.staged_predict` (stage k on the survivors, one
  host sync per stage, as a PyTorch user writes it). Thresholds make a
  fraction `--fraction` of the live images leave at each early exit; the
  rows report the share of images where both took the same exit.

Rows give the median images/s of each side and the median of the
per-repetition ratio mexd / PyTorch (robust to drift of the machine's
speed). Weights are random (speed does not depend on them; the staged rows'
exit mix is set by the thresholds).

Usage (torch is the optional `bench` extra):
  python -m benchmarks.inference_speed
  python -m benchmarks.inference_speed --nets fashion_cnn --torch_modes eager,compile
"""

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import common
from benchmarks import fixtures
from mexd.cpu import xla_options
from mexd.early_exit import policies
from mexd.early_exit import staged

try:  # PyTorch is the optional `bench` extra.
  import torch
  from benchmarks import torch_reference
except ImportError:
  torch = torch_reference = None

FLAGS = flags.FLAGS
flags.DEFINE_string("nets", "fashion_cnn,fashion_student,resnet18",
                    "Comma list of fixtures.NETS names.")
flags.DEFINE_integer("n", None, "Images per repetition (default 4096 for the "
                     "Fashion-MNIST nets, 512 for resnet18).")
flags.DEFINE_integer("batch", None, "Batch size B (default 256; 128 for "
                     "resnet18).")
flags.DEFINE_integer("width", 64, "resnet18 base width.")
flags.DEFINE_float("fraction", 0.5, "Share of the live images leaving at "
                   "each early exit (staged rows).")
flags.DEFINE_integer("reps", 7, "Interleaved repetitions.")
flags.DEFINE_string("torch_modes", "eager", "Comma list: eager, compile.")
common.define_flags("inference")
flags.adopt_module_key_flags(common)

_COLUMNS = ("net", "program", "torch_mode", "n", "batch", "jax_img_s",
            "torch_img_s", "ratio_jax_over_torch", "same_exit", "loadavg")
_FMT = {"jax_img_s": ".0f", "torch_img_s": ".0f",
        "ratio_jax_over_torch": ".3f", "same_exit": ".4f"}


def _batches(n, b):
  return [slice(i, min(i + b, n)) for i in range(0, n, b)]


def bench_net(net, *, n, batch, width=64, fraction=0.5, reps=7,
              torch_modes=("eager",)):
  """Rows of one network: one pass (and staged for the small CNNs)."""
  shape, classes, _ = fixtures.NETS[net]
  model = fixtures.net(net, width=width)
  rng = np.random.default_rng(0)
  host = rng.standard_normal((n,) + shape).astype(np.float32)
  x = jax.device_put(host)
  variables = jax.device_get(jax.jit(model.init)(jax.random.PRNGKey(0),
                                                 x[:1]))
  parts = _batches(n, batch)
  forward = xla_options.jit(lambda v, x: model.apply(v, x, train=False)[0])

  def jax_one_pass():
    return jax.block_until_ready([forward(variables, x[s]) for s in parts])

  logits = np.concatenate([np.asarray(o) for o in jax_one_pass()], axis=1)
  scores = np.asarray(policies.scores(logits, "max_prob"))
  theta = fixtures.thresholds_for(scores, fraction)
  pred = staged.StagedPredictor(model, variables, theta, "max_prob")

  def jax_staged():
    outs = [pred.run(x[s]) for s in parts]
    return np.concatenate([o.exits for o in outs])

  progs = {"one_pass": {"jax": jax_one_pass}}
  small = net != "resnet18"
  fractions = {}
  if small:
    progs["staged"] = {"jax": jax_staged}
    exits = jax_staged()
    fractions["staged"] = (np.bincount(exits, minlength=len(theta)) /
                           n).round(4).tolist()
  same = {}
  if torch is not None:
    twin = torch_reference.twin(model, net, classes, width,
                                in_channels=shape[-1]).eval()
    if small:
      torch_reference.load_small_cnn(twin, variables)
    xt = torch.from_numpy(host).permute(0, 3, 1, 2).contiguous()
    for mode in torch_modes:
      fn = torch.compile(twin) if mode == "compile" else twin

      def torch_one_pass(fn=fn):
        with torch.inference_mode():
          return [fn(xt[s])[0] for s in parts]

      progs["one_pass"][mode] = torch_one_pass
    if small:
      def torch_staged():
        with torch.inference_mode():
          outs = [torch_reference.staged_predict(twin, xt[s], theta)
                  for s in parts]
        return np.concatenate([o[1] for o in outs])

      progs["staged"]["eager"] = torch_staged
      same["staged"] = float(np.mean(exits == torch_staged()))
      with torch.inference_mode():
        got = np.concatenate([twin(xt[s])[0].numpy() for s in parts], 1)
      same["one_pass"] = float(np.mean(got.argmax(-1) == logits.argmax(-1)))
  for fns in progs.values():  # warm-up: compiles every program and bucket
    for f in fns.values():
      f()
  times = {(p, k): [] for p, fns in progs.items() for k in fns}
  for _ in range(reps):
    for p, fns in progs.items():
      for k, f in fns.items():
        times[(p, k)].append(common.timeit(f))
  rows = []
  for p, fns in progs.items():
    tj = times[(p, "jax")]
    for k in fns:
      if k == "jax":
        continue
      tt = times[(p, k)]
      rows.append({
          "net": net, "program": p, "torch_mode": k, "n": n, "batch": batch,
          "jax_img_s": n / common.median(tj),
          "torch_img_s": n / common.median(tt),
          "ratio_jax_over_torch": common.median(
              [b / a for a, b in zip(tj, tt)]),
          "same_exit": same.get(p), "jax_times_s": tj, "torch_times_s": tt,
          "exit_fractions": fractions.get(p),
          "loadavg": common.loadavg()})
    if len(fns) == 1:  # JAX only (no torch)
      rows.append({"net": net, "program": p, "torch_mode": None, "n": n,
                   "batch": batch, "jax_img_s": n / common.median(tj),
                   "jax_times_s": tj, "loadavg": common.loadavg()})
  return rows


def main(argv):
  del argv
  common.setup_from_flags()
  _, env = common.torch_environment(torch)
  common.print_device(env)
  rows = []
  for net in FLAGS.nets.split(","):
    big = net == "resnet18"
    out = bench_net(
        net, n=FLAGS.n or (512 if big else 4096),
        batch=FLAGS.batch or (128 if big else 256), width=FLAGS.width,
        fraction=FLAGS.fraction, reps=FLAGS.reps,
        torch_modes=tuple(FLAGS.torch_modes.split(",")))
    print(common.format_table(out, _COLUMNS, _FMT), flush=True)
    rows += out
  print()
  print(common.format_table(rows, _COLUMNS, _FMT))
  common.write_record("inference_speed", rows, env)


if __name__ == "__main__":
  app.run(main)
