"""Stopping a training run cleanly on SIGTERM (preemption) or Ctrl-C.

`Preempted` records the signal; the loop asks `stop_reason` after every step
whether to stop, checkpoints, and exits with the signal's status. On several
processes every one must stop (and save, a collective) at the same step: they
agree at logging steps.
"""

import signal
import sys
from typing import Optional

from absl import logging
import jax
import numpy as np


class Preempted:
  """Records SIGTERM and SIGINT (Ctrl-C) so the loop can checkpoint and exit
  cleanly (status 143 after SIGTERM, 130 after SIGINT)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.flag = False
    self.signum = None
    self._old = {}

  def __enter__(self):
    for sig in self.SIGNALS:
      try:
        self._old[sig] = signal.signal(sig, self._handler)
      except ValueError:  # Not the main thread.
        pass
    return self

  def _handler(self, signum, frame):
    del frame
    logging.warning("%s: saving a checkpoint and exiting.",
                    signal.Signals(signum).name)
    self.flag = True
    self.signum = self.signum or signum

  @property
  def name(self) -> str:
    return signal.Signals(self.signum or signal.SIGTERM).name

  @property
  def exit_status(self) -> int:
    return 128 + int(self.signum or signal.SIGTERM)

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def resume_command() -> str:
  """The command line that resumes this run: the program that is running
  (`python -m <module>` or `python <script>`; in a worker process of a
  study, the study's) with the same flags."""
  import shlex  # pylint: disable=g-import-not-at-top
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  script = sys.argv[0] if sys.argv else ""
  if spec is not None and spec.name:  # python -m pkg runs pkg.__main__.
    program = "-m " + spec.name.removesuffix(".__main__")
  elif script and script != "-c":
    program = shlex.quote(script)
  else:  # `python -c` (tests, notebooks): the training command line.
    program = "-m mexd.train"
  return " ".join(["python", program] + [shlex.quote(a) for a in sys.argv[1:]])


def stop_reason(done: int, preempted, stop_after: Optional[int],
                 log_every: int) -> Optional[str]:
  """Whether the loop stops after `done` steps, and why."""
  if stop_after is not None and done >= stop_after:
    return "stop_after"
  if jax.process_count() == 1:
    return "preempted" if preempted.flag else None
  # Every process must stop (and save, a collective) at the same step: they
  # agree at logging steps.
  if done % log_every == 0 and any_process(preempted.flag):
    return "preempted"
  return None


def any_process(flag: bool) -> bool:
  """Whether `flag` is set on any process (a collective: all must call)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))
