"""Command-line error reporting: one clear line for a bad input, no traceback.

The library raises `ValueError` (and its subclasses such as
`mexd.data.DataError` or `mexd.workdir.WorkdirError`) or `FileNotFoundError`
for bad input, always with a message that names the problem and the fix. The
command-line tools print that message as one line and exit with status 2; a
work directory that cannot be written (`mexd.paths.WorkdirWriteError`: full,
read-only) is one line naming the path and the cause, status 1.
Set MEXD_TRACEBACK=1 to see the full traceback instead.
"""

import contextlib
import os
import sys

from mexd import paths


@contextlib.contextmanager
def one_line_errors(prog: str):
  """Turns bad-input exceptions into `prog: error: message` and exit 2."""
  try:
    yield
  except (ValueError, FileNotFoundError, FloatingPointError,
          paths.WorkdirWriteError) as e:
    if os.environ.get("MEXD_TRACEBACK"):
      raise
    msg = " ".join(str(e).split())
    print(f"{prog}: error: {msg}", file=sys.stderr)
    # A fault of the machine (a full disk) is status 1, bad input 2.
    raise SystemExit(1 if isinstance(e, paths.WorkdirWriteError) else 2
                     ) from None
