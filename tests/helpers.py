"""Shared test helpers."""

import numpy as np

from mexd.configs import digits


def digits_config(**overrides):
  """The digits config on one device, no progress bar, with `overrides`."""
  c = digits.get_config()
  c.progress_bar = False
  c.num_devices = 1
  for k, v in overrides.items():
    c[k] = v
  return c


def assert_close_norm(actual, expected, name="", rtol=1e-2):
  """||actual - expected|| <= rtol ||expected|| (float64 norms, per array).

  For results that equal each other up to float32 summation order (device
  splits, processes, CPU kernels): element-wise tolerances fail on the rare
  entries that batch norm amplifies (a channel of near-zero variance), while
  a real difference, such as gradients summed instead of averaged over
  devices, changes the whole array by a multiple of itself.
  """
  a = np.asarray(actual, np.float64)
  e = np.asarray(expected, np.float64)
  assert a.shape == e.shape, (name, a.shape, e.shape)
  err, ref = np.linalg.norm(a - e), np.linalg.norm(e)
  assert err <= rtol * ref + 1e-9, (
      f"{name}: |actual - expected| = {err:.3g} > {rtol} x |expected| = "
      f"{rtol * ref:.3g}")
