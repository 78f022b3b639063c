"""Host malloc settings that keep XLA:CPU's per-step buffers mapped.

XLA:CPU allocates the temporaries of a compiled program afresh at every
execution (`memory_analysis().temp_size_in_bytes`: 0.95 GB for the CIFAR
ResNet-18 train step at batch 64). glibc serves blocks that large with
`mmap` (directly, or as the fallback of the per-thread arenas, whose heaps
are at most 64 MiB) and gives them back with `munmap` on free, so every step
page-faults its whole working set in again: 232,000 minor faults per step,
about a tenth of the step's CPU time on the project's 2-core machine
(docs/benchmarks.md, section 1).

`tune_malloc()` keeps those pages: one malloc arena (`M_ARENA_MAX` = 1, so
no thread falls back to `mmap`), no `mmap` for large blocks (`M_MMAP_MAX` =
0) and no trimming of the heap (`M_TRIM_THRESHOLD` = 2^31 - 1, `M_TOP_PAD` =
64 MiB), set with mallopt(3). After the first steps a step faults in
nothing.

It changes the whole process and cannot be undone for memory already
handed out, so mexd calls it only from the entry points it owns
(`python -m mexd.train`, `python -m mexd.evaluate`, the benchmarks), first
thing, before XLA's threads start allocating; a program that imports mexd
as a library is left alone unless it calls it (do so before the first JAX
computation). The cost: the process keeps its peak heap (its RSS does not
shrink after a peak). Off with mexd's CPU switch (`MEXD_CPU_FAST=0`, see
`mexd.cpu`); a no-op where the C library is not glibc.
"""

import ctypes
import ctypes.util
import functools
import sys

from mexd import cpu

# mallopt(3) parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
M_ARENA_MAX = -8

SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0),
            (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 64 << 20))


@functools.lru_cache(maxsize=None)
def _glibc():
  """The process's C library if it is glibc (has mallopt), else None.

  Looked up once per process (`ctypes.util.find_library` runs a subprocess).
  """
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement
    return libc if hasattr(libc, "mallopt") else None
  except (OSError, AttributeError):
    return None


def enabled() -> bool:
  """Whether `tune_malloc` applies here (glibc, `mexd.cpu.enabled()`)."""
  return cpu.enabled() and _glibc() is not None


def tune_malloc() -> bool:
  """Applies `SETTINGS` with mallopt(3); whether they were applied.

  False (nothing changed) when `MEXD_CPU_FAST=0`, off glibc, or when
  glibc refuses a setting.
  """
  if not enabled():
    return False
  libc = _glibc()
  libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
