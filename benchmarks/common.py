"""Shared helpers of the speed benchmarks: environment record, timing, output.

Every benchmark script prints a text table and writes
`benchmarks/results/speed_<name>.json` (or `--out`) holding its rows plus
`environment()`: the command line, date, git hash, jax / torch versions, the
device the run used, the CPU model and the load average at the time.

Because other jobs may share the machine, the scripts time competing variants
interleaved in one process and report medians and ratios, never absolute
numbers alone.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def set_threads(threads: Optional[int]):
  """Restricts XLA:CPU to one thread when threads == 1 (call before jax).

  XLA:CPU has no flag for "N intra-op threads"; it uses one Eigen pool sized
  to the cores. threads == 1 turns the pool off; other values leave XLA alone
  (and only set PyTorch's thread count, see `torch_threads`).
  """
  if threads == 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false"
                               " intra_op_parallelism_threads=1").strip()


def setup_process(args):
  """First thing in a script's main: threads, then host malloc (before jax).

  `--malloc tuned` (the default, as in `python -m mexd.train`) applies
  `mexd.hostmem.tune_malloc()`; `--malloc default` keeps glibc's defaults
  and sets MEXD_TUNE_MALLOC=0 so that child processes keep them too.
  """
  set_threads(args.threads)
  if args.malloc == "default":
    os.environ["MEXD_TUNE_MALLOC"] = "0"
  from mexd import hostmem  # pylint: disable=g-import-not-at-top
  hostmem.tune_malloc()


def add_common_flags(parser: argparse.ArgumentParser, name: str):
  """--out (JSON path), --threads and --malloc, shared by every script."""
  parser.add_argument("--out", default=os.path.join(RESULTS,
                                                    f"speed_{name}.json"),
                      help="where to write the JSON record")
  parser.add_argument("--threads", type=int, default=None,
                      help="CPU threads (torch.set_num_threads; 1 also turns "
                      "off XLA:CPU's thread pool); default: all cores")
  parser.add_argument("--malloc", default="tuned",
                      choices=("tuned", "default"),
                      help="host malloc: tuned (mexd.hostmem.tune_malloc, as "
                      "mexd.train does) or glibc's defaults")


def _git_hash() -> str:
  try:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                         capture_output=True, text=True, timeout=10)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "mexd"],
                           cwd=ROOT, capture_output=True, text=True,
                           timeout=10).stdout.strip()
    return out.stdout.strip() + ("+dirty(mexd)" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def loadavg() -> List[float]:
  """1, 5 and 15 minute load averages (empty where unsupported)."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return []


def device_description() -> Dict[str, Any]:
  """The JAX backend and devices the run used, in words."""
  import jax  # pylint: disable=g-import-not-at-top
  devs = jax.devices()
  return {"platform": devs[0].platform, "device_kind": devs[0].device_kind,
          "device_count": len(devs), "cpu": _cpu_model(),
          "cpu_count": os.cpu_count(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def torch_version() -> Optional[str]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
    return torch.__version__
  except ImportError:
    return None


def environment() -> Dict[str, Any]:
  """Provenance of a measurement (goes into every JSON record)."""
  import jax  # pylint: disable=g-import-not-at-top
  import flax  # pylint: disable=g-import-not-at-top
  from mexd import hostmem  # pylint: disable=g-import-not-at-top
  return {
      "command": " ".join(["python", os.path.relpath(sys.argv[0], ROOT)]
                          + sys.argv[1:]),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "git": _git_hash(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": getattr(__import__("jaxlib"), "__version__", None),
      "flax": flax.__version__,
      "torch": torch_version(),
      "device": device_description(),
      "malloc": "tuned" if hostmem.enabled() else "default",
      "loadavg_start": loadavg(),
  }


def timeit(fn: Callable[[], Any], sync: Callable[[Any], Any] = lambda x: x
           ) -> float:
  """Seconds of one call of fn() including `sync(result)`."""
  t0 = time.perf_counter()
  sync(fn())
  return time.perf_counter() - t0


def median(xs: Sequence[float]) -> float:
  return float(statistics.median(xs))


def format_table(rows: Sequence[Dict[str, Any]], columns: Sequence[str],
                 fmt: Optional[Dict[str, str]] = None) -> str:
  """A fixed-width text table of `rows` (dicts) restricted to `columns`."""
  fmt = fmt or {}

  def cell(row, c):
    v = row.get(c, "")
    if v is None:
      return "-"
    if c in fmt and isinstance(v, (int, float)):
      return format(v, fmt[c])
    if isinstance(v, float):
      return f"{v:.4g}"
    return str(v)

  cells = [[cell(r, c) for c in columns] for r in rows]
  widths = [max([len(c)] + [len(r[i]) for r in cells])
            for i, c in enumerate(columns)]
  lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths)),
           "  ".join("-" * w for w in widths)]
  lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
  return "\n".join(lines)


def write_json(path: str, record: Dict[str, Any]):
  """Writes the record (plus the load average at the end) as JSON."""
  record = dict(record)
  record.setdefault("environment", environment())
  record["environment"]["loadavg_end"] = loadavg()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(record, f, indent=1, default=_jsonable)
    f.write("\n")
  print(f"wrote {os.path.relpath(path, os.getcwd())}", flush=True)


def _jsonable(x):
  try:
    import numpy as np  # pylint: disable=g-import-not-at-top
    if isinstance(x, np.generic):
      return x.item()
    if isinstance(x, np.ndarray):
      return x.tolist()
  except ImportError:
    pass
  return str(x)
