"""mexd's CPU-only speed measures, behind one switch.

XLA:CPU runs the train step of a convolutional net well below PyTorch on the
same cores (docs/benchmarks.md, section 1). Four measures close most of the
gap; each lives here and none runs on a GPU or TPU:

* `mexd.cpu.conv.Conv`: XLA's forward convolution with GEMM-based gradients
  (3x3 stride 1 and 2) and 1x1 convolutions as matmuls;
* `mexd.cpu.norm.BatchNorm`: batch norm with a closed-form backward pass;
* `mexd.cpu.xla_options`: XLA:CPU compiler options of the heavy programs
  (convolutions on XLA's own emitter instead of YNNPACK);
* `mexd.cpu.hostmem`: host malloc settings that keep XLA:CPU's per-step
  buffers mapped (applied by the CLIs at start-up).

The layers are chosen once, when a model is built
(`mexd.models.layers.for_backend`): these on the CPU backend, stock
`flax.linen.Conv` / `flax.linen.BatchNorm` elsewhere, with the same variables
and the same numbers, so a checkpoint written with one loads with the other.

The switch: the environment variable `MEXD_CPU_FAST=0` turns all four off
(stock flax layers on CPU too, plain `jax.jit`, glibc's malloc settings).
"""

import os

SWITCH = "MEXD_CPU_FAST"


def enabled() -> bool:
  """Whether the CPU speed measures apply (`MEXD_CPU_FAST` is not "0")."""
  return os.environ.get(SWITCH, "1") != "0"
