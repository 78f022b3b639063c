"""Work-directory faults: the lock, damaged run files, unwritable folders."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from mexd import lock as lock_lib
from mexd import paths
from mexd import train
from mexd import workdir as workdir_lib
from tests import helpers


def _dead_pid() -> int:
  """The pid of a process that has exited (and been reaped)."""
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  return p.pid


def _write_lock(workdir, **fields):
  os.makedirs(workdir, exist_ok=True)
  rec = {"pid": os.getpid(), "host": socket.gethostname(),
         "prog": "mexd.train", "started": time.time(),
         "heartbeat": time.time(),
         "proc_start": lock_lib._proc_start(os.getpid())}
  rec.update(fields)
  with open(os.path.join(workdir, ".lock"), "w") as f:
    json.dump(rec, f)
  return rec


def test_lock_is_exclusive_and_released(tmp_path):
  wd = str(tmp_path / "run")
  with lock_lib.WorkdirLock(wd) as held:
    rec = json.load(open(os.path.join(wd, ".lock")))
    assert (rec["pid"], rec["host"]) == (os.getpid(), socket.gethostname())
    with pytest.raises(lock_lib.WorkdirLockedError,
                       match=rf"pid {os.getpid()} on host "):
      lock_lib.WorkdirLock(wd).acquire()
    assert lock_lib.holder(wd)["pid"] == os.getpid()
    held.refresh(force=True)
    assert json.load(open(os.path.join(wd, ".lock")))["heartbeat"] >= (
        rec["heartbeat"])
  assert not os.path.exists(wd)  # Created by the lock, empty: removed.
  assert lock_lib.holder(wd) is None


@pytest.mark.parametrize("fields,gone", [
    ({"pid": "dead"}, True),                       # Killed on this host.
    ({"proc_start": "1"}, True),                   # The pid was reused.
    ({}, False),                                   # Alive here.
    ({"host": "elsewhere", "heartbeat": 0.0}, True),  # No heartbeat for long.
    ({"host": "elsewhere"}, False),                # Fresh heartbeat.
])
def test_owner_gone(tmp_path, fields, gone):
  if fields.get("pid") == "dead":
    fields = {"pid": _dead_pid()}
  rec = _write_lock(str(tmp_path), **fields)
  assert lock_lib.owner_gone(rec) is gone
  if gone:
    with lock_lib.WorkdirLock(str(tmp_path)):
      assert json.load(open(tmp_path / ".lock"))["pid"] == os.getpid()
  else:
    with pytest.raises(lock_lib.WorkdirLockedError, match="delete .*\\.lock"):
      lock_lib.WorkdirLock(str(tmp_path)).acquire()
  assert lock_lib.STALE_SECONDS > lock_lib.HEARTBEAT_SECONDS


def test_train_refuses_a_locked_workdir_and_writes_nothing(tmp_path):
  wd = str(tmp_path / "run")
  _write_lock(wd, host="another-host")
  before = sorted(os.listdir(wd))
  with pytest.raises(lock_lib.WorkdirLockedError,
                     match="being written by another mexd.train .*"
                     "another-host"):
    train.train_and_evaluate(helpers.digits_config(num_epochs=1), wd)
  assert sorted(os.listdir(wd)) == before


def test_workdir_that_is_a_file(tmp_path):
  wd = tmp_path / "run"
  wd.write_text("x")
  with pytest.raises(paths.WorkdirWriteError, match="is a file, not a dir"):
    train.train_and_evaluate(helpers.digits_config(num_epochs=1), str(wd))
  assert wd.read_text() == "x"
  # A path below a file: ENOTDIR, named as such.
  with pytest.raises(paths.WorkdirWriteError,
                     match="a component of the path is a file"):
    train.train_and_evaluate(helpers.digits_config(num_epochs=1),
                             str(wd / "sub"))


def test_full_disk_is_one_message_and_the_checkpoint_stays(tmp_path,
                                                           monkeypatch):
  wd = str(tmp_path / "run")
  config = helpers.digits_config(num_epochs=2, ckpt_every_steps=5)
  assert train.train_and_evaluate(config, wd, stop_after=5)["stopped"] == 5
  real = paths.shutil.disk_usage
  monkeypatch.setattr(paths.shutil, "disk_usage",
                      lambda p: real(p)._replace(free=1000))
  with pytest.raises(paths.WorkdirWriteError,
                     match=r"the disk is full, 0\.0 MiB free, a checkpoint "
                     r"needs .* the last good checkpoint \(step 5\) is intact"):
    train.train_and_evaluate(config, wd)
  assert not os.path.exists(os.path.join(wd, ".lock"))
  monkeypatch.setattr(paths.shutil, "disk_usage", real)
  assert workdir_lib.read_checkpoint(wd).step == 5
  assert train.train_and_evaluate(config, wd, stop_after=10)["stopped"] == 10


def test_write_error_names_path_and_cause():
  import errno  # pylint: disable=g-import-not-at-top
  e = paths.write_error("gs://b/run", OSError(errno.EROFS, "Read-only file "
                                              "system", "gs://b/run/x"), 40)
  assert str(e) == (
      "cannot write to the work directory gs://b/run: the file system is "
      "read-only (gs://b/run/x); the last good checkpoint (step 40) is "
      "intact: fix this and rerun the same command to resume")
  assert isinstance(e, OSError) and e.errno == errno.EROFS


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
  """A digits run stopped at step 4 (config.json, splits.npz, a checkpoint)."""
  wd = str(tmp_path_factory.mktemp("stopped") / "run")
  train.train_and_evaluate(helpers.digits_config(num_epochs=1), wd,
                           stop_after=4)
  return wd


def test_damaged_config_json(tmp_path, stopped_run):
  import shutil  # pylint: disable=g-import-not-at-top
  wd = str(tmp_path / "run")
  shutil.copytree(stopped_run, wd)
  with open(os.path.join(wd, "config.json"), "w") as f:
    f.write('{"seed": 0, ')
  pattern = (rf"{os.path.join(wd, 'config.json')} is damaged \(.*\); it is "
             "the run's saved config: restore it from a copy, or pass "
             "--overwrite")
  with pytest.raises(workdir_lib.WorkdirError, match=pattern):
    workdir_lib.load_config(wd)
  with pytest.raises(workdir_lib.WorkdirError, match=pattern):
    train.train_and_evaluate(helpers.digits_config(num_epochs=1), wd)
  # --overwrite moves the damaged run aside and starts afresh.
  train.train_and_evaluate(helpers.digits_config(num_epochs=1), wd,
                           overwrite=True, stop_after=2)
  assert workdir_lib.load_config(wd).num_epochs == 1
  assert [n for n in os.listdir(wd) if n.startswith("replaced-")]


def test_missing_splits_npz(tmp_path, stopped_run):
  import shutil  # pylint: disable=g-import-not-at-top
  wd = str(tmp_path / "run")
  shutil.copytree(stopped_run, wd)
  os.remove(os.path.join(wd, "splits.npz"))
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r"splits.npz is missing: the run's saved split "
                     r"indices .* rerun python -m mexd.train"):
    workdir_lib.load_splits(wd)


def test_folder_turning_read_only_mid_run(tmp_path, monkeypatch):
  """A checkpoint folder that refuses writes mid-run fails at the next save
  with one message (not inside orbax's asynchronous write)."""
  import builtins  # pylint: disable=g-import-not-at-top
  import errno  # pylint: disable=g-import-not-at-top
  wd = str(tmp_path / "run")
  config = helpers.digits_config(num_epochs=2, ckpt_every_steps=5)
  train.train_and_evaluate(config, wd, stop_after=5)
  real_open = builtins.open

  def read_only(file, *args, **kwargs):
    if ".write-probe-" in os.fspath(file):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(file))
    return real_open(file, *args, **kwargs)

  monkeypatch.setattr(builtins, "open", read_only)
  with pytest.raises(paths.WorkdirWriteError,
                     match=r"the file system is read-only \(.*checkpoints.*"
                     r"\); the last good checkpoint \(step 5\) is intact"):
    train.train_and_evaluate(config, wd)
  monkeypatch.setattr(builtins, "open", real_open)
  assert workdir_lib.read_checkpoint(wd).step == 5


def test_failed_metric_write_is_one_message(tmp_path, monkeypatch):
  """Any OSError of a work-directory write (here the metrics file) names
  the path, the cause and the last good checkpoint."""
  import errno  # pylint: disable=g-import-not-at-top
  from mexd import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  wd = str(tmp_path / "run")
  config = helpers.digits_config(num_epochs=2, ckpt_every_steps=5,
                                 log_every_steps=7)
  train.train_and_evaluate(config, wd, stop_after=5)

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                  os.path.join(wd, "metrics.jsonl"))

  monkeypatch.setattr(metrics_lib.MetricWriter, "write_scalars", full)
  with pytest.raises(paths.WorkdirWriteError,
                     match=r"the disk is full \(.*metrics.jsonl\); the last "
                     r"good checkpoint \(step 5\) is intact"):
    train.train_and_evaluate(config, wd)
  assert not os.path.exists(os.path.join(wd, ".lock"))


def test_garbled_lock_is_stale_only_when_old(tmp_path):
  """A lock file read half-written is not taken over while it is fresh."""
  lock = tmp_path / ".lock"
  lock.write_text('{"pid": 12')
  with pytest.raises(lock_lib.WorkdirLockedError):
    lock_lib.WorkdirLock(str(tmp_path)).acquire()
  old = time.time() - 2 * lock_lib.STALE_SECONDS
  os.utime(lock, (old, old))
  with lock_lib.WorkdirLock(str(tmp_path)):
    assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_heartbeat_rewrites_the_lock_whole(tmp_path, monkeypatch):
  with lock_lib.WorkdirLock(str(tmp_path)) as held:
    monkeypatch.setattr(lock_lib.time, "time", lambda: 4e9)
    held.refresh()
    rec = json.loads((tmp_path / ".lock").read_text())
    assert rec["heartbeat"] == 4e9 and rec["pid"] == os.getpid()
    assert sorted(os.listdir(tmp_path)) == [".lock"]  # No temporary left.
