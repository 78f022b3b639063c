"""Method comparison: per-exit accuracy of every training objective, with
paired confidence intervals and the seed papers' claims.

  python -m benchmarks.methods --protocol=fashion_mnist_limited   # 5 seeds
  python -m benchmarks.methods --protocol=fashion_mnist_full      # 3 seeds
  python -m benchmarks.methods --protocol=digits                  # 5 seeds

A protocol fixes the data set, settings, methods, seeds and budget (see
PROTOCOLS); any flag given explicitly overrides it. For every (setting,
method, seed) one run is trained in
`<workroot>/<name>/<setting>/<method>/seed<k>` with
`mexd.trainer.train_and_evaluate`, then the script writes

* `<out>/methods_<name>.json`: every run's per-exit val/test accuracy, steps
  and wall-clock; per method the mean +- std over seeds and the paired
  difference to its reference (CE; students: the CE-trained student) with a
  95 % Student-t interval; the claims table (benchmarks/claims.py); the
  anytime and budgeted-batch curves of every seed with their mean and
  spread; the exact command, git commit, date and hardware;
* `docs/results_<name>.md`: the tables and the claims;
* `<out>/methods_<name>_<setting>_{exits,diff,anytime,budget}.png`.

Settings: "full" is the recipe's default data; "limited" its data-limited
variant (digits: 10 labeled images per class; Fashion-MNIST: 100; the rest
of train is the unlabeled pool). In the limited setting the labeled subset
is drawn per seed (config.data.split_seed = seed), so which images are
labeled is part of the seed-to-seed spread and of the pairing. Rows are
`mexd.losses` names plus:

* pl_semisup: P&L that also distils on the unlabeled pool, at the recipe's
  epochs counted over labeled images (twice the optimizer steps of the
  labeled-only runs, as half of every batch is unlabeled);
* pl_semisup_eqsteps: the same with the epochs scaled so that it takes as
  many optimizer steps as the labeled-only runs;
* erde, kd: the student network (digits: widths (16, 32, 64); Fashion-MNIST:
  half width) taught by a converged CE teacher of the same setting and seed
  ("ce_teacher", trained first; `--teacher_epochs`, default the recipe's
  full budget), whose own accuracy is a row of the table; "ce_student" (the
  student trained with CE) is added as their baseline.

Resumable: a run whose workdir holds a results.json of the same config is
read back, not retrained; an unfinished one resumes from its checkpoint. A
study can therefore span several sittings: rerun the same command.

The pieces: benchmarks/rows.py (row names and order), study.py (configs,
plan, runs), ledger.py (committed run records), curves.py, tables.py,
claims.py (paired statistics), plots.py and report.py (the outputs).
"""

import os
import time
from typing import Dict, List

from absl import app
from absl import flags

from benchmarks import common
from benchmarks import report as report_lib
from benchmarks import rows
from benchmarks import study

_ALL = rows.ALL_METHODS

# Named studies. Flags given on the command line override these fields.
PROTOCOLS = {
    # The data-limited setting at the recipe's budget (100 epochs over the
    # 1,000 labeled images, cosine schedule). The budget controls below show
    # that the early exits still gain from a longer schedule.
    "fashion_mnist_limited": dict(
        data="fashion_mnist", settings=["limited"], methods=list(_ALL),
        seeds=["0", "1", "2", "3", "4"], epochs=""),
    # Budget controls of the limited setting: CE and P&L at 2x and 4x the
    # recipe's epochs (a cosine schedule, so each budget is its own run).
    "fashion_mnist_limited_2x": dict(
        data="fashion_mnist", settings=["limited"], methods=["ce", "pl"],
        seeds=["0", "1", "2"], epochs="200", kd=False),
    "fashion_mnist_limited_4x": dict(
        data="fashion_mnist", settings=["limited"], methods=["ce", "pl"],
        seeds=["0"], epochs="400", kd=False),
    # Full data at 5 of the recipe's 20 epochs (on 2 CPU cores one epoch is
    # ~2 min per run); the teacher of erde / kd at the full 20.
    "fashion_mnist_full": dict(
        data="fashion_mnist", settings=["full"], methods=list(_ALL),
        seeds=["0", "1", "2"], epochs="5", teacher_epochs=20,
        teacher_seed=0),
    # Both digits settings at the recipe's budgets (40 / 200 epochs).
    "digits": dict(data="digits", settings=["full", "limited"],
                   methods=list(_ALL), seeds=["0", "1", "2", "3", "4"],
                   epochs=""),
    # Budget control of the digits limited setting: CE and P&L at 2x the
    # recipe's 200 epochs.
    "digits_limited_2x": dict(
        data="digits", settings=["limited"], methods=["ce", "pl"],
        seeds=["0", "1", "2", "3", "4"], epochs="400", kd=False),
    # CI: every row and code path at a tiny budget.
    "smoke": dict(data="digits", settings=["full", "limited"],
                  methods=list(_ALL), seeds=["0", "1"], epochs="1",
                  teacher_epochs=1),
}

FLAGS = flags.FLAGS
flags.DEFINE_enum("protocol", None, list(PROTOCOLS), "A named study (sets "
                  "data, settings, methods, seeds, epochs, teacher_epochs; "
                  "explicit flags override it).")
flags.DEFINE_enum("data", "digits", list(rows.DATA), "Data set.")
flags.DEFINE_list("settings", ["full", "limited"], "full and/or limited.")
flags.DEFINE_list("methods", list(_ALL), "Methods (mexd.losses names, "
                  "pl_semisup, pl_semisup_eqsteps, ce_student).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
flags.DEFINE_string("epochs", "", "Epoch override: N for every setting, or "
                    "'full=N,limited=M' (empty: the config's default).")
flags.DEFINE_integer("teacher_epochs", None, "Epochs of the erde/kd teacher "
                     "(default: the recipe's full budget).")
flags.DEFINE_integer("teacher_seed", None, "One teacher of this seed for "
                     "every seed (default: each seed its own teacher).")
flags.DEFINE_string("model", "", "Model overrides for every run, e.g. "
                    "'head=conv,downsample=maxpool' (keys of the recipe's "
                    "model.kwargs; values are Python literals or strings).")
flags.DEFINE_list("set", [], "Config overrides for every run, e.g. "
                  "'loss.pl.global_scale=2' (dotted field=Python literal).")
flags.DEFINE_string("name", None, "Name of the study's outputs and workroot "
                    "folder (default: the protocol, else the data set).")
flags.DEFINE_string("ledger", os.path.join(common.RESULTS, "runs"),
                    "Folder of the per-run JSON records (<ledger>/<name>/...),"
                    " committed so that a study resumes on a fresh machine; "
                    "empty: none.")
flags.DEFINE_bool("split_per_seed", True, "Limited setting: draw the labeled "
                  "subset with the run's seed (else split_seed 0).")
flags.DEFINE_string("out", common.RESULTS,
                    "Folder of the JSON and PNG outputs.")
flags.DEFINE_string("docs", os.path.join(common.ROOT, "docs"),
                    "Folder of results_<name>.md.")
flags.DEFINE_string("workroot", "/tmp/mexd-methods", "Root of the run "
                    "directories (a study's runs go to <workroot>/<name>).")
flags.DEFINE_integer("jobs", 1, "Runs trained in parallel processes.")
flags.DEFINE_bool("kd", True, "With erde, also run plain KD (kd).")
flags.DEFINE_bool("curves", True, "Anytime and budgeted-batch curves.")
flags.DEFINE_bool("report_only", False, "Train nothing: report the finished "
                  "runs of the sweep and list the others as missing.")
flags.DEFINE_list("curve_seeds", None, "Seeds whose logits feed the curves "
                  "(default: every seed).")


def apply_protocol() -> str:
  """Fills the flags not given on the command line from --protocol.

  Returns the study name (--name, else the protocol, else the data set).
  """
  if FLAGS.protocol:
    for field, value in PROTOCOLS[FLAGS.protocol].items():
      if not FLAGS[field].present:
        FLAGS[field].value = value
  return FLAGS.name or FLAGS.protocol or FLAGS.data


def main(argv):
  del argv
  name = apply_protocol()
  seeds = [int(s) for s in FLAGS.seeds]
  curve_seeds = (None if FLAGS.curve_seeds is None
                 else [int(s) for s in FLAGS.curve_seeds])
  epochs = study.parse_epochs(FLAGS.epochs)
  for s in FLAGS.settings:
    if s not in ("full", "limited"):
      raise app.UsageError(f"unknown setting {s!r}")
  workroot = os.path.join(FLAGS.workroot, name)
  tasks = study.plan(
      FLAGS.data, FLAGS.settings, FLAGS.methods, seeds, epochs, workroot,
      curve_seeds, FLAGS.kd, FLAGS.teacher_epochs,
      study.parse_model(FLAGS.model), FLAGS.split_per_seed,
      os.path.join(FLAGS.ledger, name) if FLAGS.ledger else None,
      FLAGS.teacher_seed, study.parse_model(",".join(FLAGS.set)))
  for t in tasks:
    t["report_only"] = FLAGS.report_only
  args = {"data": FLAGS.data, "out": FLAGS.out, "name": name,
          "command": common.command_line(
              drop=("--report_only", "--report_only=true")),
          "flags": {f: FLAGS[f].value for f in (
              "protocol", "data", "settings", "methods", "seeds", "epochs",
              "teacher_epochs", "teacher_seed", "model", "set",
              "split_per_seed", "workroot", "jobs", "kd", "report_only")}}
  t0 = time.time()
  records: List[Dict] = []
  total = len(tasks)

  def on_done(rec):
    records.append(rec)
    state = ("error" if "error" in rec else
             "reused" if rec.get("reused") else
             f"{rec['wall_seconds']:.0f}s")
    acc = " ".join(f"{100 * a:.1f}" for a in rec.get("test_acc", []))
    print(f"[methods] {len(records)}/{total} {rec['setting']}/"
          f"{rec['method']}/seed{rec['seed']}: {state} test acc {acc} "
          f"(sweep {time.time() - t0:.0f}s)", flush=True)
    # Partial results survive an interrupted sweep (no curves/plots yet).
    report_lib.write_outputs(
        report_lib.build_report(records, args, time.time() - t0, False),
        FLAGS.docs, plots=False)

  study.run_tasks(tasks, FLAGS.jobs, on_done)
  report = report_lib.build_report(records, args, time.time() - t0,
                                   FLAGS.curves)
  report_lib.write_outputs(report, FLAGS.docs)
  print(f"[methods] wrote {FLAGS.out}/methods_{name}.json and "
        f"{FLAGS.docs}/results_{name}.md in {time.time() - t0:.0f}s")


if __name__ == "__main__":
  app.run(main)
