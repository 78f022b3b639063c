"""mexd.cpu.hostmem: after tune_malloc big blocks are reused, not faulted in.

Each check runs in a fresh interpreter (the settings are process-wide): it
allocates and frees a 64 MiB block, touching every page, several times and
counts the minor page faults of the later rounds (`getrusage`). With glibc's
defaults a block that size is `mmap`ped afresh each time (16,384 faults of
4 KiB pages per round); after `tune_malloc()` the freed block stays in the
heap and the next round faults in (almost) nothing.
"""

import os
import subprocess
import sys

import pytest

from mexd.cpu import hostmem

_PROBE = r"""
import ctypes, resource, sys
from mexd.cpu import hostmem
applied = hostmem.tune_malloc() if sys.argv[1] == "tuned" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
n = 64 << 20
faults = []
for _ in range(4):
  f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  p = libc.malloc(n)
  ctypes.memset(p, 1, n)  # touch every page
  libc.free(p)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(int(applied), max(faults[1:]))
"""

_GLIBC = hostmem._glibc() is not None  # pylint: disable=protected-access
pytestmark = pytest.mark.skipif(not _GLIBC, reason="needs glibc (Linux)")


def _probe(mode, **env):
  out = subprocess.run(
      [sys.executable, "-c", _PROBE, mode], check=True, capture_output=True,
      text=True, env={**os.environ, **env}).stdout.split()
  return bool(int(out[0])), int(out[1])


def test_default_malloc_faults_big_blocks_in_every_time():
  applied, faults = _probe("default")
  assert not applied
  assert faults >= (64 << 20) // 4096 // 2, faults  # >= half the pages


def test_tuned_malloc_reuses_big_blocks():
  applied, faults = _probe("tuned")
  assert applied
  assert faults < 100, faults


def test_opt_out():
  applied, faults = _probe("tuned", MEXD_CPU_FAST="0")
  assert not applied
  assert faults >= (64 << 20) // 4096 // 2, faults
