"""Ablations of the method comparison: which setting choice hides a claim.

  python -m benchmarks.ablation --ablation=fashion_mnist_limited_arch

An ablation trains the same rows (e.g. CE and P&L) under several variants
of the recipe (model options, config overrides), with the runs, ledger and
resume of the method comparison (benchmarks/study.py: finished runs are read
back, so the command resumes an interrupted ablation on any machine), and
writes
`docs/results_<ablation>.md` and `benchmarks/results/<ablation>.json`:

* per variant and row, per-exit **validation** accuracy (mean ± std over
  seeds): every choice is made on validation; test accuracy is shown beside
  it for reference only;
* per variant, the paired difference of each row to its reference (P&L −
  CE, same seed, same labeled subset) with a 95 % Student-t interval, on
  validation and on test;
* per row, the paired difference of each variant to the first (baseline)
  variant.
"""

import datetime
import json
import os
from typing import Any, Dict, List

from absl import app
from absl import flags

from benchmarks import claims as claims_lib
from benchmarks import common
from benchmarks import methods
from benchmarks import report
from benchmarks import study
from benchmarks import tables

# name -> the study: data, setting, rows, seeds and its variants (the first
# is the baseline). A variant: its study name (ledger folder), model options
# and config overrides.
ABLATIONS = {
    "fashion_mnist_limited_arch": dict(
        data="fashion_mnist", setting="limited", methods=["ce", "pl"],
        seeds=[0, 1, 2],
        title="Fashion-MNIST, data-limited: exit heads and down-sampling",
        variants=[
            dict(name="fm_limited_arch_pool_dense", label="pool → dense "
                 "heads, strided convs (the small CNN's default)",
                 model="head=pool_dense,downsample=stride"),
            dict(name="fm_limited_arch_conv", label="conv heads, strided "
                 "convs", model="head=conv,downsample=stride"),
            dict(name="fm_limited_arch_conv_maxpool", label="conv heads, "
                 "max-pool down-sampling",
                 model="head=conv,downsample=maxpool"),
        ]),
}

# --workroot, --ledger, --out, --docs, --seeds (default: the ablation's) and
# --report_only are benchmarks/methods.py's flags (imported for them).
FLAGS = flags.FLAGS
flags.DEFINE_enum("ablation", "fashion_mnist_limited_arch", list(ABLATIONS),
                  "The ablation to run.")
flags.adopt_module_key_flags(methods)


def run_variants(spec: Dict[str, Any], seeds: List[int], workroot: str,
                 ledger: str, report_only: bool = False
                 ) -> Dict[str, List[Dict]]:
  """{variant name: run records}, seed-major over the variants."""
  out = {v["name"]: [] for v in spec["variants"]}
  for seed in seeds:
    for v in spec["variants"]:
      tasks = study.plan(
          spec["data"], [spec["setting"]], v.get("methods", spec["methods"]),
          [seed], ({"*": spec["epochs"]} if spec.get("epochs") else {}),
          os.path.join(workroot, v["name"]), curve_seeds=[],
          model=study.parse_model(v.get("model", "")),
          ledger=os.path.join(ledger, v["name"]),
          overrides=study.parse_model(v.get("set", "")))
      for t in tasks:
        t["report_only"] = report_only
      recs = study.run_tasks(tasks, 1, lambda r: None)
      for r in recs:
        state = "error: " + r["error"] if "error" in r else (
            f"reused ({r['reused']})" if r.get("reused") else "trained")
        print(f"[ablation] {v['name']}/{r['method']}/seed{r['seed']}: "
              f"{state}", flush=True)
      out[v["name"]] += recs
  return out


def _by_method(records, split):
  acc = tables.per_setting_accuracy(records, split)
  return next(iter(acc.values()), {})


def summarize(spec, runs: Dict[str, List[Dict]]) -> Dict[str, Any]:
  """Aggregates, within-variant and across-variant paired differences."""
  base = spec["variants"][0]["name"]
  out = {"variants": []}
  for v in spec["variants"]:
    recs = runs[v["name"]]
    entry = {"name": v["name"], "label": v["label"],
             "model": v.get("model", ""), "set": v.get("set", ""),
             "aggregates": tables.aggregate_records(recs).get(
                 spec["setting"], {}), "vs_baseline": {}}
    for split in ("val", "test"):
      mine, ref = _by_method(recs, split), _by_method(runs[base], split)
      for m in mine:
        if v["name"] == base:
          continue
        both = {"a": mine.get(m, {}), "b": ref.get(m, {})}
        d = claims_lib.paired_by_seed(both, "a", "b")
        if d is not None:
          entry["vs_baseline"].setdefault(m, {})[split] = d
    out["variants"].append(entry)
  return out


def _acc_cells(a, key):
  t = a[key]
  return [tables.format_cell(m, s, t["n"]) for m, s in
          zip(t["mean"], t["std"])]


def write_markdown(path: str, spec, summary, command: str, date: str,
                   commit: Dict[str, Any]) -> None:
  lines = [f"# Ablation: {spec['title']}", "",
           f"Rows {', '.join(spec['methods'])}, seeds "
           f"{', '.join(map(str, spec['seeds']))}, the recipe's full budget "
           f"({spec['data']}, setting {spec['setting']}; the labeled subset "
           "is drawn per seed). Choices are made on **validation**; test "
           "accuracy is shown for reference. Δ: paired difference (same "
           "seed), mean [95 % Student-t interval] in points; bold where the "
           "interval excludes 0. Raw numbers: "
           f"`benchmarks/results/{os.path.basename(path)[8:-3]}.json`; "
           "statistics: benchmarks/claims.py.", "",
           "Regenerate (finished runs are read back from the ledger):", "",
           "```bash", command, "```", "",
           f"- git commit: `{commit['commit']}`"
           + (" (with uncommitted changes)" if commit["dirty"] else ""),
           f"- date: {date}", ""]
  for v in summary["variants"]:
    agg = v["aggregates"]
    if not agg:
      lines += [f"## {v['label']}", "", "(no finished runs yet)", ""]
      continue
    opts = ", ".join(x for x in (f"`{v['model']}`" if v["model"] else "",
                                 f"`{v['set']}`" if v["set"] else "") if x)
    lines += [f"## {v['label']}", "", f"Options: {opts}.", ""]
    n_exits = max(len(a["val_acc"]["mean"]) for a in agg.values())
    head = ["row", "split"] + [f"exit {k}" for k in range(n_exits)] + [
        "seeds"]
    lines += ["| " + " | ".join(head) + " |",
              "|" + "|".join(["---", "---"] + ["---:"] * (n_exits + 1)) + "|"]
    for m, a in agg.items():
      for split in ("val", "test"):
        lines.append("| " + " | ".join(
            [m, split] + _acc_cells(a, f"{split}_acc")
            + [str(a[f"{split}_acc"]["n"])]) + " |")
      for split, key in (("val", "val_diff"), ("test", "diff")):
        if key in a:
          d = a[key]
          lines.append("| " + " | ".join(
              [f"Δ {m} − {d['reference']}", split] + tables.ci_cells(d)
              + [str(d["n"])]) + " |")
    lines.append("")
    for m, by_split in v["vs_baseline"].items():
      for split, d in by_split.items():
        cells = tables.ci_cells(d, bold=False)
        lines.append(f"- {m}, this variant − the first, {split}: "
                     + "; ".join(f"exit {k}: {c}" for k, c in
                                 enumerate(cells)) + f" (n = {d['n']})")
    lines.append("")
  lines += [report.NOTES_MARK, ""]
  notes = report.kept_notes(path)
  with open(path, "w") as f:
    f.write("\n".join(lines) + notes + "\n")


def main(argv):
  del argv
  spec = dict(ABLATIONS[FLAGS.ablation])
  if FLAGS["seeds"].present:
    spec["seeds"] = [int(s) for s in FLAGS.seeds]
  runs = run_variants(spec, spec["seeds"], FLAGS.workroot, FLAGS.ledger,
                      FLAGS.report_only)
  summary = summarize(spec, runs)
  command = common.command_line(drop=("--report_only",
                                     "--report_only=true"))
  date = datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds")
  commit = report.git_commit()
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, f"{FLAGS.ablation}.json"), "w") as f:
    json.dump({"ablation": FLAGS.ablation, "command": command, "date": date,
               "git": commit, "spec": spec, "summary": summary,
               "runs": runs}, f, indent=1)
  path = os.path.join(FLAGS.docs, f"results_{FLAGS.ablation}.md")
  write_markdown(path, spec, summary, command, date, commit)
  print(f"[ablation] wrote {path}")


if __name__ == "__main__":
  app.run(main)
