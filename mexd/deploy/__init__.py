"""Deployment of a trained cascade: the exported folder and its runtime.

  python -m mexd.export --workdir=RUN --out=DIR   # writes DIR (artifact)
  cascade = mexd.deploy.load(DIR)                  # jax + NumPy only
  labels, exits = cascade.predict(uint8_images)    # real early exit
  python -m mexd.serve DIR --port=8000             # the batching server

  artifact  the folder's files, manifest, hashes and version checks
  runtime   `Cascade`: loads DIR and runs stage k only on the rows still in
  checks    input checks at the runtime's boundary
  buckets   padded batch sizes (shared with mexd.early_exit)
  server    the ASGI batching server (`pip install mexd[serve]`; imported
            only by mexd.serve)

Importing this package imports jax and NumPy, never the model code, flax,
optax or the configs: a deployment needs the folder, jax and mexd's wheel,
not the run it came from. See docs/deployment.md.
"""

from mexd.deploy.artifact import ExportError
from mexd.deploy.runtime import Cascade
from mexd.deploy.runtime import CascadeResult
from mexd.deploy.runtime import load
from mexd.deploy.runtime import StageExit
