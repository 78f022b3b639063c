"""The batching server on loopback: answers, early answers, bad requests."""

import asyncio
import contextlib
import io
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image
import uvicorn

from mexd.deploy import runtime
from mexd.deploy import server

NPY = {"content-type": "application/x-npy"}


def _npy(x) -> bytes:
  buf = io.BytesIO()
  np.save(buf, x)
  return buf.getvalue()


def _png(x, fmt="PNG") -> bytes:
  buf = io.BytesIO()
  Image.fromarray(x).save(buf, fmt)
  return buf.getvalue()


@contextlib.contextmanager
def serving(app):
  """Runs `app` with uvicorn in a thread; yields its base URL."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                      log_level="warning"))
  thread = threading.Thread(target=srv.run, daemon=True)
  thread.start()
  deadline = time.time() + 60
  while not srv.started:
    assert time.time() < deadline and thread.is_alive(), "no server"
    time.sleep(0.05)
  try:
    yield f"http://127.0.0.1:{port}"
  finally:
    srv.should_exit = True
    thread.join(30)


async def _post_all(url, bodies, headers=NPY):
  """Posts every body at once; returns (json answers, completion times)."""
  async with httpx.AsyncClient(base_url=url, timeout=60) as client:
    async def one(body):
      r = await client.post("/predict", content=body, headers=headers)
      return r, time.perf_counter()
    out = await asyncio.gather(*(one(b) for b in bodies))
  for r, _ in out:
    assert r.status_code == 200, r.text
  return [r.json() for r, _ in out], np.array([t for _, t in out])


@pytest.fixture(scope="module")
def cascade(mixed):
  c = runtime.Cascade(mixed)
  c.warmup(64)
  return c


def test_concurrent_requests_get_the_runtime_answers(trained, cascade):
  images = trained[1].test.images[:48]
  labels, exits = cascade.predict(images)
  app = server.make_app(cascade, max_batch=16, max_wait_ms=20)
  with serving(app) as url:
    answers, _ = asyncio.run(_post_all(url, [_npy(x) for x in images]))
    metrics = httpx.get(f"{url}/metrics").json()
  np.testing.assert_array_equal([a["label"] for a in answers], labels)
  np.testing.assert_array_equal([a["exit"] for a in answers], exits)
  np.testing.assert_allclose([a["macs"] for a in answers],
                             cascade.exit_macs[exits])
  assert metrics["answered"] == 48 and sum(metrics["exits"]) == 48
  assert metrics["exits"] == np.bincount(exits, minlength=3).tolist()
  assert metrics["batches"] >= 3 and metrics["mean_batch"] <= 16
  assert metrics["latency_ms"]["p50"] > 0


class SlowLastStages:
  """A cascade whose stages after the first take 0.5 s longer."""

  def __init__(self, cascade):
    self._c = cascade

  def __getattr__(self, name):
    return getattr(self._c, name)

  def stages(self, images):
    for out in self._c.stages(images):
      yield out
      time.sleep(0.5)  # Runs after the rows of `out` were handed over.


def test_early_exits_are_answered_before_the_batch_ends(trained, cascade):
  images = trained[1].test.images[:24]
  _, exits = cascade.predict(images)
  assert (exits == 0).any() and (exits > 0).any()
  app = server.make_app(SlowLastStages(cascade), max_batch=24,
                        max_wait_ms=2000)
  with serving(app) as url:
    answers, done = asyncio.run(_post_all(url, [_npy(x) for x in images]))
  assert {a["batch_size"] for a in answers} == {24}  # One batch.
  got = np.array([a["exit"] for a in answers])
  np.testing.assert_array_equal(got, exits)
  # Every early answer reached the client before the later stages ended.
  assert done[got == 0].max() + 0.3 < done[got > 0].min()
  lat = np.array([a["latency_ms"] for a in answers])
  assert lat[got == 0].max() + 300 < lat[got > 0].min()


def test_one_pass_mode_answers_at_the_final_exit(trained, cascade):
  images = trained[1].test.images[:10]
  want = np.argmax(cascade.logits(images)[-1], -1)
  app = server.make_app(cascade, mode="one_pass", max_wait_ms=5)
  with serving(app) as url:
    answers, _ = asyncio.run(_post_all(url, [_npy(x) for x in images]))
  assert {a["exit"] for a in answers} == {2}
  np.testing.assert_array_equal([a["label"] for a in answers], want)


def _bad_requests():
  """(name, method, path, body, headers, status) of 22 bad requests."""
  ok = np.zeros((8, 8, 1), np.uint8)
  png = _png(ok[..., 0])
  big = Image.new("L", (5000, 4000))
  buf = io.BytesIO()
  big.save(buf, "PNG")
  obj = io.BytesIO()
  np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
  return [
      ("empty body", "POST", "/predict", b"", NPY, 400),
      ("no content type", "POST", "/predict", _npy(ok), {}, 415),
      ("text/plain", "POST", "/predict", b"1 2 3",
       {"content-type": "text/plain"}, 415),
      ("json", "POST", "/predict", b'{"image": []}',
       {"content-type": "application/json"}, 415),
      ("not an image", "POST", "/predict", b"hello",
       {"content-type": "image/png"}, 400),
      ("truncated png", "POST", "/predict", png[:30],
       {"content-type": "image/png"}, 400),
      ("png of another size", "POST", "/predict",
       _png(np.zeros((9, 8), np.uint8)), {"content-type": "image/png"}, 422),
      ("jpeg of another size", "POST", "/predict",
       _png(np.zeros((16, 16), np.uint8), "JPEG"),
       {"content-type": "image/jpeg"}, 422),
      ("huge image", "POST", "/predict", buf.getvalue(),
       {"content-type": "image/png"}, 413),
      ("npy of another shape", "POST", "/predict",
       _npy(np.zeros((8, 8, 3), np.uint8)), NPY, 422),
      ("npy batch of two", "POST", "/predict",
       _npy(np.zeros((2, 8, 8, 1), np.uint8)), NPY, 422),
      ("npy int64", "POST", "/predict", _npy(ok.astype(np.int64)), NPY, 422),
      ("npy bool", "POST", "/predict", _npy(ok.astype(bool)), NPY, 422),
      ("npy complex", "POST", "/predict", _npy(ok.astype(np.complex64)),
       NPY, 422),
      ("npy NaN", "POST", "/predict",
       _npy(np.full((8, 8, 1), np.nan, np.float32)), NPY, 422),
      ("raw pixels as floats", "POST", "/predict",
       _npy(np.full((8, 8, 1), 255.0, np.float32)), NPY, 422),
      ("npy header only", "POST", "/predict", b"\x93NUMPY", NPY, 400),
      ("not npy", "POST", "/predict", b"garbage", NPY, 400),
      ("pickled object array", "POST", "/predict", obj.getvalue(), NPY, 400),
      ("body over the limit", "POST", "/predict", b"\x93NUMPY" + bytes(5000),
       NPY, 413),
      ("GET /predict", "GET", "/predict", None, {}, 405),
      ("unknown path", "POST", "/nope", b"x", NPY, 404),
  ]


def test_bad_requests_get_4xx_and_the_server_stays_up(trained, cascade):
  bad = _bad_requests()
  assert len(bad) >= 20
  app = server.make_app(cascade, max_body_bytes=4096, max_wait_ms=1)
  good = _npy(trained[1].test.images[0])
  with serving(app) as url, httpx.Client(base_url=url, timeout=60) as c:
    for name, method, path, body, headers, status in bad:
      r = c.request(method, path, content=body, headers=headers)
      assert r.status_code == status, (name, r.status_code, r.text)
      if path == "/predict" and method == "POST":
        msg = r.json()["error"]
        assert msg and "\n" not in msg and "Traceback" not in msg, name
      assert c.post("/predict", content=good, headers=NPY).status_code == 200
    assert c.get("/healthz").json()["status"] == "ok"
    m = c.get("/metrics").json()
  rejected = sum(m["rejected"].values())
  assert rejected == sum(1 for b in bad if b[2] == "/predict"
                         and b[1] == "POST")
  assert m["answered"] == len(bad)


def test_the_serve_command(trained, exported):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  image = trained[1].test.images[3]
  want = runtime.Cascade(exported).predict_one(image)
  proc = subprocess.Popen(
      [sys.executable, "-m", "mexd.serve", exported, f"--port={port}",
       "--max_batch=8"], stderr=subprocess.PIPE, text=True)
  try:
    url, deadline = f"http://127.0.0.1:{port}", time.time() + 180
    while True:
      assert proc.poll() is None, proc.stderr.read()
      assert time.time() < deadline, "mexd.serve did not start"
      try:
        if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
          break
      except httpx.HTTPError:
        time.sleep(0.5)
    r = httpx.post(f"{url}/predict", content=_npy(image), headers=NPY)
    assert (r.json()["label"], r.json()["exit"]) == want
    info = httpx.get(f"{url}/info").json()
    assert info["max_batch"] == 8 and info["num_exits"] == 3
  finally:
    proc.terminate()
    proc.wait(30)
  bad = subprocess.run([sys.executable, "-m", "mexd.serve", "/nonexistent"],
                       capture_output=True, text=True, check=False)
  assert bad.returncode == 2
  lines = bad.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("mexd.serve: error: "), (
      bad.stderr)
