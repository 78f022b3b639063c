#!/usr/bin/env python3
"""Starts N coordinated `python -m mexd.train` processes on this machine.

  python launch/local_multiprocess.py --num_processes=2 --cpu_devices=4 -- \
      --config=configs/digits.py --config.num_epochs=1 --workdir=runs/mp

Everything after `--` is passed to every `mexd.train` process unchanged. Each
process gets the environment a multi-host job would give it:

  JAX_COORDINATOR_ADDRESS=127.0.0.1:<port>   (process 0 hosts the coordinator)
  JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=i      (read by mexd.train's main)

and `--multiprocess`, so `jax.distributed.initialize()` joins them into one
JAX runtime: `jax.devices()` lists the devices of all processes, and the train
step's collectives cross process boundaries (gloo on CPU). With
`--cpu_devices=k` each process runs on the CPU with k fake devices
(XLA_FLAGS=--xla_force_host_platform_device_count=k), which is how
multi-host code is tested on one machine.

The launcher waits for all processes. If one fails (or `--timeout` passes),
the others are stopped (SIGTERM, then SIGKILL after 10 s), and the launcher
exits with the first non-zero exit code (124 on timeout). The processes also
die with the launcher (Linux), so none is left waiting in a collective.
"""

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from typing import List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on right now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(process_id: int, num_processes: int, port: int,
                cpu_devices: Optional[int],
                base: Optional[dict] = None) -> dict:
  """The environment of process `process_id` of `num_processes`."""
  env = dict(os.environ if base is None else base)
  env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
             JAX_NUM_PROCESSES=str(num_processes),
             JAX_PROCESS_ID=str(process_id))
  if cpu_devices:
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={cpu_devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
  # `python -m mexd.train` must find mexd and configs/ without an install.
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (REPO, env.get("PYTHONPATH")) if p)
  return env


def _die_with_parent():
  """Linux: the child gets SIGKILL when the launcher dies, even by SIGKILL."""
  try:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
  except OSError:  # Not Linux: the launcher's own cleanup has to do.
    return
  libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _stop(procs: Sequence[subprocess.Popen], grace: float = 10.0):
  """SIGTERM every live process (and its group), SIGKILL after `grace` s."""
  for p in procs:
    if p.poll() is None:
      try:
        os.killpg(p.pid, signal.SIGTERM)
      except ProcessLookupError:
        pass
  deadline = time.time() + grace
  for p in procs:
    try:
      p.wait(timeout=max(0.1, deadline - time.time()))
    except subprocess.TimeoutExpired:
      try:
        os.killpg(p.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      p.wait()


def launch(train_args: Sequence[str], *, num_processes: int,
           cpu_devices: Optional[int] = None, port: int = 0,
           timeout: Optional[float] = None,
           python: str = sys.executable) -> int:
  """Runs the processes to the end; returns the job's exit code.

  Args:
    train_args: flags for `mexd.train` (e.g. ["--config=...", "--workdir=..."]).
    num_processes: how many processes to start.
    cpu_devices: fake CPU devices per process (None: the real devices).
    port: coordinator port on 127.0.0.1 (0: pick a free one).
    timeout: seconds before every process is stopped (None: no limit).
    python: the interpreter to run.

  Returns:
    0 if every process succeeded, else the first failure's exit code
    (124 on timeout; a process killed by signal s gives 128 + s).
  """
  port = port or free_port()
  cmd = [python, "-m", "mexd.train", "--multiprocess", *train_args]
  procs: List[subprocess.Popen] = []
  try:
    for i in range(num_processes):
      # Each process leads its own group, so stopping it stops its children.
      procs.append(subprocess.Popen(
          cmd, cwd=REPO, start_new_session=True,
          preexec_fn=_die_with_parent,
          env=process_env(i, num_processes, port, cpu_devices)))
    deadline = None if timeout is None else time.time() + timeout
    while True:
      codes = [p.poll() for p in procs]
      failed = [c for c in codes if c not in (None, 0)]
      if failed:
        code = failed[0]
        print(f"local_multiprocess: a process exited with {code}; stopping "
              "the others", file=sys.stderr, flush=True)
        return 128 - code if code < 0 else code
      if all(c == 0 for c in codes):
        return 0
      if deadline is not None and time.time() > deadline:
        print(f"local_multiprocess: timeout after {timeout}s; stopping all "
              "processes", file=sys.stderr, flush=True)
        return 124
      time.sleep(0.2)
  finally:
    _stop(procs)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      usage="%(prog)s [options] -- [mexd.train flags]", allow_abbrev=False)
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--cpu_devices", type=int, default=None,
                      help="fake CPU devices per process (sets JAX_PLATFORMS"
                      "=cpu); leave unset to use the real accelerators")
  parser.add_argument("--port", type=int, default=0,
                      help="coordinator port (default: a free one)")
  parser.add_argument("--timeout", type=float, default=None,
                      help="stop everything after this many seconds")
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--" in argv:  # Launcher flags, then `--`, then mexd.train flags.
    cut = argv.index("--")
    args, rest = parser.parse_args(argv[:cut]), argv[cut + 1:]
  else:
    args, rest = parser.parse_known_args(argv)
  if args.num_processes < 1:
    parser.error("--num_processes must be at least 1")
  # A SIGTERM to the launcher (a scheduler, a test timeout) stops the job too.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
  return launch(rest, num_processes=args.num_processes,
                cpu_devices=args.cpu_devices, port=args.port,
                timeout=args.timeout)


if __name__ == "__main__":
  sys.exit(main())
