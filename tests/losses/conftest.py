"""Fixtures shared by the loss tests."""

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
  """Compile time dominates these tiny programs: skip most XLA passes.

  Module scope: the flag is set for each test module in this folder and
  restored after it.
  """
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)
