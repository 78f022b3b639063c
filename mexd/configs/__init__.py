"""The training recipes, installed with the package.

Each module here defines `get_config(arg=None)` (ml_collections). Pick one
by name or by path:

  python -m mexd.train --config=cifar100:eed          # any install
  python -m mexd.train --config=configs/cifar100.py:eed   # in a checkout

`resolve` turns the name form into the file path that ml_collections'
`--config` flag loads; `load(name, arg)` builds a recipe in Python.
"""

import importlib
import os
from typing import List, Optional

import ml_collections

from mexd import errors

_DIR = os.path.dirname(os.path.abspath(__file__))


def names() -> List[str]:
  """Sorted names of the installed recipes (e.g. "cifar100", "digits")."""
  return sorted(f[:-3] for f in os.listdir(_DIR)
                if f.endswith(".py") and not f.startswith("_"))


def path(name: str) -> str:
  """File path of the installed recipe `name`.

  Raises:
    InputError: no such recipe (the message lists the valid names).
  """
  if name not in names():
    raise errors.InputError(f"unknown recipe {name!r}; installed recipes: "
                            f"{', '.join(names())}")
  return os.path.join(_DIR, f"{name}.py")


def load(name: str, arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the installed recipe `name`."""
  path(name)  # Validates the name.
  return importlib.import_module(f"mexd.configs.{name}").get_config(arg)


def resolve(spec: str) -> str:
  """Maps a --config value to a loadable `path.py[:arg]`.

  * "NAME[:arg]" with NAME an installed recipe -> its installed file;
  * "configs/NAME.py[:arg]" (the checkout form of the README) where no such
    file exists relative to the working directory -> the installed recipe
    NAME, so the documented commands also work after `pip install`;
  * anything else is returned unchanged (a path to the user's own file).
  """
  file, sep, arg = spec.partition(":")
  head, base = os.path.split(file)
  if not head and not file.endswith(".py") and file in names():
    return path(file) + sep + arg
  if (os.path.normpath(head) == "configs" and base.endswith(".py")
      and not os.path.exists(file) and base[:-3] in names()):
    return path(base[:-3]) + sep + arg
  return spec


def resolve_argv(argv: List[str], flag: str = "config") -> List[str]:
  """`argv` with the value of `--<flag>` passed through `resolve`.

  Handles `--config=V` and `--config V`; for `app.run(main,
  flags_parser=...)` before absl parses the flags.
  """
  out, i = list(argv), 1
  while i < len(out):
    a = out[i]
    if a == "--":
      break
    if a.startswith(f"--{flag}="):
      out[i] = f"--{flag}=" + resolve(a.split("=", 1)[1])
    elif a == f"--{flag}" and i + 1 < len(out):
      out[i + 1] = resolve(out[i + 1])
      i += 1
    i += 1
  return out
