"""Exported cascade vs in-process StagedPredictor vs the one-pass network.

For each case the network is exported (`mexd.exporter.export_model`) to a
temporary folder and loaded with `mexd.deploy.load`; then, interleaved,
medians of `--reps`:

* throughput (images/s) on N test images at the exit rule: the exported
  runtime (`Cascade.run`), the in-process `StagedPredictor.run` (same
  weights, same thresholds) and the one-pass jitted forward of every exit
  (in-process, `mexd.cpu.xla_options`);
* ratios: exported / staged (target >= 0.95), and the wall speed-up of the
  exported cascade over the one pass as a fraction of the cost model's
  ideal (ideal = full MACs / mean MACs of the exits taken; target >= 0.8);
* batch-size-1 latency per exit (`predict_one` with thresholds forcing exit
  k) of both, next to the one-pass batch-1 forward.

Cases (`--cases`):
* `run:<workdir>`: a trained run at its calibrated rule (exit_policy.json
  from `python -m mexd.evaluate`), on its test images (uint8);
* `resnet18`: the CIFAR-size multi-exit ResNet-18 (32x32x3, 100 classes,
  random weights: speed does not depend on them) with max-prob thresholds
  that retire half of the live images at every early exit.

Usage:
  python -m benchmarks.deploy --cases=run:/tmp/fm,resnet18
"""

import os
import tempfile

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import common
from benchmarks import fixtures
from mexd import deploy
from mexd import evaluation
from mexd import exit_policy
from mexd import exporter
from mexd import models
from mexd.cpu import xla_options
from mexd.early_exit import policies
from mexd.early_exit import staged

FLAGS = flags.FLAGS
flags.DEFINE_list("cases", ["resnet18"], "run:<workdir> and/or resnet18.")
flags.DEFINE_integer("n", 0, "Images per throughput run (0: the test split "
                     "of a run, 256 for resnet18).")
flags.DEFINE_integer("reps", 5, "Interleaved repetitions.")
flags.DEFINE_integer("latency_reps", 20, "Calls per batch-1 latency.")
common.define_flags("deploy")
flags.adopt_module_key_flags(common)


class Case:
  """What one row measures: model, variables, images, rule, stats."""

  def __init__(self, name, model, variables, images, policy, thresholds,
               mean, std, num_classes):
    self.name, self.model, self.variables = name, model, variables
    self.images, self.policy = images, policy
    self.thresholds = np.asarray(thresholds, np.float32)
    self.mean, self.std, self.num_classes = mean, std, num_classes


def run_case(workdir: str, n: int) -> Case:
  """A trained run at its calibrated rule, on its test images."""
  run = evaluation.load_run(workdir)
  rule = exit_policy.load_exit_policy(workdir)
  images = run.test.images[:n] if n else run.test.images
  return Case(f"{run.config.data.name}/{run.config.model.name}/"
              f"{run.config.method}", run.model, run.variables, images,
              rule["policy"], rule["thresholds"], run.train.mean,
              run.train.std, run.train.num_classes)


def resnet_case(n: int) -> Case:
  """ResNet-18 (CIFAR size, random weights), half of the live images
  leaving at every early exit."""
  model = models.get_model("resnet18", num_classes=100)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n or 256, 32, 32, 3), dtype=np.uint8)
  mean, std = np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32)
  x = (images / 255.0 - mean) / std
  variables = jax.jit(model.init)(jax.random.key(0), x[:1].astype(
      np.float32))
  logits = np.asarray(xla_options.jit(
      lambda v, x: model.apply(v, x, train=False)[0])(variables, x.astype(
          np.float32)))
  theta = fixtures.thresholds_for(
      np.asarray(policies.scores(logits, "max_prob")), 0.5)
  return Case("cifar/resnet18 (random weights)", model, variables, images,
              "max_prob", theta, mean, std, 100)


def measure(case: Case, folder: str, reps: int, latency_reps: int):
  """(throughput row, latency rows) of one case."""
  exporter.export_model(
      case.model, case.variables, folder, policy=case.policy,
      thresholds=case.thresholds, mean=case.mean, std=case.std,
      image_shape=case.images.shape[1:], num_classes=case.num_classes)
  cascade = deploy.load(folder)
  sp = staged.StagedPredictor(case.model, case.variables, case.thresholds,
                              case.policy, mean=case.mean, std=case.std,
                              image_shape=case.images.shape[1:])
  full = xla_options.jit(
      lambda v, x: case.model.apply(v, x, train=False)[0])
  x_dev = jax.device_put(sp.check_images(case.images))
  fns = {"exported": lambda: cascade.run(case.images),
         "staged": lambda: sp.run(case.images),
         "one_pass": lambda: jax.block_until_ready(full(case.variables,
                                                        x_dev))}
  res = cascade.run(case.images)
  assert np.array_equal(res.labels, sp(case.images)[0])
  t = {k: [] for k in fns}
  for fn in fns.values():
    fn()  # Compiles every bucket the run needs.
  for _ in range(reps):
    for k, fn in fns.items():
      t[k].append(common.timeit(fn))
  med = {k: common.median(v) for k, v in t.items()}
  n = case.images.shape[0]
  ideal = cascade.exit_macs[-1] / float(np.mean(res.macs))
  row = {"case": case.name, "n": n,
         "exit_fractions": np.round(np.bincount(
             res.exits, minlength=cascade.num_exits) / n, 3).tolist(),
         **{f"{k}_img_s": n / v for k, v in med.items()},
         "exported_vs_staged": med["staged"] / med["exported"],
         "ideal_speedup": ideal,
         "exported_speedup": med["one_pass"] / med["exported"],
         "staged_speedup": med["one_pass"] / med["staged"]}
  row["fraction_of_ideal"] = row["exported_speedup"] / ideal
  return row, latency(case, cascade, full, x_dev, latency_reps)


def latency(case, cascade, full, x_dev, reps):
  """Batch-1 latency per exit (ms) of the exported and staged paths."""
  e, out = cascade.num_exits, []
  x1 = x_dev[:1]
  one = [common.timeit(lambda: full(case.variables, x1),
                       jax.block_until_ready) for _ in range(reps + 1)][1:]
  for k in range(e):
    theta = np.full(e, np.inf, np.float32)
    theta[k] = -np.inf
    c = deploy.load(cascade.folder, thresholds=theta, verify=False)
    sp = staged.StagedPredictor(case.model, case.variables, theta,
                                case.policy, mean=case.mean, std=case.std)
    img = case.images[0]
    assert c.predict_one(img)[1] == k and sp.predict_one(img)[1] == k
    te = [common.timeit(lambda: c.predict_one(img)) for _ in range(reps)]
    ts = [common.timeit(lambda: sp.predict_one(img)) for _ in range(reps)]
    out.append({"case": case.name, "exit": k,
                "macs_frac": float(cascade.exit_macs[k] /
                                   cascade.exit_macs[-1]),
                "exported_ms": 1e3 * common.median(te),
                "staged_ms": 1e3 * common.median(ts),
                "one_pass_ms": 1e3 * common.median(one)})
  return out


def main(argv):
  del argv
  common.setup_from_flags()
  env = common.environment()
  common.print_device(env)
  rows, lat = [], []
  with tempfile.TemporaryDirectory() as tmp:
    for i, spec in enumerate(FLAGS.cases):
      case = (run_case(spec[4:], FLAGS.n) if spec.startswith("run:")
              else resnet_case(FLAGS.n))
      row, l = measure(case, os.path.join(tmp, str(i)), FLAGS.reps,
                       FLAGS.latency_reps)
      rows.append(row)
      lat += l
  print(f"\nthroughput at the exit rule (load {common.loadavg()})")
  print(common.format_table(rows, (
      "case", "n", "exit_fractions", "exported_img_s", "staged_img_s",
      "one_pass_img_s", "exported_vs_staged", "ideal_speedup",
      "exported_speedup", "fraction_of_ideal"), {
          "exported_img_s": ".0f", "staged_img_s": ".0f",
          "one_pass_img_s": ".0f", "exported_vs_staged": ".3f",
          "ideal_speedup": ".2f", "exported_speedup": ".2f",
          "fraction_of_ideal": ".2f"}))
  print("\nbatch-size-1 latency per exit (ms)")
  print(common.format_table(lat, ("case", "exit", "macs_frac",
                                  "exported_ms", "staged_ms",
                                  "one_pass_ms"), {
      "macs_frac": ".2f", "exported_ms": ".2f", "staged_ms": ".2f",
      "one_pass_ms": ".2f"}))
  common.write_record("deploy", rows, env, latency=lat)


if __name__ == "__main__":
  app.run(main)
