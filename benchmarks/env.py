"""Process setup of the speed scripts: XLA flags, threads and host malloc.

The one place where the order matters. XLA reads `XLA_FLAGS` (the CPU thread
pool, fake host devices, a user's flags) once, when JAX creates its first
backend: at the first device query or computation, not at `import jax`. So
the scripts import jax and mexd at the top as usual, parse their flags
(absl), and call `setup(...)` first thing in `main`, before anything touches
a device. `setup` raises if a backend exists already, because the flags would
then be ignored without a word. It applies `mexd.cpu.hostmem.tune_malloc()`
first, as `python -m mexd.train` does: before XLA's threads allocate.
"""

import os
from typing import Optional

# backends_are_initialized has no public spelling; chex.set_n_cpu_devices
# reads the same module for the same check.
from jax._src import xla_bridge

from mexd.cpu import hostmem


def append_xla_flags(extra: str):
  """Appends `extra` (space-separated XLA flags) to the environment's."""
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                             + extra).strip()


def setup(*, threads: Optional[int] = None, malloc: str = "tuned",
          xla_flags: str = "", host_devices: Optional[int] = None):
  """Threads, host malloc and XLA flags of this process (and its children).

  Args:
    threads: 1 turns XLA:CPU's thread pool off (XLA:CPU has no flag for "N
      intra-op threads"; it sizes one Eigen pool to the cores); other values
      leave XLA alone (the scripts pass them to PyTorch).
    malloc: "tuned" applies `mexd.cpu.hostmem.tune_malloc()` (a no-op with
      MEXD_CPU_FAST=0 or off glibc); "default" keeps glibc's settings.
    xla_flags: appended to XLA_FLAGS.
    host_devices: fake CPU devices (--xla_force_host_platform_device_count)
      unless XLA_FLAGS sets a count already.

  Raises:
    RuntimeError: a JAX backend exists already (XLA_FLAGS was read).
  """
  if xla_bridge.backends_are_initialized():
    raise RuntimeError("benchmarks.env.setup must run before the first JAX "
                       "computation or device query (XLA_FLAGS is read then)")
  if malloc == "tuned":
    hostmem.tune_malloc()
  if threads == 1:
    append_xla_flags("--xla_cpu_multi_thread_eigen=false "
                     "intra_op_parallelism_threads=1")
  if xla_flags:
    append_xla_flags(xla_flags)
  if host_devices and ("--xla_force_host_platform_device_count"
                       not in os.environ.get("XLA_FLAGS", "")):
    append_xla_flags(f"--xla_force_host_platform_device_count={host_devices}")
