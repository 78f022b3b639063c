"""Streaming input pipeline (mexd.data.stream) throughput on ImageNet-like JPEGs.

Writes a mock tfds `imagenet2012` (array_record) of `--num` JPEGs shaped
like ImageNet's (375 x 500 class patterns plus noise, quality 90: ~110 KB
each, as ImageNet's average), then measures, interleaved, medians of
`--reps`:

* per core (one process, no threads): full JPEG decode; the training crop
  (`image_ops.random_resized_crop` at `--size`, with the JPEG draft) and the
  same crop from a full decode; the evaluation center crop;
* the pipeline: `TrainStream.host_batches` drained for `--steps` batches of
  `--batch` with `--workers` decoding processes each (0: the training
  process with read threads); the wall time includes starting the workers
  (reported apart as the time to the first batch), so the rate is a lower
  bound of the steady state; `img_s_after_first` counts the batches after
  the first over the time after it (an upper bound: up to two batches per
  worker may be ready by then);
* host cores needed per accelerator chip: a published ResNet-50 training
  rate (`--chip_rates`) divided by the per-core crop rate.

Usage:
  python -m benchmarks.stream_pipeline
  python -m benchmarks.stream_pipeline --workers=0,1,2 --steps=20
"""

import os
import tempfile
import time

from absl import app
from absl import flags
import ml_collections
import numpy as np

from benchmarks import common
from mexd.data import image_ops
from mexd.data import mock
from mexd.data import stream

FLAGS = flags.FLAGS
flags.DEFINE_integer("num", 256, "JPEGs in the mock train split.")
flags.DEFINE_integer("size", 224, "Output side of the crops.")
flags.DEFINE_integer("batch", 32, "Global (= host) batch of the pipeline.")
flags.DEFINE_integer("steps", 40, "Batches per pipeline measurement.")
flags.DEFINE_list("workers", ["0", "1", "2"], "Worker-process counts.")
flags.DEFINE_integer("reps", 3, "Interleaved repetitions.")
flags.DEFINE_string("data_dir", None, "Reuse/write the mock set here "
                    "(default: a temporary folder).")
# ResNet-50 training images/s of one chip, with where the number is from.
CHIP_RATES = {
    "A100-80GB (PyTorch AMP, DALI)": (
        2470.0, "NVIDIA DeepLearningExamples, PyTorch ResNet50 v1.5 README, "
        "training performance, 1x A100 80GB mixed precision, "
        "pytorch-21.03 container"),
    "H100-SXM5 (MLPerf Training v3.0, estimated)": (
        6900.0, "MLPerf Training v3.0 closed, 8x H100 ResNet-50 in 13.47 "
        "min (NVIDIA's results page); assumes ~35 epochs of 1.28 M images, "
        "eval time included: 1.28e6 * 35 / 808 s / 8"),
}
common.define_flags("stream_pipeline")
flags.adopt_module_key_flags(common)


def write_mock(data_dir: str, num: int) -> None:
  """A mock imagenet2012 train split of `num` ImageNet-like JPEGs."""
  if os.path.exists(os.path.join(data_dir, "imagenet2012")):
    return
  classes = 8
  mock_kw = dict(per_class={"train": max(1, num // classes),
                            "validation": 1},
                 classes=range(classes), sizes=(375, 500))
  # Noise 30 at 375 x 500 and JPEG quality 90: ~110 KB, ImageNet's mean.
  mock.write_tfds(data_dir, "imagenet2012", noise=30.0, **mock_kw)


def per_core(records, size: int):
  """{name: seconds per image} of the host ops over `records`' images."""
  blobs = [records[i]["image"] for i in range(len(records))]
  rng = np.random.default_rng(0)

  def full_decode_crop(data):
    top, left, h, w = image_ops.crop_box(*image_ops.decode(data).shape[:2],
                                         rng)
    image = image_ops.decode(data)[top:top + h, left:left + w]
    from PIL import Image  # pylint: disable=g-import-not-at-top
    return np.asarray(Image.fromarray(image).resize((size, size),
                                                    Image.BILINEAR))

  ops = {
      "decode (full)": image_ops.decode,
      "random-resized crop (draft)": lambda d: image_ops.random_resized_crop(
          d, rng, size),
      "random-resized crop (full decode)": full_decode_crop,
      "center crop (draft)": lambda d: image_ops.center_crop(d, size),
  }
  return {k: (lambda fn=fn: [fn(b) for b in blobs]) for k, fn in ops.items()
          }, len(blobs), float(np.mean([len(b) for b in blobs]))


def main(argv):
  del argv
  common.setup_from_flags()
  env = common.environment()
  data_dir = FLAGS.data_dir or tempfile.mkdtemp(prefix="mexd-stream-")
  write_mock(data_dir, FLAGS.num)
  cfg = ml_collections.ConfigDict(dict(
      name="tfds:imagenet2012", data_dir=data_dir, image_size=FLAGS.size,
      val_size=1, split_seed=0, mean=(0.5,) * 3, std=(0.25,) * 3))
  splits, _ = stream.load_splits(cfg)
  records = splits["train"].records
  ops, n_images, mean_bytes = per_core(records, FLAGS.size)
  workers = [int(w) for w in FLAGS.workers]
  streams = {w: stream.TrainStream(splits["train"], FLAGS.batch, seed=0,
                                   workers=w) for w in workers}
  times = {k: [] for k in ops}
  times.update({f"pipeline, {w} workers": [] for w in workers})
  first = {w: [] for w in workers}  # Seconds to the first batch.
  for rep in range(FLAGS.reps):
    for k, fn in ops.items():
      times[k].append(common.timeit(fn))
    for w, ts in streams.items():
      t0 = time.perf_counter()
      it = ts.host_batches(rep * FLAGS.steps, (rep + 1) * FLAGS.steps)
      next(it)
      first[w].append(time.perf_counter() - t0)
      for _ in it:
        pass
      times[f"pipeline, {w} workers"].append(time.perf_counter() - t0)
  rows = []
  crop_rate = None
  for k, ts in times.items():
    count = n_images if k in ops else FLAGS.steps * FLAGS.batch
    rate = count / common.median(ts)
    if k == "random-resized crop (draft)":
      crop_rate = rate
    w = int(k.split(", ")[1].split()[0]) if k.startswith("pipeline") else None
    after = None
    if w is not None:  # Batches after the first, over the time after it.
      after = common.median([(FLAGS.steps - 1) * FLAGS.batch / (t - f)
                             for t, f in zip(ts, first[w])])
    rows.append({"stage": k, "img_s": rate, "times_s": ts,
                 "first_batch_s": None if w is None else common.median(
                     first[w]), "img_s_after_first": after})
  chips = [{"chip": name, "train_img_s": r, "source": src,
            "host_cores": r / crop_rate} for name, (r, src) in
           CHIP_RATES.items()]
  print(f"\n{n_images} JPEGs, mean {mean_bytes / 1024:.0f} KB, crops to "
        f"{FLAGS.size}; {common.cpu_model()}; load {common.loadavg()}")
  print(common.format_table(
      rows, ("stage", "img_s", "first_batch_s", "img_s_after_first"),
      {"img_s": ".0f", "first_batch_s": ".2f", "img_s_after_first": ".0f"}))
  print(common.format_table(chips, ("chip", "train_img_s", "host_cores"),
                            {"train_img_s": ".0f", "host_cores": ".1f"}))
  common.write_record("stream_pipeline", rows, env, mean_jpeg_bytes=mean_bytes,
                      images=n_images, chips=chips,
                      crop_img_s_per_core=crop_rate)


if __name__ == "__main__":
  app.run(main)
