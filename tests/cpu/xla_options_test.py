"""mexd.cpu.xla_options: per-program XLA:CPU options and their opt-outs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mexd.cpu import xla_options


def _conv(x, k):
  return jax.lax.conv_general_dilated(
      x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO",
                                                           "NHWC"))


def test_options_per_backend_and_opt_outs(monkeypatch):
  monkeypatch.delenv("MEXD_CPU_FAST", raising=False)
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  assert xla_options.compiler_options("cpu") == xla_options.CPU_OPTIONS
  assert xla_options.compiler_options("gpu") == {}
  assert xla_options.compiler_options("tpu") == {}
  got = xla_options.compiler_options("cpu")
  got["x"] = "y"  # A fresh dict each call: callers cannot change the table.
  assert "x" not in xla_options.compiler_options("cpu")
  assert xla_options.compiler_options("cpu", enabled=False) == {}
  monkeypatch.setenv("MEXD_CPU_FAST", "0")  # The switch of mexd.cpu.
  assert xla_options.compiler_options("cpu") == {}
  assert xla_options.compiler_options("cpu", enabled=True) == (
      xla_options.CPU_OPTIONS)
  monkeypatch.delenv("MEXD_CPU_FAST")
  monkeypatch.setenv("XLA_FLAGS",
                     "--xla_cpu_experimental_ynn_fusion_type=")  # user's own
  assert xla_options.compiler_options("cpu") == {}


def test_jit_same_numbers_and_no_ynnpack_convolution(monkeypatch):
  monkeypatch.delenv("MEXD_CPU_FAST", raising=False)
  monkeypatch.setenv("XLA_FLAGS", "")
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 16)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 16, 8)), jnp.float32)
  ours = xla_options.jit(_conv)
  plain = jax.jit(_conv)
  np.testing.assert_allclose(ours(x, k), plain(x, k), rtol=1e-5, atol=1e-4)
  # The float64 NumPy reference of the same correlation.
  x64, k64 = np.asarray(x, np.float64), np.asarray(k, np.float64)
  xp = np.pad(x64, ((0, 0), (1, 1), (1, 1), (0, 0)))
  ref = sum(np.einsum("bhwi,io->bhwo", xp[:, a:a + 8, c:c + 8], k64[a, c])
            for a in range(3) for c in range(3))
  np.testing.assert_allclose(ours(x, k), ref, rtol=1e-4, atol=1e-4)
  text = ours.lower(x, k).compile().as_text()
  assert "ynn_fusion" not in text  # The convolution runs on XLA's emitter.
  # Where this jaxlib sends convolutions to YNNPACK by default, the options
  # are what changed the program.
  if "ynn_fusion" in plain.lower(x, k).compile().as_text():
    assert xla_options.compiler_options()


def test_unsupported_option_falls_back(monkeypatch):
  monkeypatch.delenv("MEXD_CPU_FAST", raising=False)
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setattr(xla_options, "CPU_OPTIONS",
                      {"xla_cpu_no_such_option_for_mexd": "1"})
  xla_options._supported.cache_clear()  # pylint: disable=protected-access
  try:
    assert xla_options.compiler_options("cpu") == {}
    f = xla_options.jit(lambda a: a * 2)  # plain jax.jit: still works
    assert float(f(jnp.float32(3))) == pytest.approx(6.0)
  finally:
    xla_options._supported.cache_clear()  # pylint: disable=protected-access
