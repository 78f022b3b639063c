"""Serves an exported cascade over HTTP: `python -m mexd.serve DIR`.

  python -m mexd.export --workdir=runs/digits --out=export/digits
  python -m mexd.serve export/digits --port=8000 --max_batch=64 \
      --max_wait_ms=0
  curl -s -H 'Content-Type: application/x-npy' --data-binary @image.npy \
      localhost:8000/predict

Requests are queued and batched (at most --max_batch; a free worker takes
the requests waiting, after --max_wait_ms more if > 0); the cascade runs stage by
stage and a request that leaves at an early exit is answered as soon as its
stage ends. Endpoints: POST /predict, GET /healthz, /metrics, /info
(`mexd.deploy.server`). --mode=one_pass serves the one-pass network instead
(every answer from the final exit), the baseline of benchmarks/serving.py.

Needs `pip install mexd[serve]`.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from mexd import errors

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
  flags.DEFINE_integer("port", 8000, "Port to listen on.")
  flags.DEFINE_integer("max_batch", 64, "Most requests per batch.",
                       lower_bound=1)
  flags.DEFINE_float("max_wait_ms", 0.0, "How long a batch waits for more "
                     "requests after its first (ms; 0: a free worker takes "
                     "the requests waiting and runs).", lower_bound=0)
  flags.DEFINE_integer("max_queue", 4096, "Waiting requests beyond this are "
                       "answered 503.", lower_bound=1)
  flags.DEFINE_enum("mode", "early_exit", ["early_exit", "one_pass"],
                    "Stage by stage with early answers, or the one-pass "
                    "network.")
  flags.DEFINE_integer("max_body_bytes", 8 << 20, "Larger request bodies "
                       "are answered 413.", lower_bound=1)
  flags.DEFINE_string("log_level", "warning", "uvicorn's log level.")


def main(argv):
  if len(argv) != 2:
    print("mexd.serve: error: give the export folder: python -m mexd.serve "
          "DIR [--port=8000]", file=sys.stderr)
    raise SystemExit(2)
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    from mexd.deploy import server  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    print(f"mexd.serve: error: {e}; pip install 'mexd[serve]'",
          file=sys.stderr)
    raise SystemExit(2) from None
  with errors.one_line_errors("mexd.serve"):
    server.serve(argv[1], host=FLAGS.host, port=FLAGS.port,
                 log_level=FLAGS.log_level, max_batch=FLAGS.max_batch,
                 max_wait_ms=FLAGS.max_wait_ms, max_queue=FLAGS.max_queue,
                 mode=FLAGS.mode, max_body_bytes=FLAGS.max_body_bytes)


if __name__ == "__main__":
  define_flags()
  app.run(main)
