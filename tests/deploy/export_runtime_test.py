"""Export a trained run and run it without the model code (mexd.deploy)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from mexd import errors
from mexd import exit_policy
from mexd import exporter
from mexd.deploy import artifact
from mexd.deploy import runtime
from mexd.early_exit import policies
from mexd.early_exit import staged

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
BLOCKED = ("flax", "optax", "orbax", "ml_collections", "mexd.models",
           "mexd.configs", "mexd.losses", "mexd.data", "mexd.trainer",
           "mexd.early_exit")

# Run in a fresh interpreter where importing the model code, flax, optax or
# the configs fails (sys.modules[name] = None makes `import name` raise).
FRESH = textwrap.dedent("""
    import sys
    for name in {blocked!r}:
      sys.modules[name] = None
    import numpy as np
    import mexd.deploy
    cascade = mexd.deploy.load(sys.argv[1])
    images = np.load(sys.argv[2])
    labels, exits = cascade.predict(images)
    one = [cascade.predict_one(images[i]) for i in range(5)]
    logits = cascade.logits(images)
    np.savez(sys.argv[3], labels=labels, exits=exits, one=np.array(one),
             logits=logits)
    loaded = sorted(m for m in sys.modules if sys.modules[m] is not None)
    print(",".join(loaded))
""").format(blocked=BLOCKED)


def test_manifest_describes_the_run(trained, exported):
  workdir, run = trained
  m = json.loads((pathlib.Path(exported) / "manifest.json").read_text())
  saved = exit_policy.load_exit_policy(workdir)
  assert m["format"] == "mexd-cascade" and m["num_exits"] == 3
  assert m["image_shape"] == [8, 8, 1] and m["num_classes"] == 10
  assert m["class_names"] == [str(i) for i in range(10)]
  np.testing.assert_allclose(m["exit_macs"], run.macs)
  assert m["policy"]["name"] == saved["policy"]
  np.testing.assert_array_equal(
      np.asarray(exit_policy.decode_thresholds(m["policy"]["thresholds"]),
                 np.float32), saved["thresholds"])
  np.testing.assert_allclose(m["mean"], run.train.mean, rtol=1e-6)
  np.testing.assert_allclose(m["std"], run.train.std, rtol=1e-6)
  assert m["versions"] == runtime.installed_versions()
  assert set(m["platforms"]) == {"cpu", "cuda", "tpu"}
  assert m["source"]["calibrated"] and m["source"]["step"] == run.checkpoint[
      "step"]
  for name, f in m["files"].items():  # Every file hashed, none missing.
    assert artifact.sha256(pathlib.Path(exported) / name) == f["sha256"]
  assert set(m["files"]) == {"weights.npz", "preprocess.jax", "forward.jax",
                             "stage_0.jax", "stage_1.jax", "stage_2.jax"}


def test_fresh_process_without_model_code_matches_staged_and_simulate(
    trained, mixed, mixed_thresholds, tmp_path):
  _, run = trained
  images = run.test.images  # uint8 [N, 8, 8, 1]
  np.save(tmp_path / "images.npy", images)
  proc = subprocess.run(
      [sys.executable, "-c", FRESH, mixed, str(tmp_path / "images.npy"),
       str(tmp_path / "out.npz")], capture_output=True, text=True, cwd=REPO,
      check=False)
  assert proc.returncode == 0, proc.stderr
  loaded = proc.stdout.strip().splitlines()[-1].split(",")
  assert not [m for m in loaded if m.split(".")[0] in ("flax", "optax")]
  out = np.load(tmp_path / "out.npz")
  sp = staged.StagedPredictor(run.model, run.variables, mixed_thresholds,
                              "max_prob", mean=run.train.mean,
                              std=run.train.std, image_shape=(8, 8, 1))
  pred, exits = sp(images)
  sim = policies.simulate(run.test_logits, run.test.labels,
                          mixed_thresholds, "max_prob")
  np.testing.assert_array_equal(out["exits"], exits)
  np.testing.assert_array_equal(out["labels"], pred)
  np.testing.assert_array_equal(out["exits"], np.asarray(sim["exit"]))
  np.testing.assert_array_equal(out["labels"],
                                np.asarray(sim["predictions"]))
  counts = np.bincount(out["exits"], minlength=3)
  assert (counts > 0).all(), counts  # The test covers every exit.
  np.testing.assert_array_equal(out["one"], np.stack([pred[:5], exits[:5]],
                                                     1))
  np.testing.assert_allclose(out["logits"], run.test_logits, atol=1e-4)


def test_float_inputs_buckets_and_threshold_override(trained, mixed,
                                                     mixed_thresholds):
  _, run = trained
  images = run.test.images
  c = runtime.Cascade(mixed)
  labels, exits = c.predict(images)
  floats = ((images / 255.0 - run.train.mean) / run.train.std).astype(
      np.float32)
  np.testing.assert_array_equal(c.predict(floats)[1], exits)
  small = runtime.Cascade(mixed, buckets=[4, 16])  # Chunks of 16 rows.
  np.testing.assert_array_equal(small.predict(images)[0], labels)
  res = small.run(images)
  assert res.padded.max() <= 16
  np.testing.assert_allclose(res.macs, np.asarray(run.macs)[res.exits])
  # Thresholds given at load time replace the exported ones.
  t = [float("inf"), mixed_thresholds[1], float("-inf")]
  sim = policies.simulate(run.test_logits, run.test.labels, t, "max_prob")
  got = runtime.Cascade(mixed, thresholds=t).predict(images)
  np.testing.assert_array_equal(got[1], np.asarray(sim["exit"]))
  assert not (got[1] == 0).any()
  # On-device input: the same answers.
  np.testing.assert_array_equal(c.predict(jax.device_put(images))[0], labels)
  assert c.run(images[:0]).labels.shape == (0,)


def test_stages_yield_each_row_once(trained, mixed):
  images = trained[1].test.images[:50]
  outs = list(runtime.Cascade(mixed).stages(images))
  rows = np.concatenate([o.rows for o in outs])
  np.testing.assert_array_equal(np.sort(rows), np.arange(50))
  assert [o.exit for o in outs] == sorted(o.exit for o in outs)
  assert outs[0].reached == 50 and outs[0].padded == 64


@pytest.mark.parametrize("bad, message", [
    ((8, 8, 2), r"images of shape \(8, 8, 2\) given to a model trained on "
                r"\(8, 8, 1\) images"),
    ("int64", "dtype int64"),
    ("nan", "NaN"),
    ("raw_floats", "raw pixels as floats"),
])
def test_bad_inputs_are_refused(mixed, bad, message):
  c = runtime.Cascade(mixed, verify=False)
  x = np.zeros((2, 8, 8, 1), np.uint8)
  if isinstance(bad, tuple):
    x = np.zeros((2,) + bad, np.uint8)
  elif bad == "int64":
    x = x.astype(np.int64)
  elif bad == "nan":
    x = np.full((2, 8, 8, 1), np.nan, np.float32)
  else:
    x = np.full((2, 8, 8, 1), 200.0, np.float32)
  with pytest.raises(errors.InputError, match=message):
    c.predict(x)


def _copy(src, dst):
  shutil.copytree(src, dst)
  return pathlib.Path(dst)


def _edit_manifest(folder, fn):
  path = folder / "manifest.json"
  m = json.loads(path.read_text())
  fn(m)
  path.write_text(json.dumps(m))


DAMAGE = {
    "missing_stage": (lambda d: (d / "stage_1.jax").unlink(),
                      r"stage_1.jax is missing"),
    "flipped_byte": (lambda d: _flip(d / "weights.npz"),
                     r"weights.npz is damaged"),
    "newer_jax": (lambda d: _edit_manifest(
        d, lambda m: m["versions"].update(jax="99.0.0")),
                  r"made with jax 99.0.0.*pip install 'jax>=99.0.0'"),
    "format_version": (lambda d: _edit_manifest(
        d, lambda m: m.update(format_version=2)), r"format version 2"),
    "other_platform": (lambda d: _edit_manifest(
        d, lambda m: m.update(platforms=["tpu"])),
                       r"exported for \['tpu'\].*--platforms=tpu,cpu"),
    "manifest_not_json": (lambda d: (d / "manifest.json").write_text("{x"),
                          r"manifest.json is damaged"),
    "no_manifest": (lambda d: (d / "manifest.json").unlink(),
                    r"no manifest.json: not a mexd export"),
    "truncated_program": (lambda d: _truncate(d / "stage_0.jax"),
                          r"stage_0.jax is damaged"),
}


def _flip(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))


def _truncate(path):
  path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_or_mismatched_exports_are_refused(exported, tmp_path, kind):
  folder = _copy(exported, tmp_path / "copy")
  damage, message = DAMAGE[kind]
  damage(folder)
  with pytest.raises(artifact.ExportError, match=message):
    runtime.Cascade(folder)


def test_not_a_folder(tmp_path):
  with pytest.raises(artifact.ExportError, match="is not a folder"):
    runtime.Cascade(tmp_path / "nothing")


def test_export_refuses_a_run_without_a_calibrated_rule(trained, tmp_path):
  workdir = trained[0]
  with pytest.raises(errors.InputError, match="no calibrated exit policy"):
    exporter.export_run(workdir, str(tmp_path / "x"),
                        policy_file=str(tmp_path / "missing.json"))
  proc = subprocess.run(
      [sys.executable, "-m", "mexd.export", f"--workdir={workdir}",
       f"--out={tmp_path / 'y'}", f"--policy={tmp_path / 'missing.json'}"],
      capture_output=True, text=True, cwd=REPO, check=False)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      "mexd.export: error: ") and "python -m mexd.evaluate" in lines[0], (
          proc.stderr)
  assert not (tmp_path / "y").exists()


def test_export_refuses_to_overwrite_and_bad_thresholds(trained, exported,
                                                         tmp_path):
  with pytest.raises(errors.InputError, match="exists; pass --overwrite"):
    exporter.export_run(trained[0], exported)
  with pytest.raises(errors.InputError,
                     match=r"thresholds of shape \(2,\) given to a model "
                     r"with E = 3"):
    exporter.export_run(trained[0], str(tmp_path / "t"),
                        thresholds=[0.5, 0.5])
  with pytest.raises(errors.InputError, match="platforms"):
    exporter.export_run(trained[0], str(tmp_path / "p"), platforms=["gpu"])
  assert not any(tmp_path.iterdir())  # Nothing half-written is left.
