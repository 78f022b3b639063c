"""The batching HTTP server of an exported cascade (Starlette + uvicorn).

  python -m mexd.serve export/digits --port=8000
  curl -s -H 'Content-Type: image/png' --data-binary @digit.png \
      localhost:8000/predict
  {"label": 3, "class_name": "3", "exit": 0, "macs": 523141.0, ...}

Endpoints:
  POST /predict  one image (`mexd.deploy.decode`: .npy or an image file);
                 answers {"label", "class_name", "exit", "macs",
                 "latency_ms" (arrival to answer, in the server),
                 "batch_size"}; an early exit is answered when its stage
                 ends (`mexd.deploy.batcher`)
  GET /healthz   {"status": "ok"} (503 when the batcher has stopped)
  GET /metrics   requests, answers per exit, rejections per status, mean
                 batch, latency percentiles of the last 10,000 answers
  GET /info      the cascade: exits, classes, image shape, policy, MACs

A bad request gets a 4xx JSON {"error": "..."} (decode's statuses; 413 for a
body over `max_body_bytes`, checked before it is read whole; 503 when the
queue is full); nothing a client sends stops the server.

Needs `pip install mexd[serve]` (starlette, uvicorn, pillow).
"""

import contextlib
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mexd.deploy import batcher as batcher_lib
from mexd.deploy import decode


async def _body(request: Request, limit: int) -> bytes:
  """The request body, refused (413) as soon as it exceeds `limit` bytes."""
  size = request.headers.get("content-length")
  if size is not None:
    try:
      if int(size) > limit:
        raise decode.BadRequest(413, f"a body of {int(size)} bytes is over "
                                f"the limit of {limit} bytes")
    except ValueError:
      raise decode.BadRequest(400, f"Content-Length {size!r} is not a "
                              "number") from None
  chunks, total = [], 0
  async for chunk in request.stream():
    total += len(chunk)
    if total > limit:
      raise decode.BadRequest(413, f"the body is over the limit of {limit} "
                              "bytes")
    chunks.append(chunk)
  return b"".join(chunks)


def make_app(cascade, *, max_batch: int = 64, max_wait_ms: float = 0.0,
             max_queue: int = 4096, mode: str = "early_exit",
             max_body_bytes: int = 8 << 20) -> Starlette:
  """The ASGI app serving `cascade` (a `mexd.deploy.Cascade`).

  Args:
    cascade: the loaded export.
    max_batch, max_wait_ms, max_queue, mode: the batcher's
      (`mexd.deploy.batcher.Batcher`).
    max_body_bytes: larger request bodies are refused with 413.

  Returns:
    a Starlette app; `app.state.batcher` is its batcher (started with the
    app's lifespan).
  """
  batcher = batcher_lib.Batcher(cascade, max_batch=max_batch,
                                max_wait_ms=max_wait_ms, max_queue=max_queue,
                                mode=mode)
  manifest = cascade.manifest
  info = cascade.describe()

  def error(status: int, message: str) -> JSONResponse:
    batcher.metrics.rejected[status] += 1
    return JSONResponse({"error": message}, status_code=status)

  async def predict(request: Request):
    batcher.metrics.requests += 1
    try:
      body = await _body(request, max_body_bytes)
      image = decode.decode(body, request.headers.get("content-type", ""),
                            manifest)
      return JSONResponse(await batcher.submit(image))
    except decode.BadRequest as e:
      return error(e.status, e.message)
    except batcher_lib.QueueFull as e:
      return error(503, str(e))
    except ClientDisconnect:
      return error(499, "the client went away")
    except Exception as e:  # pylint: disable=broad-except
      return error(500, f"{type(e).__name__}: {e}")

  async def healthz(_):
    ok = batcher.running
    return JSONResponse({"status": "ok" if ok else "stopped",
                         "mode": batcher.mode},
                        status_code=200 if ok else 503)

  async def metrics(_):
    return JSONResponse(batcher.metrics.summary(batcher.queued()))

  async def describe(_):
    return JSONResponse({**info, "mode": batcher.mode,
                         "max_batch": batcher.max_batch,
                         "max_wait_ms": 1000.0 * batcher.max_wait})

  @contextlib.asynccontextmanager
  async def lifespan(_):
    await batcher.start()
    try:
      yield
    finally:
      await batcher.stop()

  app = Starlette(routes=[
      Route("/predict", predict, methods=["POST"]),
      Route("/healthz", healthz), Route("/metrics", metrics),
      Route("/info", describe)], lifespan=lifespan)
  app.state.batcher = batcher
  return app


def serve(folder: str, *, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "warning", **kwargs: Any) -> None:
  """Loads `folder` and serves it with uvicorn until interrupted."""
  import uvicorn  # pylint: disable=g-import-not-at-top
  from mexd import deploy  # pylint: disable=g-import-not-at-top
  cascade = deploy.load(folder)
  cascade.warmup(kwargs.get("max_batch", 64),
                 one_pass=kwargs.get("mode") == "one_pass")
  app = make_app(cascade, **kwargs)
  uvicorn.run(app, host=host, port=port, log_level=log_level,
              access_log=False)

