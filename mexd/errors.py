"""Command-line error reporting: one clear line for a bad input, no traceback.

The library raises `ValueError` (and its subclasses such as
`mexd.data.DataError` or `mexd.workdir.WorkdirError`) or `FileNotFoundError`
for bad input, always with a message that names the problem and the fix. The
command-line tools print that message as one line and exit with status 2.
Set MEXD_TRACEBACK=1 to see the full traceback instead.
"""

import contextlib
import os
import sys


@contextlib.contextmanager
def one_line_errors(prog: str):
  """Turns bad-input exceptions into `prog: error: message` and exit 2."""
  try:
    yield
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    if os.environ.get("MEXD_TRACEBACK"):
      raise
    msg = " ".join(str(e).split())
    print(f"{prog}: error: {msg}", file=sys.stderr)
    raise SystemExit(2) from None
