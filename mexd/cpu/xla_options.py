"""XLA compiler options for mexd's heavy jitted programs (per program).

XLA:CPU in jaxlib 0.10 lowers convolutions to YNNPACK fusions by default. On
the project's 2-core AMD EPYC these run about 2x slower than XLA's own
(Eigen) convolution: B=64 32x32 64->64 3x3 forward 77 -> 37 ms, its XLA
kernel gradient 1012 -> 90 ms, while YNNPACK's matmuls and reductions are the
fast ones (`benchmarks/step_time.py`, docs/benchmarks.md). So on the CPU
backend the train step, the eval forward and the staged-inference stages are
compiled with YNNPACK kept for dots and reductions only:

  {"xla_cpu_experimental_ynn_fusion_type":
       "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}

The options are passed per program (`jax.jit(..., compiler_options=...)`);
nothing global changes, and a user's own program is unaffected. They are
skipped (plain `jax.jit`) on other backends, when mexd's CPU measures are
switched off (`MEXD_CPU_FAST=0`, see `mexd.cpu`), when `XLA_FLAGS` already
sets `xla_cpu_experimental_ynn_fusion_type` (the user's choice wins), or when
the installed jaxlib does not know the option (checked once by compiling a
one-line program; an unknown option is a compile error, not a crash).
"""

import functools
import os
from typing import Any, Callable, Dict, Optional

from absl import logging
import jax
import numpy as np

from mexd import cpu

CPU_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type":
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}


@functools.lru_cache(maxsize=None)
def _supported() -> bool:
  """Whether the (CPU) default backend accepts CPU_OPTIONS (compiled once)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(
        np.float32(0)).compile()
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("mexd: XLA:CPU options %s not supported by this jaxlib "
                    "(%s); using XLA's defaults", CPU_OPTIONS, e)
    return False
  return True


def compiler_options(backend: Optional[str] = None, *,
                     enabled: Optional[bool] = None) -> Dict[str, str]:
  """The options mexd compiles its programs with on `backend`.

  Args:
    backend: "cpu", "gpu", "tpu"; None means `jax.default_backend()`.
    enabled: False gives {}; None follows the switch (`mexd.cpu.enabled()`).

  Returns:
    a fresh dict ({} off CPU or when disabled, see the module docstring).
  """
  backend = backend or jax.default_backend()
  if enabled is None:
    enabled = cpu.enabled()
  if backend != "cpu" or not enabled:
    return {}
  if "ynn_fusion_type" in os.environ.get("XLA_FLAGS", ""):
    return {}
  # jax.jit compiles for the default backend; options for XLA:CPU only.
  if jax.default_backend() != "cpu":
    return {}
  return dict(CPU_OPTIONS) if _supported() else {}


def jit(fun: Callable[..., Any], *, enabled: Optional[bool] = None,
        **kwargs) -> Callable[..., Any]:
  """`jax.jit(fun, **kwargs)` with `compiler_options(enabled=enabled)` added.

  For the programs that do the work (train step, eval forward, inference
  stages); small helpers keep plain `jax.jit`.
  """
  options = compiler_options(enabled=enabled)
  if options:
    kwargs["compiler_options"] = {**options,
                                  **kwargs.get("compiler_options", {})}
  return jax.jit(fun, **kwargs)
