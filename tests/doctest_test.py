"""Runs the `Examples:` of every mexd docstring (doctest), in the test suite.

Every module of the package whose source holds a `>>>` example is imported
and its examples run; a failing example fails its test.
"""

import doctest
import importlib
import os
import pkgutil

import pytest

import mexd


def _modules_with_examples():
  root = os.path.dirname(mexd.__file__)
  out = []
  for info in pkgutil.walk_packages([root], prefix="mexd."):
    rel = info.name.split(".")[1:]
    path = os.path.join(root, *rel)
    path = (os.path.join(path, "__init__.py") if info.ispkg
            else path + ".py")
    with open(path) as f:
      if ">>>" in f.read():
        out.append(info.name)
  return sorted(out)


MODULES = _modules_with_examples()


def test_examples_are_found():
  # The losses and the config parser document themselves with examples.
  assert "mexd.config_lib" in MODULES and "mexd.losses.baselines" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS
                           | doctest.NORMALIZE_WHITESPACE, verbose=False)
  assert result.attempted > 0, f"{name}: no example ran"
  assert result.failed == 0, f"{name}: {result.failed} example(s) failed"
