"""Shared helpers of the benchmarks: provenance, timing, tables, JSON records.

Every speed script prints a text table and writes one JSON record,
`benchmarks/results/speed_<name>.json` by default (`--out` elsewhere): its
rows, its flags ("settings") and `environment()`: the command line, date, git
hash, jax / torch versions, the device the run used, the CPU model and the
load average at the start and the end.

Because other jobs may share the machine, the scripts time competing variants
interleaved in one process and report medians and ratios, never absolute
numbers alone.
"""

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from absl import flags
import flax
import jax
import jaxlib
import numpy as np

from benchmarks import env as env_lib
from mexd import cpu
from mexd.cpu import hostmem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")

FLAGS = flags.FLAGS


def define_flags(name: str, out: Optional[str] = None):
  """--out (default results/speed_<name>.json), --threads and --malloc.

  Call at the top of a speed script, then
  `flags.adopt_module_key_flags(common)` so that --help lists them.
  """
  flags.DEFINE_string(
      "out", out or os.path.join(RESULTS, f"speed_{name}.json"),
      "Where to write the JSON record.")
  flags.DEFINE_integer(
      "threads", None, "CPU threads (torch.set_num_threads; 1 also turns off "
      "XLA:CPU's thread pool); default: all cores.")
  flags.DEFINE_enum(
      "malloc", "tuned", ["tuned", "default"], "Host malloc: tuned "
      "(mexd.cpu.hostmem.tune_malloc, as mexd.train does) or glibc's "
      "defaults.")


def setup_from_flags(**kwargs):
  """`benchmarks.env.setup` with --threads and --malloc (first in main)."""
  env_lib.setup(threads=FLAGS.threads, malloc=FLAGS.malloc, **kwargs)


def settings() -> Dict[str, Any]:
  """The running script's flags and their values, --out excepted."""
  main = sys.modules["__main__"]
  return {f.name: f.value for f in FLAGS.get_key_flags_for_module(main)
          if f.name != "out"}


def command_line(drop: Sequence[str] = ()) -> str:
  """This process's command, `python -m benchmarks.<name> ARGS` (minus drop)."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  head = (["python", "-m", spec.name] if spec is not None else
          ["python", os.path.relpath(sys.argv[0], ROOT)])
  return " ".join(head + [shlex.quote(a) for a in sys.argv[1:]
                          if a not in drop])


def git(*args: str) -> str:
  """stdout of `git ARGS` in the repository ("" when git fails)."""
  try:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=10, check=False).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return ""


def _git_hash() -> str:
  """Short HEAD hash, "+dirty(mexd)" when mexd/ has uncommitted changes."""
  head = git("rev-parse", "--short", "HEAD")
  if not head:
    return "unknown"
  dirty = git("status", "--porcelain", "--", "mexd")
  return head + ("+dirty(mexd)" if dirty else "")


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
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
  devs = jax.devices()
  return {"platform": devs[0].platform, "device_kind": devs[0].device_kind,
          "device_count": len(devs), "cpu": cpu_model(),
          "cpu_count": os.cpu_count(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def torch_version() -> Optional[str]:
  """The installed torch's version (torch is not imported), or None."""
  try:
    return importlib.metadata.version("torch")
  except importlib.metadata.PackageNotFoundError:
    return None


def _malloc() -> str:
  """"tuned" where `setup_from_flags` applies tune_malloc (--malloc tuned,
  `mexd.cpu.hostmem.enabled()`), else "default"."""
  asked = FLAGS.malloc if "malloc" in FLAGS and FLAGS.is_parsed() else "tuned"
  return "tuned" if asked == "tuned" and hostmem.enabled() else "default"


def environment() -> Dict[str, Any]:
  """Provenance of a measurement (goes into every JSON record)."""
  return {
      "command": command_line(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "git": _git_hash(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": getattr(jaxlib, "__version__", None),
      "flax": flax.__version__,
      "torch": torch_version(),
      "device": device_description(),
      "malloc": _malloc(),
      "cpu_fast": cpu.enabled(),
      "loadavg_start": loadavg(),
  }


def torch_environment(torch_module, use: bool = True):
  """(torch used, `environment()` with "torch_threads") at a script's start.

  torch is used when `use` asks for it and it is installed (a line says when
  it is not); --threads then sets its thread count.
  """
  if use and torch_module is None:
    print("torch is not installed (pip install -e .[bench]); JAX only")
  use = use and torch_module is not None
  env = environment()
  env["torch_threads"] = None
  if use:
    if FLAGS.threads:
      torch_module.set_num_threads(FLAGS.threads)
    env["torch_threads"] = torch_module.get_num_threads()
  return use, env


def print_device(env: Dict[str, Any]):
  """One line: platform, device kind and count, CPU, load."""
  d = env["device"]
  print(f"device: {d['platform']} {d['device_kind']} x{d['device_count']} "
        f"({d['cpu']}, {d['cpu_count']} cpus); load {loadavg()}", flush=True)


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


def write_record(benchmark: str, rows: Sequence[Dict[str, Any]],
                 env: Optional[Dict[str, Any]] = None, **extra):
  """Writes {"benchmark", "environment", "settings", "rows", **extra} to --out.

  `env` is the `environment()` taken at the start (taken now if None).
  """
  write_json(FLAGS.out, {"benchmark": benchmark,
                         "environment": env or environment(),
                         "settings": settings(), "rows": list(rows),
                         **extra})


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
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return str(x)
