"""Prints the model-zoo table and writes benchmarks/results/model_table.json.

For every registered model (default exit heads, canonical input size, 100
classes for CIFAR nets, 1000 for ImageNet nets, 10 for the small CNNs):
exits, parameter counts by role (`mexd.models.costs.param_counts`), the
exit-head parameters of every head kind, and XLA-measured MACs per exit for
one image (`mexd.models.costs.exit_costs`; see its docstring for the counting
rule). Block-structured nets also report the usual analytic backbone MACs
(all conv taps, convs only) for comparison with papers.

Usage (CPU is fine; compiling every exit prefix takes a few minutes):
  JAX_PLATFORMS=cpu python -m benchmarks.model_table
  JAX_PLATFORMS=cpu python -m benchmarks.model_table --models resnet18,vgg16
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from benchmarks import common
from benchmarks import fixtures
from mexd import models
from mexd.models import blocknet
from mexd.models import costs


FLAGS = flags.FLAGS
flags.DEFINE_string("models", "",
                    "Comma-separated names (default: all registered).")
flags.DEFINE_string("out", os.path.join(common.RESULTS, "model_table.json"),
                    "JSON output path.")


def _head_params(name, num_classes, shape):
  """Exit-head parameters (all exits but the last) for each head kind."""
  kinds = (("msdnet", "sdn", "erde") if name.startswith("msdnet") else
           ("byot", "byot_sep", "sdn", "erde"))
  out = {}
  for kind in kinds:
    model = models.get_model(name, num_classes=num_classes, head=kind)
    v = jax.eval_shape(model.init, jax.random.key(0),
                       jax.ShapeDtypeStruct((1,) + shape, jnp.float32))
    out[kind] = costs.param_counts(v)["heads"]
  return out


def measure(name):
  """One row of the table, as a dict."""
  num_classes, shape = fixtures.canonical_setting(name)
  model = models.get_model(name, num_classes=num_classes)
  x = jax.ShapeDtypeStruct((1,) + shape, jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  row = {"name": name, "input": list(shape), "num_classes": num_classes}
  row["head"] = getattr(model, "head", "pool_dense")
  row.update(costs.param_counts(variables))
  t0 = time.time()
  per_exit = costs.exit_costs(model, variables, shape)
  row["exits"] = len(per_exit)
  row["macs_per_exit"] = [c["macs"] for c in per_exit]
  row["compile_s"] = round(time.time() - t0, 1)
  if isinstance(model, blocknet.BlockNet):
    plan = model.apply({}, method=lambda m: m.plan())
    row["analytic_backbone_macs"] = sum(blocknet.unit_costs(plan))
  if name not in fixtures.SMALL_MODELS:
    row["head_params_by_kind"] = _head_params(name, num_classes, shape)
  return row


def _m(n):
  return f"{n / 1e6:.2f}M"


def _g(n):
  return f"{n / 1e9:.3f}" if n >= 1e7 else f"{n / 1e9:.5f}"


def to_markdown(rows):
  lines = [
      "| model | input | C | E | backbone params | exit-head params "
      "(default head) | exit-head params by kind | MACs per exit (G) | "
      "analytic conv MACs (G) |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    kinds = r.get("head_params_by_kind", {})
    by_kind = " / ".join(f"{k}: {_m(v)}" for k, v in kinds.items()) or "-"
    analytic = r.get("analytic_backbone_macs")
    lines.append(
        f"| `{r['name']}` | {r['input'][0]}x{r['input'][1]}x{r['input'][2]} "
        f"| {r['num_classes']} | {r['exits']} | {_m(r['backbone'])} | "
        f"{_m(r['heads'])} ({r['head']}) | {by_kind} | "
        f"{', '.join(_g(m) for m in r['macs_per_exit'])} | "
        f"{_g(analytic) if analytic else '-'} |")
  return "\n".join(lines)


def main(argv):
  del argv
  names = FLAGS.models.split(",") if FLAGS.models else models.model_names()
  rows = []
  for name in names:
    rows.append(measure(name))
    print(f"# {name}: {rows[-1]['compile_s']} s", file=sys.stderr, flush=True)
  print(to_markdown(rows))
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, "w") as f:
    json.dump({"jax": jax.__version__, "backend": jax.default_backend(),
               "rows": rows}, f, indent=1)
  print(f"wrote {FLAGS.out}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
