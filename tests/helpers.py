"""Shared test helpers."""

from mexd.configs import digits


def digits_config(**overrides):
  """The digits config on one device, no progress bar, with `overrides`."""
  c = digits.get_config()
  c.progress_bar = False
  c.num_devices = 1
  for k, v in overrides.items():
    c[k] = v
  return c
