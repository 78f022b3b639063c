"""A gs:// work directory end to end: train, resume, evaluate, --overwrite.

No network: `FakeGcs` serves gs://BUCKET/KEY from files under a tmp folder
through `etils.epath.testing.mock_epath`, with an object store's rules (a
file cannot be appended to; a folder exists only while it holds a file; a
rename needs its target folder, as epath's fsspec backend checks). Orbax's
arrays go through tensorstore, not epath: its gs:// kvstore spec is pointed
at the same folder (tensorstore's file driver).

A guard makes every plain `open`, `os` file call, `shutil` copy or move and
numpy save / load on a gs:// path fail the test (and records it, in case a
caller swallows the error), so whatever reached the store went through epath.
"""

import builtins
import io
import json
import os
import shutil
import struct
import time

from etils import epath
from etils.epath import gpath
from etils.epath import stat_utils
import jax
import numpy as np
from orbax.checkpoint._src.path import gcs_utils
import pytest

import helpers
from mexd import evaluate
from mexd import train
from mexd import workdir as workdir_lib

BUCKET = "gs://test-bucket"


class FakeGcs:
  """gs://BUCKET/KEY served from ROOT/BUCKET/KEY, with object-store rules."""

  def __init__(self, root):
    self.root = str(root)
    os.makedirs(self.root)

  def local(self, p) -> str:
    p = os.fspath(p)
    assert p.startswith("gs://"), p
    return os.path.join(self.root, p[len("gs://"):].rstrip("/"))

  def uri(self, local: str) -> str:
    return "gs://" + os.path.relpath(local, self.root)

  def file(self, key: str) -> str:
    """The local file behind gs://test-bucket/KEY."""
    return self.local(f"{BUCKET}/{key}")

  # -- object-store semantics (on local paths) -------------------------------

  @staticmethod
  def _holds_files(local: str) -> bool:
    return any(files for _, _, files in os.walk(local))

  def _isdir(self, local: str) -> bool:
    if os.path.dirname(local) == self.root:  # A bucket always exists.
      return True
    return os.path.isdir(local) and self._holds_files(local)

  def _exists(self, local: str) -> bool:
    return os.path.isfile(local) or self._isdir(local)

  # -- the epath backend functions: fn(original_fn, path, ...) ---------------

  def open(self, orig, p, mode):
    if not _is_gs(p):
      return orig(p, mode)
    local = self.local(p)
    if "a" in mode or "+" in mode:
      raise NotImplementedError(f"{p}: an object cannot be appended to")
    if "w" in mode:
      os.makedirs(os.path.dirname(local), exist_ok=True)
    elif not os.path.isfile(local):
      raise FileNotFoundError(p)
    return orig(local, mode)

  def exists(self, orig, p):
    return self._exists(self.local(p)) if _is_gs(p) else orig(p)

  def isdir(self, orig, p):
    return self._isdir(self.local(p)) if _is_gs(p) else orig(p)

  def listdir(self, orig, p):
    if not _is_gs(p):
      return orig(p)
    local = self.local(p)
    if not self._isdir(local):
      raise FileNotFoundError(p)
    return sorted(n for n in os.listdir(local)
                  if self._exists(os.path.join(local, n)))

  def glob(self, orig, p):
    if not _is_gs(p):
      return orig(p)
    return [self.uri(m) for m in orig(self.local(p)) if self._exists(m)]

  def walk(self, orig, top, *, top_down=True, on_error=None):
    if not _is_gs(top):
      yield from orig(top, top_down=top_down, on_error=on_error)
      return
    for root, dirs, files in orig(self.local(top), top_down=top_down,
                                  on_error=on_error):
      root = os.fspath(root)
      dirs[:] = [d for d in dirs if self._isdir(os.path.join(root, d))]
      yield self.uri(root), dirs, files

  def makedirs(self, orig, p, *, exist_ok=False):
    if not _is_gs(p):
      return orig(p, exist_ok=exist_ok)
    if not exist_ok and self._exists(self.local(p)):
      raise FileExistsError(p)
    os.makedirs(self.local(p), exist_ok=True)  # Invisible until it holds one.

  def mkdir(self, orig, p, *, exist_ok=False):
    if not _is_gs(p):
      return orig(p, exist_ok=exist_ok)
    return self.makedirs(None, p, exist_ok=exist_ok)

  def rmtree(self, orig, p):
    if not _is_gs(p):
      return orig(p)
    local = self.local(p)
    if not self._exists(local):
      raise FileNotFoundError(p)
    if os.path.isdir(local):
      shutil.rmtree(local)
    else:
      os.remove(local)

  def remove(self, orig, p):
    if not _is_gs(p):
      return orig(p)
    if not os.path.isfile(self.local(p)):
      raise FileNotFoundError(p)
    os.remove(self.local(p))

  def _move(self, p, dst, *, overwrite):
    src, dst_local = self.local(p), self.local(dst)
    if not self._exists(src):
      raise FileNotFoundError(p)
    if self._exists(dst_local) and not (overwrite
                                        and os.path.isfile(dst_local)):
      raise FileExistsError(dst)
    if not self._isdir(os.path.dirname(dst_local)):
      raise FileNotFoundError(f"folder {os.path.dirname(dst)} does not exist")
    if os.path.isdir(dst_local):  # An invisible (empty) folder.
      shutil.rmtree(dst_local)
    os.replace(src, dst_local)

  def rename(self, orig, p, dst):
    if not (_is_gs(p) or _is_gs(dst)):
      return orig(p, dst)
    assert _is_gs(p) and _is_gs(dst), (p, dst)
    self._move(p, dst, overwrite=False)

  def replace(self, orig, p, dst):
    if not (_is_gs(p) or _is_gs(dst)):
      return orig(p, dst)
    assert _is_gs(p) and _is_gs(dst), (p, dst)
    self._move(p, dst, overwrite=True)

  def copy(self, orig, p, dst, *, overwrite):
    if not (_is_gs(p) or _is_gs(dst)):
      return orig(p, dst, overwrite=overwrite)
    src = self.local(p) if _is_gs(p) else os.fspath(p)
    out = self.local(dst) if _is_gs(dst) else os.fspath(dst)
    if not overwrite and os.path.exists(out):
      raise FileExistsError(dst)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(src, "rb") as f, open(out, "wb") as g:
      g.write(f.read())

  def stat(self, orig, p):
    if not _is_gs(p):
      return orig(p)
    local = self.local(p)
    if self._isdir(local):
      return stat_utils.StatResult(is_directory=True, length=0,
                                   mtime=int(time.time()))
    if not os.path.isfile(local):
      raise FileNotFoundError(p)
    return orig(local)

  # -- orbax -----------------------------------------------------------------

  def tensorstore_kvstore(self, ckpt_path):
    """For gcs_utils.get_kvstore_for_gcs: tensorstore's file driver here."""
    return {"driver": "file", "path": self.local(ckpt_path)}


def _is_gs(p) -> bool:
  return os.fspath(p).startswith("gs://")


# Plain file calls that must never see a gs:// path (epath's own local
# backend and FakeGcs call them on local paths only).
_GUARDED = [(builtins, "open"), (io, "open"), (os, "open"),
            (os, "makedirs"), (os, "mkdir"), (os, "listdir"),
            (os, "scandir"), (os, "stat"), (os, "remove"), (os, "unlink"),
            (os, "rename"), (os, "replace"), (os, "rmdir"),
            (shutil, "move"), (shutil, "rmtree"), (shutil, "copyfile"),
            (shutil, "copy"), (shutil, "copytree"), (np, "save"),
            (np, "savez"), (np, "savez_compressed"), (np, "load")]


def _mentions_gs(arg) -> bool:
  try:
    s = os.fspath(arg)
  except TypeError:
    return False
  if isinstance(s, bytes):
    s = s.decode(errors="replace")
  return "gs:" in s


class Guard:
  """Fails (and records) every guarded call given a gs:// path."""

  def __init__(self, monkeypatch):
    self.violations = []
    for module, name in _GUARDED:
      monkeypatch.setattr(module, name, self._wrap(module, name))

  def _wrap(self, module, name):
    fn = getattr(module, name)

    def guarded(*args, **kwargs):
      bad = [a for a in (*args, *kwargs.values()) if _mentions_gs(a)]
      if bad:
        msg = (f"{module.__name__}.{name}({os.fspath(bad[0])!r}) bypasses "
               "etils.epath")
        self.violations.append(msg)
        raise AssertionError(msg)
      return fn(*args, **kwargs)
    return guarded


@pytest.fixture
def gcs(tmp_path, monkeypatch):
  """A FakeGcs behind every gs:// path, and the Guard; yields the FakeGcs."""
  store = FakeGcs(tmp_path / "store")
  os.makedirs(store.file(""))  # The bucket.
  # epath would route gs:// to tf.io.gfile if TensorFlow were installed.
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs",
                      store.tensorstore_kvstore)
  # Orbax asks the GCS API whether the bucket has a hierarchical namespace.
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled",
                      lambda path: False)
  fns = {n: getattr(store, n) for n in (
      "open", "exists", "isdir", "listdir", "glob", "walk", "makedirs",
      "mkdir", "rmtree", "remove", "rename", "replace", "copy", "stat")}
  with epath.testing.mock_epath(**fns):
    store.guard = Guard(monkeypatch)
    yield store
    monkeypatch.undo()
  assert not store.guard.violations, store.guard.violations
  assert not os.path.exists("gs:")  # No local folder named "gs:" appeared.


def _config(**overrides):
  return helpers.digits_config(**{
      "num_epochs": 1, "log_every_steps": 5, "eval_every_epochs": 100,
      "ckpt_every_steps": 1000, **overrides})


def _events(path):
  """The (tag, step, value) scalars of a TensorBoard event file."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  data, out, pos = open(path, "rb").read(), [], 0
  while pos < len(data):
    (n,) = struct.unpack("<Q", data[pos:pos + 8])
    event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
    pos += 12 + n + 4
    for v in event.summary.value:
      out.append((v.tag, event.step, v.simple_value))
  return out


def test_the_fake_store_and_the_guard(gcs):
  """The checks below can fail: append and plain file calls are refused."""
  p = epath.Path(f"{BUCKET}/a/b.txt")
  p.write_text("x")
  assert open(gcs.file("a/b.txt")).read() == "x"
  with pytest.raises(NotImplementedError, match="appended"):
    p.open("a")
  epath.Path(f"{BUCKET}/empty").mkdir()
  assert not epath.Path(f"{BUCKET}/empty").exists()  # No empty folders.
  assert sorted(x.name for x in epath.Path(BUCKET).iterdir()) == ["a"]
  for call in (lambda: open(f"{BUCKET}/x", "w"),
               lambda: os.makedirs(f"{BUCKET}/d"),
               lambda: np.savez(f"{BUCKET}/s.npz", a=np.zeros(1)),
               lambda: os.path.exists(f"{BUCKET}/a/b.txt")):
    with pytest.raises(AssertionError, match="bypasses etils.epath"):
      call()
  assert len(gcs.guard.violations) == 4, gcs.guard.violations
  gcs.guard.violations.clear()  # Expected here; the fixture checks the rest.


@pytest.mark.slow
def test_train_resume_evaluate_overwrite_on_gs(gcs, tmp_path, capsys):
  wd = f"{BUCKET}/runs/digits"
  local = str(tmp_path / "local")
  reference = train.train_and_evaluate(_config(), local)

  assert train.train_and_evaluate(_config(), wd, stop_after=7)["stopped"] == 7
  assert os.path.isdir(gcs.file("runs/digits/checkpoints/7"))
  res = train.train_and_evaluate(_config(), wd)
  assert f"Resuming from step 7 in {wd}" in capsys.readouterr().out
  assert res["steps"] == reference["steps"] == 19

  # Resuming from the bucket's checkpoint is bitwise the uninterrupted run.
  a = workdir_lib.load_variables(local)
  b = workdir_lib.load_variables(wd)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert res["test"] == reference["test"]

  # The work-directory format is the local one.
  for name in ("config.json",):
    assert open(gcs.file(f"runs/digits/{name}"), "rb").read() == open(
        os.path.join(local, name), "rb").read()
  with np.load(gcs.file("runs/digits/splits.npz")) as s, np.load(
      os.path.join(local, "splits.npz")) as t:
    assert s.files == t.files
    for k in s.files:
      np.testing.assert_array_equal(s[k], t[k])
  saved = json.load(open(gcs.file("runs/digits/results.json")))
  assert saved["test"] == reference["test"]
  # metrics.jsonl kept the first run's rows across the resume (no append).
  rows = [json.loads(l) for l in open(gcs.file("runs/digits/metrics.jsonl"))]
  local_rows = [json.loads(l) for l in open(os.path.join(local,
                                                         "metrics.jsonl"))]
  steps = lambda rs, split: [r["step"] for r in rs if r["split"] == split]
  assert steps(rows, "train") == steps(local_rows, "train") == [5, 10, 15, 19]
  assert steps(rows, "test") == [19]
  assert rows[0] == {**local_rows[0], "images_per_sec": rows[0][
      "images_per_sec"]}  # Step 5 is the same in both runs but for timing.
  # TensorBoard: one event file per run, through epath.
  tb = sorted(os.listdir(gcs.file("runs/digits/tb")))
  assert len(tb) == 2 and all(n.startswith("events.out.tfevents.")
                              for n in tb), tb
  scalars = [s for n in tb for s in _events(gcs.file(f"runs/digits/tb/{n}"))]
  assert sorted(s for t, s, _ in scalars if t == "train/loss") == [
      5, 10, 15, 19]
  assert ("test/acc/exit2", 19, pytest.approx(res["test"]["acc"][2])) in [
      (t, s, pytest.approx(v)) for t, s, v in scalars]

  out = evaluate.evaluate_run(wd, policies=("max_prob",), budgets=(0.5,),
                              trials=5, timing=False)
  assert out["anytime"]["test_acc"] == pytest.approx(res["test"]["acc"])
  ev = json.load(open(gcs.file("runs/digits/eval/eval.json")))
  assert ev["accuracy_drop"]["thresholds"][-1] == "-inf"  # Strict JSON.
  ev = evaluate.load_eval(f"{wd}/eval/eval.json")  # Read through epath.
  assert ev["accuracy_drop"]["thresholds"] == out["accuracy_drop"][
      "thresholds"]
  for png in ("anytime.png", "budget.png"):
    assert open(gcs.file(f"runs/digits/eval/{png}"), "rb").read(8) == (
        b"\x89PNG\r\n\x1a\n"), png
  policy = evaluate.load_exit_policy(f"{wd}/exit_policy.json")
  np.testing.assert_array_equal(
      policy["thresholds"],
      np.asarray(out["accuracy_drop"]["thresholds"], np.float32))

  # Another config is refused; --overwrite moves the old run aside.
  other = _config(method="ce")
  with pytest.raises(workdir_lib.WorkdirError, match="fields differ: method"):
    train.train_and_evaluate(other, wd, stop_after=2)
  assert train.train_and_evaluate(other, wd, overwrite=True,
                                  stop_after=2)["stopped"] == 2
  (aside,) = [n for n in os.listdir(gcs.file("runs/digits"))
              if n.startswith("replaced-")]
  assert sorted(os.listdir(gcs.file(f"runs/digits/{aside}"))) == [
      "checkpoints", "config.json", "eval", "exit_policy.json",
      "metrics.jsonl", "results.json", "splits.npz", "tb"]
  old = json.load(open(gcs.file(f"runs/digits/{aside}/config.json")))
  assert (old["method"], workdir_lib.load_config(wd).method) == ("pl", "ce")
  assert sorted(os.listdir(gcs.file(f"runs/digits/{aside}/checkpoints")),
                key=int) == ["7", "19"]
  assert os.listdir(gcs.file("runs/digits/checkpoints")) == ["2"]
