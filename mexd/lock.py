"""One writer per work directory: a lock file with the owner's pid and host.

`mexd.train` takes `<workdir>/.lock` before it writes anything and releases
it when it ends (normally, on an error, after SIGTERM / Ctrl-C). A second
`mexd.train` on the same work directory is refused at start with one line
that names the owner:

  mexd.train: error: runs/digits-pl is being written by another mexd.train
  (pid 4242 on host node-3, started 2026-12-02 01:10:00 UTC, alive 12 s ago);
  wait for it to finish, or stop it (kill 4242); if it is gone and the lock
  stayed behind, delete runs/digits-pl/.lock

The lock file is JSON: {"pid", "host", "started", "heartbeat", "proc_start"}.
A lock is taken over (with a warning) only when its owner is gone:

* same host: the pid no longer runs, or it runs but is another process
  (its start time in /proc differs: the pid was reused);
* another host (a shared file system, a bucket): its heartbeat is older than
  `STALE_SECONDS`. The owner refreshes the heartbeat while it trains
  (`refresh`, at most every `HEARTBEAT_SECONDS`).

Only process 0 of a multi-process job takes the lock (it is the only writer
of the work directory's files; orbax coordinates the checkpoint writes of
the others). On a local file system the lock is created atomically
(O_CREAT | O_EXCL); on an object store two writers that start within the
same second can both pass (stores have no exclusive create through epath),
which the heartbeat check then does not catch — start one job per work
directory there.
"""

import datetime
import errno
import json
import os
import socket
import time
from typing import Any, Dict, Optional

from absl import logging
from etils import epath
import jax

from mexd import errors
from mexd import paths

LOCK_NAME = ".lock"
HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 600.0


class WorkdirLockedError(errors.InputError):
  """Another live process writes to the work directory."""


def _proc_start(pid: int) -> Optional[str]:
  """The start time of `pid` in clock ticks since boot (Linux), or None."""
  try:
    with open(f"/proc/{pid}/stat", "rb") as f:
      stat = f.read().decode(errors="replace")
  except OSError:
    return None
  # Field 22; the command name (field 2) may hold spaces, so split after it.
  return stat.rsplit(")", 1)[-1].split()[19]


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, owned by another user.
    return True
  return True


def _utc(t: float) -> str:
  return datetime.datetime.fromtimestamp(
      t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def owner_gone(owner: Dict[str, Any], now: Optional[float] = None) -> bool:
  """Whether the process recorded in a lock file no longer runs."""
  now = time.time() if now is None else now
  if owner.get("host") == socket.gethostname():
    pid = int(owner.get("pid", -1))
    if pid <= 0 or not _pid_alive(pid):
      return True
    recorded, current = owner.get("proc_start"), _proc_start(pid)
    return recorded is not None and current is not None and recorded != current
  return now - float(owner.get("heartbeat", 0)) > STALE_SECONDS


class WorkdirLock:
  """The work directory's lock (a context manager; a no-op off process 0).

  Usage:

    with WorkdirLock(workdir, prog="mexd.train") as lock:
      ...            # write the run
      lock.refresh()  # now and then, from the training loop
  """

  def __init__(self, workdir: str, prog: str = "mexd.train"):
    self.workdir = workdir
    self.path = paths.path(workdir) / LOCK_NAME
    self.prog = prog
    self._held = False
    self._created_dir = False
    self._beat = 0.0

  def _record(self, now: float) -> Dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "prog": self.prog, "started": self._started, "heartbeat": now,
            "proc_start": _proc_start(os.getpid())}

  def _create(self, record: Dict[str, Any]) -> bool:
    """Creates the lock file; False if it exists already."""
    text = json.dumps(record)
    if paths.is_local(self.path):
      try:
        fd = os.open(os.fspath(self.path),
                     os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, "w") as f:
        f.write(text)
      return True
    if self.path.exists():
      return False
    self.path.write_text(text)
    return True

  def _read_owner(self) -> Optional[Dict[str, Any]]:
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (ValueError, OSError):  # Garbled: stale only once its file is
      try:  # as old as a missed heartbeat.
        return {"heartbeat": self.path.stat().mtime}
      except OSError:
        return {}

  def acquire(self) -> "WorkdirLock":
    """Takes the lock, or raises WorkdirLockedError naming its owner.

    Raises:
      WorkdirLockedError: a live process holds the lock.
      paths.WorkdirWriteError: the work directory cannot be written.
    """
    if jax.process_index() != 0:
      return self
    wd = self.path.parent
    self._started = time.time()
    try:
      if not wd.exists():
        wd.mkdir(parents=True, exist_ok=True)
        self._created_dir = True
      elif not wd.is_dir():
        raise paths.WorkdirWriteError(
            errno.ENOTDIR, f"--workdir {self.workdir} is a file, not a "
            "directory; pass a directory (it is created if missing)")
      for _ in range(3):  # Created, or taken over from a gone owner.
        if self._create(self._record(self._started)):
          self._held, self._beat = True, time.time()
          return self
        owner = self._read_owner()
        if owner is None:  # Released in between: try again.
          continue
        if not owner_gone(owner):
          raise WorkdirLockedError(self._locked_message(owner))
        logging.warning("Taking over the lock of %s from a process that is "
                        "gone: %s", self.workdir, owner)
        self.path.unlink(missing_ok=True)
    except paths.WorkdirWriteError:
      raise
    except OSError as e:
      self._remove_created_dir()
      raise paths.write_error(self.workdir, e) from e
    raise WorkdirLockedError(
        f"{self.workdir}: could not take {self.path} (another process keeps "
        "re-creating it)")

  def _locked_message(self, owner: Dict[str, Any]) -> str:
    pid, host = owner.get("pid", "?"), owner.get("host", "?")
    ago = time.time() - float(owner.get("heartbeat", 0))
    started = (_utc(float(owner["started"])) if owner.get("started")
               else "at an unknown time")
    same_host = host == socket.gethostname()
    stop = f"stop it (kill {pid})" if same_host else (
        f"stop it (pid {pid} on {host})")
    return (f"{self.workdir} is being written by another "
            f"{owner.get('prog', 'mexd process')} (pid {pid} on host {host}, "
            f"started {started}, alive {ago:.0f} s ago); wait for it to "
            f"finish, or {stop}; if it is gone and the lock stayed behind, "
            f"delete {self.path}")

  def refresh(self, force: bool = False) -> None:
    """Rewrites the heartbeat (at most every HEARTBEAT_SECONDS)."""
    now = time.time()
    if not self._held or (not force and now - self._beat < HEARTBEAT_SECONDS):
      return
    self._beat = now
    try:
      text = json.dumps(self._record(now))
      if paths.is_local(self.path):  # Atomic: a reader never sees half.
        tmp = f"{os.fspath(self.path)}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
          f.write(text)
        os.replace(tmp, os.fspath(self.path))
      else:  # An object store replaces an object whole.
        self.path.write_text(text)
    except OSError as e:  # A heartbeat must not kill a run.
      logging.warning("Could not refresh %s: %s", self.path, e)

  def release(self) -> None:
    """Deletes the lock file if this process holds it."""
    if not self._held:
      return
    self._held = False
    try:
      owner = self._read_owner()
      if owner and owner.get("pid") == os.getpid() and (
          owner.get("host") == socket.gethostname()):
        self.path.unlink(missing_ok=True)
    except OSError as e:
      logging.warning("Could not remove %s: %s", self.path, e)
    self._remove_created_dir()

  def _remove_created_dir(self):
    """Removes the work directory if acquire created it and it is empty."""
    if not self._created_dir:
      return
    wd = self.path.parent
    try:
      if wd.exists() and not any(wd.iterdir()):
        wd.rmdir()
    except OSError:
      pass

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def holder(workdir: str) -> Optional[Dict[str, Any]]:
  """The lock record of a live writer of `workdir`, or None."""
  p = paths.path(workdir) / LOCK_NAME
  try:
    owner = json.loads(epath.Path(p).read_text())
  except (FileNotFoundError, ValueError, OSError):
    return None
  return None if owner_gone(owner) else owner

