"""Device mesh and shardings: data parallel over every device of every host.

Parameters and optimizer state are replicated (`P()`); batches are split
along their leading axis over the "data" mesh axis (`P("data")`). Under
`jax.jit` the batch-norm statistics and the loss are then reduced over the
global batch; XLA inserts the collectives.
"""

from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mexd import errors


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
  """A 1-D mesh with axis "data" over the first `num_devices` devices."""
  devices = jax.devices()
  if num_devices is not None:
    if not 0 < num_devices <= len(devices):
      raise errors.InputError(f"num_devices={num_devices} but {len(devices)} "
                              "devices are available")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the "data" axis."""
  return NamedSharding(mesh, P("data"))


def check_batch_size(batch_size: int, mesh: Mesh):
  """Raises a clear error unless the global batch splits evenly."""
  n = mesh.devices.size
  if batch_size % n:
    raise errors.InputError(
        f"global batch size {batch_size} is not divisible by the {n} devices "
        f"of the mesh; use a multiple of {n} (e.g. "
        f"{max(n, batch_size - batch_size % n)})")


def put_replicated(tree, mesh: Mesh):
  """Host arrays (the same on every process) -> arrays replicated on `mesh`.

  Each process fills only its own devices from its host copy, so this works
  on several hosts, where `jax.device_put` of a host array to devices of
  other processes is not allowed.
  """
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree.map(put, tree)
