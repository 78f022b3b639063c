"""Load test of `python -m mexd.serve` on loopback: early exit vs one pass.

The same export is served twice, by the same server: --mode=early_exit
(stage by stage, early exits answered when their stage ends) and
--mode=one_pass (the one-pass network, every answer from the final exit).
For each mode and each concurrency C in `--concurrency`, C clients
(httpx, asyncio, one process) send the test images back to back as .npy
bodies until `--requests` have been answered (closed loop, bounded count
and time). Reported per (mode, C): throughput (answers/s), client-side
latency p50/p90/p99 (ms), the mean batch the server formed, the mean MACs
per answer, and the accuracy of the answers (both modes answer the same
images; the early-exit accuracy is that of the calibrated rule). The
server and the clients share this machine's cores.

Usage:
  python -m benchmarks.serving --export=/tmp/fm_export --name=fashion_mnist
  python -m benchmarks.serving --workdir=RUN   # exports RUN first
"""

import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import httpx
import numpy as np

from benchmarks import common
from mexd import evaluation
from mexd import exporter

FLAGS = flags.FLAGS
flags.DEFINE_string("export", "", "An export folder (python -m mexd.export).")
flags.DEFINE_string("workdir", "", "A calibrated run to export and serve "
                    "(also the source of the test images and labels).")
flags.DEFINE_list("concurrency", ["1", "8", "32"], "Concurrent clients.")
flags.DEFINE_integer("requests", 2000, "Answers per (mode, concurrency).")
flags.DEFINE_float("max_seconds", 60.0, "Time limit per (mode, "
                   "concurrency).")
flags.DEFINE_integer("max_batch", 64, "The server's --max_batch.")
flags.DEFINE_float("max_wait_ms", 0.0, "The server's --max_wait_ms.")
flags.DEFINE_string("name", "digits", "Results: serving_<name>.json.")
common.define_flags("serving")
flags.adopt_module_key_flags(common)

NPY = {"content-type": "application/x-npy"}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_server(folder: str, mode: str, max_batch: int, max_wait_ms: float):
  """(process, base URL) of a started `python -m mexd.serve`."""
  port = _free_port()
  proc = subprocess.Popen(
      [sys.executable, "-m", "mexd.serve", folder, f"--port={port}",
       f"--mode={mode}", f"--max_batch={max_batch}",
       f"--max_wait_ms={max_wait_ms}"], stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)
  url = f"http://127.0.0.1:{port}"
  deadline = time.time() + 300
  while time.time() < deadline:
    if proc.poll() is not None:
      raise RuntimeError(f"mexd.serve exited: {proc.stderr.read()}")
    try:
      if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
        return proc, url
    except httpx.HTTPError:
      time.sleep(0.5)
  proc.kill()
  raise RuntimeError("mexd.serve did not start in 300 s")


async def load(url: str, bodies, concurrency: int, requests: int,
               max_seconds: float):
  """Closed-loop load; returns (answers, latencies s, wall s)."""
  answers, lat = [], []
  t_end = time.perf_counter() + max_seconds
  count = iter(range(requests))
  limits = httpx.Limits(max_connections=concurrency,
                        max_keepalive_connections=concurrency)
  async with httpx.AsyncClient(base_url=url, timeout=60,
                               limits=limits) as client:

    async def worker():
      for i in count:
        if time.perf_counter() > t_end:
          return
        j = i % len(bodies)
        t0 = time.perf_counter()
        r = await client.post("/predict", content=bodies[j], headers=NPY)
        lat.append(time.perf_counter() - t0)
        r.raise_for_status()
        answers.append((j, r.json()))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
  return answers, np.asarray(lat), wall


def measure(folder, images, labels, mode, concurrencies):
  """Rows of one server mode."""
  bodies = []
  for x in images:
    buf = io.BytesIO()
    np.save(buf, x)
    bodies.append(buf.getvalue())
  proc, url = start_server(folder, mode, FLAGS.max_batch, FLAGS.max_wait_ms)
  rows = []
  try:
    asyncio.run(load(url, bodies, 4, 200, 30))  # Warm the connections up.
    for c in concurrencies:
      before = httpx.get(f"{url}/metrics").json()
      answers, lat, wall = asyncio.run(load(
          url, bodies, c, FLAGS.requests, FLAGS.max_seconds))
      after = httpx.get(f"{url}/metrics").json()
      batches = after["batches"] - before["batches"]
      got = np.array([a["label"] for _, a in answers])
      want = labels[[j for j, _ in answers]]
      rows.append({
          "mode": mode, "concurrency": c, "answers": len(answers),
          "throughput": len(answers) / wall,
          **{f"p{q}_ms": 1e3 * float(np.percentile(lat, q))
             for q in (50, 90, 99)},
          "mean_batch": (after["batched"] - before["batched"]) / max(
              1, batches),
          "mean_macs": float(np.mean([a["macs"] for _, a in answers])),
          "accuracy": float(np.mean(got == want)),
          "exit_fractions": np.round(np.bincount(
              [a["exit"] for _, a in answers], minlength=len(
                  after["exits"])) / len(answers), 3).tolist()})
      print(common.format_table(rows[-1:], list(rows[-1])), flush=True)
  finally:
    proc.terminate()
    proc.wait(30)
  return rows


def main(argv):
  del argv
  common.setup_from_flags()
  env = common.environment()
  common.print_device(env)
  if not FLAGS.workdir:
    raise app.UsageError("--workdir (a calibrated run) is needed for the "
                         "test images and labels")
  run = evaluation.load_run(FLAGS.workdir)
  with tempfile.TemporaryDirectory() as tmp:
    folder = FLAGS.export or os.path.join(tmp, "export")
    if not FLAGS.export:
      exporter.export_run(FLAGS.workdir, folder)
    conc = [int(c) for c in FLAGS.concurrency]
    rows = []
    for mode in ("early_exit", "one_pass"):
      rows += measure(folder, run.test.images, run.test.labels, mode, conc)
  for c in conc:
    ee, op = (next(r for r in rows if r["mode"] == m and r["concurrency"]
                   == c) for m in ("early_exit", "one_pass"))
    ee["p50_vs_one_pass"] = op["p50_ms"] / ee["p50_ms"]
    ee["throughput_vs_one_pass"] = ee["throughput"] / op["throughput"]
  print(f"\nload test (load {common.loadavg()})")
  print(common.format_table(rows, (
      "mode", "concurrency", "answers", "throughput", "p50_ms", "p90_ms",
      "p99_ms", "mean_batch", "mean_macs", "accuracy", "p50_vs_one_pass",
      "throughput_vs_one_pass"), {
          "throughput": ".0f", "p50_ms": ".2f", "p90_ms": ".2f",
          "p99_ms": ".2f", "mean_batch": ".1f", "mean_macs": ".3g",
          "accuracy": ".4f", "p50_vs_one_pass": ".2f",
          "throughput_vs_one_pass": ".2f"}))
  FLAGS.out = FLAGS.out.replace("speed_serving", f"serving_{FLAGS.name}")
  common.write_record("serving", rows, env, workdir=FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
