"""The streaming pipeline (mexd.data.stream) on a mock imagenet2012.

The mock is the real tfds imagenet2012 builder prepared in the array_record
format from variable-size JPEG images (mexd.data.mock.write_tfds), read back
record by record exactly as the real set would be. The crops are checked
against Pillow on the decoded image, the batches against the sampler and
against each other (worker processes, resumption, two jax.distributed
processes), and training through the stream against an uninterrupted run.
"""

import io
import json
import os
import socket
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest

from mexd import data as data_lib
from mexd import errors
from mexd.data import base
from mexd.data import image_ops
from mexd.data import mock
from mexd.data import pipeline
from mexd.data import stream

TRAIN_PER_CLASS, TEST_PER_CLASS, CLASSES = 6, 2, 10


@pytest.fixture(scope="module")
def inet(tmp_path_factory):
  """(data_dir, written labels) of a mock imagenet2012: 60 train and 20
  validation JPEGs of 40-120 px sides, labels 0-9 of 1000 classes."""
  root = str(tmp_path_factory.mktemp("imagenet"))
  written = mock.write_tfds(
      root, "imagenet2012",
      per_class={"train": TRAIN_PER_CLASS, "validation": TEST_PER_CLASS},
      classes=range(CLASSES), sizes=(40, 120))
  return root, written


def _cfg(root, **kw):
  return ml_collections.ConfigDict(dict(
      name="tfds:imagenet2012", data_dir=root, image_size=32, val_size=10,
      split_seed=0, **kw))


def _jpeg(image, quality=95):
  return mock.encode(image, "jpeg", quality)


def _pil_reference(data, box, size):
  """Full decode, then Pillow's crop + bilinear resize (no draft)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = Image.open(io.BytesIO(data)).convert("RGB")
  return np.asarray(image.resize((size, size), Image.BILINEAR, box=box))


def test_center_crop_equals_pillow_on_the_decoded_image():
  rng = np.random.default_rng(0)
  image = mock.class_images(rng, np.array([3]), (50, 80, 3), 10)[0]
  png = mock.encode(image, "png")
  got = image_ops.center_crop(png, 16, crop_fraction=0.875)
  side = 0.875 * 50
  box = ((80 - side) / 2, (50 - side) / 2, (80 + side) / 2, (50 + side) / 2)
  np.testing.assert_array_equal(got, _pil_reference(png, box, 16))
  assert got.shape == (16, 16, 3) and got.dtype == np.uint8
  # Grey output from an RGB file, RGB output from a grey one.
  assert image_ops.center_crop(png, 8, channels=1).shape == (8, 8, 1)
  grey = mock.encode(image[..., :1], "png")
  assert image_ops.center_crop(grey, 8).shape == (8, 8, 3)


def test_jpeg_draft_decoding_stays_close_to_the_full_decode():
  # A 400 x 600 JPEG whose crop shrinks 8x is decoded at reduced DCT scale;
  # the result must stay close to cropping the fully decoded image.
  rng = np.random.default_rng(1)
  image = mock.class_images(rng, np.array([5]), (400, 600, 3), 10,
                            noise=5.0)[0]
  data = _jpeg(image)
  got = image_ops.center_crop(data, 40, crop_fraction=1.0)
  want = _pil_reference(data, (100, 0, 500, 400), 40)
  diff = np.abs(got.astype(float) - want)
  assert diff.mean() < 3.0, diff.mean()


def test_crop_box_follows_the_inception_rule():
  rng = np.random.default_rng(0)
  boxes = [image_ops.crop_box(300, 400, rng) for _ in range(2000)]
  for top, left, h, w in boxes:
    assert 0 <= top <= 300 - h and 0 <= left <= 400 - w
  area = np.array([h * w for _, _, h, w in boxes]) / (300 * 400)
  aspect = np.array([w / h for _, _, h, w in boxes])
  assert area.min() >= 0.08 - 0.01 and area.max() <= 1.0
  # Accepted draws are uniform in area among those that fit: mean well
  # above the midpoint of scale is impossible, below 0.3 would be biased.
  assert 0.3 < area.mean() < 0.55
  assert aspect.min() >= 0.75 - 0.02 and aspect.max() <= 4 / 3 + 0.02
  # No crop fits a 1 x 100 strip with ratio <= 4/3: the fallback is the
  # central crop of the whole height with the ratio clamped.
  assert image_ops.crop_box(1, 100, rng) == (0, 49, 1, 1)
  assert image_ops.crop_box(30, 30, np.random.default_rng(0),
                            scale=(1.0, 1.0), ratio=(1.0, 1.0)) == (
                                0, 0, 30, 30)


def test_random_resized_crop_is_the_box_resized():
  rng = np.random.default_rng(2)
  image = mock.class_images(rng, np.array([1]), (60, 90, 3), 10)[0]
  png = mock.encode(image, "png")
  got = image_ops.random_resized_crop(png, np.random.default_rng(7), 24)
  top, left, h, w = image_ops.crop_box(60, 90, np.random.default_rng(7))
  want = _pil_reference(png, (left, top, left + w, top + h), 24)
  np.testing.assert_array_equal(got, want)


def test_splits_carve_validation_from_train_and_read_labels(inet):
  root, written = inet
  splits, idx = stream.load_splits(_cfg(root))
  n = TRAIN_PER_CLASS * CLASSES
  assert len(splits["train"]) == n - 10 and len(splits["val"]) == 10
  assert len(splits["test"]) == TEST_PER_CLASS * CLASSES
  assert not set(idx["train"]) & set(idx["val"])
  assert sorted(set(idx["train"]) | set(idx["val"])) == list(range(n))
  # The same seeded permutation as the in-memory path.
  perm = np.random.default_rng(0).permutation(n)
  np.testing.assert_array_equal(idx["val"], np.sort(perm[n - 10:]))
  train_labels = np.concatenate([splits["train"].labels,
                                 splits["val"].labels])
  np.testing.assert_array_equal(np.bincount(train_labels, minlength=10),
                                np.bincount(written["train_labels"]))
  np.testing.assert_array_equal(
      np.sort(splits["test"].labels), np.sort(written["validation_labels"]))
  s = splits["train"]
  assert s.image_shape == (32, 32, 3) and s.num_classes == 1000
  # mean/std estimated from the center crops of the training images.
  crops = np.stack([s.eval_image(r)[0] for r in range(len(s))])
  np.testing.assert_allclose(s.mean, base.channel_stats(crops)[0], atol=1e-6)
  given, _ = stream.load_splits(_cfg(root, mean=(0.5, 0.4, 0.3),
                                     std=(0.2, 0.2, 0.2)))
  assert given["val"].mean == (0.5, 0.4, 0.3)


def test_batches_are_the_samplers_records_cropped(inet):
  root, _ = inet
  splits, _ = stream.load_splits(_cfg(root))
  train = splits["train"]
  ts = stream.TrainStream(train, 8, seed=3)
  batches = list(ts.host_batches(0, ts.steps_per_epoch))
  assert len(batches) == ts.steps_per_epoch == (60 - 10) // 8
  sampler = pipeline.EpochSampler(len(train), 8, 3)
  seen = []
  for step, b in enumerate(batches):
    assert b["image"].shape == (8, 32, 32, 3) and b["image"].dtype == np.uint8
    assert b["label"].dtype == np.int32
    rows = sampler.indices(step)
    np.testing.assert_array_equal(b["label"], train.labels[rows])
    seen.extend(rows.tolist())
    # Row r is its record's random-resized crop with the (seed, step, r)
    # generator.
    for r in (0, 5):
      ex = train.records[int(train.indices[rows[r]])]
      rng = np.random.default_rng([3, 0x5EED, step, r])
      np.testing.assert_array_equal(
          b["image"][r], image_ops.random_resized_crop(ex["image"], rng, 32))
  assert len(set(seen)) == len(seen)  # No record twice in an epoch.
  # Epoch 2 is another permutation of the same records.
  nxt = ts.host_batch(ts.steps_per_epoch)
  assert not np.array_equal(nxt["label"], batches[0]["label"]) or not (
      np.array_equal(nxt["image"], batches[0]["image"]))


def test_worker_processes_and_resumption_give_identical_batches(inet):
  root, _ = inet
  splits, _ = stream.load_splits(_cfg(root))
  steps = 6  # Crosses an epoch boundary (6 steps per epoch).
  ref = list(stream.TrainStream(splits["train"], 8, seed=0,
                                workers=0).host_batches(0, steps + 2))
  workers = list(stream.TrainStream(splits["train"], 8, seed=0,
                                    workers=4).host_batches(0, steps + 2))
  resumed = list(stream.TrainStream(splits["train"], 8, seed=0,
                                    workers=2).host_batches(4, steps + 2))
  assert len(ref) == len(workers) == steps + 2 and len(resumed) == 4
  for a, b in zip(ref, workers):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  for a, b in zip(ref[4:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
  other_seed = stream.TrainStream(splits["train"], 8, seed=1).host_batch(0)
  assert not np.array_equal(other_seed["image"], ref[0]["image"])


def test_eval_batches_are_padded_center_crops(inet):
  root, _ = inet
  splits, _ = stream.load_splits(_cfg(root))
  test = splits["test"]
  out = list(pipeline.eval_host_batches(test, 8))
  assert [v for _, v in out] == [8, 8, 4]
  labels = np.concatenate([b["label"] for b, _ in out])
  np.testing.assert_array_equal(labels[:20], test.labels)
  assert (labels[20:] == -1).all()
  np.testing.assert_array_equal(out[1][0]["image"][3], test.eval_image(11)[0])


_TWO_PROCESSES = textwrap.dedent("""
    import sys
    import jax
    jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", num_processes=2,
                               process_id=int(sys.argv[2]))
    import ml_collections, numpy as np
    from mexd.data import pipeline, stream
    cfg = ml_collections.ConfigDict(dict(
        name="tfds:imagenet2012", data_dir=sys.argv[3], image_size=32,
        val_size=10, split_seed=0))
    splits, _ = stream.load_splits(cfg)
    ts = stream.TrainStream(splits["train"], 8, seed=0, workers=0)
    train = list(ts.host_batches(0, 2 * ts.steps_per_epoch))
    ev = list(pipeline.eval_host_batches(splits["test"], 8))
    np.savez(sys.argv[4],
             image=np.stack([b["image"] for b in train]),
             label=np.stack([b["label"] for b in train]),
             eval_label=np.stack([b["label"] for b, _ in ev]))
""")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_read_disjoint_shares_of_every_batch(inet, tmp_path):
  root, _ = inet
  script = tmp_path / "read.py"
  script.write_text(_TWO_PROCESSES)
  port = _free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  procs = [subprocess.Popen(
      [sys.executable, str(script), str(port), str(i), root,
       str(tmp_path / f"p{i}.npz")], env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
  parts = [np.load(tmp_path / f"p{i}.npz") for i in range(2)]
  splits, _ = stream.load_splits(_cfg(root))
  ts = stream.TrainStream(splits["train"], 8, seed=0)
  one = list(ts.host_batches(0, 2 * ts.steps_per_epoch))  # Two epochs.
  assert len(parts[0]["image"]) == len(one) == 12
  for step, b in enumerate(one):
    # Process p holds rows [4p, 4p + 4) of the global batch, bit for bit.
    for p in range(2):
      assert parts[p]["image"][step].shape == (4, 32, 32, 3)
      np.testing.assert_array_equal(parts[p]["image"][step],
                                    b["image"][4 * p:4 * p + 4])
      np.testing.assert_array_equal(parts[p]["label"][step],
                                    b["label"][4 * p:4 * p + 4])
  ev = np.concatenate([np.concatenate([parts[0]["eval_label"][g],
                                       parts[1]["eval_label"][g]])
                       for g in range(3)])
  np.testing.assert_array_equal(ev[:20], splits["test"].labels)


def test_missing_or_tfrecord_data_names_the_build_command(inet, tmp_path):
  with pytest.raises(base.DataNotFoundError,
                     match=r"tfds build imagenet2012 --file_format="
                     r"array_record"):
    stream.load_splits(_cfg(str(tmp_path / "nothing")))
  root, _ = inet
  copy = tmp_path / "tfrecord"
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(root, copy)
  info = next(copy.glob("imagenet2012/*/dataset_info.json"))
  meta = json.loads(info.read_text())
  meta["fileFormat"] = "tfrecord"
  info.write_text(json.dumps(meta))
  with pytest.raises(base.DataError, match=r"tfrecord format.*array_record"):
    stream.load_splits(_cfg(str(copy)))
  with pytest.raises(errors.InputError, match="data-limited"):
    stream.load_splits(_cfg(root, labeled_per_class=2))
  with pytest.raises(errors.InputError, match="read into memory"):
    stream.load_splits(ml_collections.ConfigDict(dict(
        name="digits", val_size=10)))
  splits, _ = stream.load_splits(_cfg(root))
  with pytest.raises(errors.InputError, match="crop_scale"):
    stream.TrainStream(splits["train"], 8, 0, scale=(0.5, 0.1))
  with pytest.raises(errors.InputError, match="workers"):
    stream.TrainStream(splits["train"], 8, 0, workers=-1)


def test_stream_is_chosen_by_config_or_by_size(inet):
  root, _ = inet
  assert data_lib.streams(_cfg(root, stream=True))
  assert not data_lib.streams(_cfg(root, stream=False))
  # 60 images of 32x32x3 are 0.17 MiB decoded.
  assert data_lib.streams(_cfg(root, max_gib=1e-4))
  assert not data_lib.streams(_cfg(root))
  splits, _ = data_lib.load_splits(_cfg(root, max_gib=1e-4))
  assert isinstance(splits["train"], stream.StreamSplit)
  with pytest.raises(errors.InputError, match="data.stream must be"):
    data_lib.streams(_cfg(root, stream="yes"))
