"""Exports a trained run for deployment: `python -m mexd.export`.

  python -m mexd.evaluate --workdir=runs/digits          # calibrates the rule
  python -m mexd.export --workdir=runs/digits --out=export/digits
  python -m mexd.serve export/digits --port=8000

writes one self-describing folder (docs/deployment.md; layout:
`mexd.deploy.artifact`): every stage as a `jax.export` program with a
symbolic batch dimension, the weights as arrays beside them, the calibrated
exit rule from the run's exit_policy.json, per-exit MACs, class names,
preprocessing constants, the jax/jaxlib versions and the sha256 of every
file. A run without exit_policy.json is refused unless --thresholds (and
--exit_policy_name) are given. `mexd.deploy.load(DIR)` runs the folder with
jax and NumPy only.

The library function is `mexd.exporter.export_run`.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from mexd import errors
from mexd import exporter

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("workdir", None, "A trained run's work directory.",
                      required=True)
  flags.DEFINE_string("out", None, "The export folder to write.",
                      required=True)
  flags.DEFINE_string("policy", "", "exit_policy.json to export (default "
                      "<workdir>/exit_policy.json, written by "
                      "python -m mexd.evaluate).")
  flags.DEFINE_list("thresholds", None, "Thresholds t0,...,t_{E-1} (the "
                    "last taken as -inf) instead of a calibrated rule.")
  flags.DEFINE_string("exit_policy_name", "max_prob", "The exit policy of "
                      "--thresholds: max_prob, entropy, margin, patience.")
  flags.DEFINE_list("platforms", list(exporter.DEFAULT_PLATFORMS),
                    "Platforms to lower the programs for (cpu, cuda, rocm, "
                    "tpu).")
  flags.DEFINE_list("class_names", None, "Class names (default the data "
                    "set's; else the class indices).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing --out.")


def _thresholds(values):
  if values is None:
    return None
  try:
    return [float(v) for v in values]
  except ValueError:
    raise errors.InputError(f"--thresholds={','.join(values)}: expected "
                            "numbers (or -inf / inf)") from None


def main(argv):
  if len(argv) > 1:
    print(f"mexd.export: error: unexpected arguments {argv[1:]}; flags are "
          "--name=value", file=sys.stderr)
    raise SystemExit(2)
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  with errors.one_line_errors("mexd.export"):
    manifest = exporter.export_run(
        FLAGS.workdir, FLAGS.out, policy_file=FLAGS.policy or None,
        thresholds=_thresholds(FLAGS.thresholds),
        policy=FLAGS.exit_policy_name, platforms=FLAGS.platforms,
        class_names=FLAGS.class_names, overwrite=FLAGS.overwrite)
  p = manifest["policy"]
  size = sum(f["bytes"] for f in manifest["files"].values())
  print(f"exported {FLAGS.workdir} (step {manifest['source']['step']}) to "
        f"{FLAGS.out}: {manifest['num_exits']} stages for "
        f"{','.join(manifest['platforms'])}, {size / 1e6:.2f} MB; policy "
        f"{p['name']}, thresholds {p['thresholds']}; exit MACs "
        f"{[round(m) for m in manifest['exit_macs']]}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
