"""Work-directory I/O through `etils.epath`: local folders and buckets alike.

Every read and write of a run's work directory goes through `etils.epath`,
the path library orbax and tfds use, so `--workdir` may be a local folder or
a bucket URI (`gs://BUCKET/PATH`; also `s3://`, `az://`). A URI needs the
store's client: for `gs://`, `pip install gcsfs google-cloud-storage` (or
TensorFlow, which epath then uses instead of gcsfs).

Object stores have no appends and no empty directories; nothing here relies
on either. A file that grows during a run (metrics.jsonl, TensorBoard
events) is written on such a store by `RewrittenFile`: the content is kept
in memory and each flush uploads it whole.

  >>> import tempfile
  >>> run = path(tempfile.mkdtemp())  # or path("gs://my-bucket/runs/digits")
  >>> write_json(run / "config.json", {"seed": 0})
  >>> read_json(run / "config.json")
  {'seed': 0}
  >>> is_local(run), is_local("gs://my-bucket/runs/digits")
  (True, False)
"""

import errno
import io
import json
import os
import shutil
import threading
from typing import Any, Dict, Union

from etils import epath
import numpy as np

from mexd import errors

PathLike = Union[str, os.PathLike]


def is_local(p: PathLike) -> bool:
  """Whether `p` is a local path (not a URI such as gs://BUCKET/PATH)."""
  return "://" not in os.fspath(p)


def path(p: PathLike) -> epath.Path:
  """`p` as an epath.Path; a local path is made absolute (orbax needs it).

  A URI is kept as it is: `os.path.abspath("gs://b/x")` would turn it into
  a local folder named "gs:".
  """
  return epath.Path(os.path.abspath(os.fspath(p)) if is_local(p) else p)


# The work directory cannot be written (read-only, full, a file...); defined
# in the leaf module mexd.errors, which the CLIs' handler also reads.
WorkdirWriteError = errors.WorkdirWriteError


_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a component of the path is a file, not a directory",
    errno.EEXIST: "a file of that name is in the way",
    errno.EISDIR: "a directory is in the way",
}


def write_error(workdir: PathLike, e: OSError,
                last_step: int | None = None) -> WorkdirWriteError:
  """A one-line WorkdirWriteError for `e`: the path, the cause, what to do.

  `last_step`: the newest intact checkpoint, named in the message so the
  user knows the run resumes from it.
  """
  cause = _CAUSES.get(e.errno, e.strerror or type(e).__name__)
  if e.errno in _CAUSES and e.strerror and e.strerror != os.strerror(e.errno):
    cause += f", {e.strerror}"  # A detail such as the free space.
  where = e.filename or workdir
  resume = (f"; the last good checkpoint (step {last_step}) is intact: fix "
            "this and rerun the same command to resume" if last_step
            else "; fix this (or pass another --workdir) and rerun")
  return WorkdirWriteError(
      e.errno, f"cannot write to the work directory {workdir}: {cause} "
      f"({where}){resume}")


def check_writable(directory: PathLike, nbytes: int, workdir: PathLike,
                   last_step: int | None = None) -> None:
  """Raises WorkdirWriteError unless `directory` can take `nbytes` more.

  Local folders only (a bucket has no free-space figure): a small file is
  written and removed (a read-only or vanished folder fails here, at once,
  instead of inside orbax's asynchronous write), and the free space must
  exceed `nbytes` plus 10 % and 1 MiB.
  """
  if not is_local(directory):
    return
  d = os.fspath(directory)
  probe = os.path.join(d, f".write-probe-{os.getpid()}")
  try:
    os.makedirs(d, exist_ok=True)
    with open(probe, "wb") as f:
      f.write(b"0")
    os.remove(probe)
    free = shutil.disk_usage(d).free
  except OSError as e:
    raise write_error(workdir, e, last_step) from e
  need = int(nbytes * 1.1) + (1 << 20)
  if free < need:
    raise write_error(workdir, OSError(
        errno.ENOSPC, f"{free / 2**20:.1f} MiB free, a checkpoint needs "
        f"{need / 2**20:.1f} MiB", d), last_step)


def read_json(p: PathLike) -> Any:
  return json.loads(epath.Path(p).read_text())


def write_json(p: PathLike, obj: Any, **dumps_kwargs) -> None:
  """Writes `json.dumps(obj, **dumps_kwargs)` to `p` (one whole write)."""
  epath.Path(p).write_text(json.dumps(obj, **dumps_kwargs))


def save_npz(p: PathLike, **arrays: np.ndarray) -> None:
  """`np.savez(p, **arrays)`, through epath (built in memory, written once)."""
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  epath.Path(p).write_bytes(buf.getvalue())


def load_npz(p: PathLike) -> Dict[str, np.ndarray]:
  """The arrays of an .npz file, through epath (no pickles)."""
  with np.load(io.BytesIO(epath.Path(p).read_bytes())) as z:
    return {k: z[k] for k in z.files}


class RewrittenFile:
  """A binary file that grows, on a store that cannot append to a file.

  Writes go to memory; `flush` and `close` write the whole content to the
  path again (as tensorboardX's own GCS and S3 writers do). Opened with
  `keep_existing=True`, it starts from the file's current content, which is
  appending. Thread-safe: tensorboardX flushes from its own thread. It has
  no `fileno`, so callers do not try to fsync it.
  """

  def __init__(self, p: PathLike, *, keep_existing: bool = False):
    self.path = epath.Path(p)
    self._buf = bytearray()
    if keep_existing and self.path.exists():
      self._buf += self.path.read_bytes()
    self._lock = threading.Lock()
    self._dirty = True  # Create the file at the first flush, as open() does.
    self.closed = False

  def write(self, data: bytes) -> int:
    with self._lock:
      if self.closed:
        raise ValueError(f"write to closed file {self.path}")
      self._buf += data
      self._dirty = True
    return len(data)

  def flush(self) -> None:
    with self._lock:
      if self._dirty and not self.closed:
        self.path.write_bytes(bytes(self._buf))
        self._dirty = False

  def close(self) -> None:
    self.flush()
    with self._lock:
      self.closed = True
