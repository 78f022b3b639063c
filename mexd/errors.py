"""The project's error types, and one-line error reporting for the CLIs.

Two kinds of failure, told apart by type:

* `InputError` (a `ValueError`): bad input from the user: a config value, a
  flag, a data file, a work directory, an image. The message names the
  problem and the fix. Its subclasses: `mexd.data.DataError` (and
  `DataNotFoundError`, also a `FileNotFoundError`), `mexd.workdir.WorkdirError`,
  `mexd.lock.WorkdirLockedError`, `mexd.checkpoint.StructureMismatchError`.
* anything else, a plain `ValueError` included: a bug (in mexd, in a library
  it calls, or in the caller's code). It keeps its traceback.

`one_line_errors` is the handler of the command-line tools (`mexd.train`,
`mexd.evaluate`): an `InputError` is printed as one line,
`prog: error: message`, with exit status 2; so is the deliberate stop of
training at a non-finite loss (`FloatingPointError`, config.nonfinite="stop").
A work directory that cannot be written (`WorkdirWriteError`: full,
read-only) is one line naming the path and the cause, status 1. Every other
exception propagates with its traceback. Set MEXD_TRACEBACK=1 to see the
traceback of the one-line errors too.

This module imports nothing from mexd, so that every part of the package
(losses, models, data included) can raise these types.
"""

import contextlib
import os
import sys


class InputError(ValueError):
  """Bad input from the user: a config value, a flag, a data file, a work
  directory, an image; the message names the problem and the fix."""


class WorkdirWriteError(OSError):
  """The work directory cannot be written (read-only, full, a file...)."""

  def __str__(self):
    return self.strerror


@contextlib.contextmanager
def one_line_errors(prog: str):
  """Turns a bad input into `prog: error: message` and an exit status.

  InputError and FloatingPointError (training stopped at a non-finite loss)
  exit with status 2, WorkdirWriteError (a fault of the machine, e.g. a full
  disk) with status 1; anything else propagates with its traceback.
  """
  try:
    yield
  except (InputError, FloatingPointError, WorkdirWriteError) as e:
    if os.environ.get("MEXD_TRACEBACK"):
      raise
    msg = " ".join(str(e).split())
    print(f"{prog}: error: {msg}", file=sys.stderr)
    raise SystemExit(1 if isinstance(e, WorkdirWriteError) else 2) from None
