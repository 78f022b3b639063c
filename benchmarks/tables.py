"""Aggregates over seeds and the markdown tables of the method comparison.

Accuracies are fractions; tables print percent (mean ± sample std over
seeds) and paired differences in points with their 95 % interval
(benchmarks/claims.py).
"""

from typing import Any, Dict, List, Sequence

import numpy as np

from benchmarks import claims as claims_lib
from benchmarks import rows


def aggregate(values: Sequence[Sequence[float]]) -> Dict[str, Any]:
  """Per-exit mean and sample std (ddof=1; 0 for one seed) over seeds.

  Args:
    values: [S][E] accuracies of S seeds.

  Returns:
    {"mean": [E], "std": [E], "n": S}.
  """
  a = np.asarray(values, np.float64)
  if a.ndim != 2 or a.shape[0] == 0:
    raise ValueError(f"values must be [seeds, exits], got shape {a.shape}")
  std = a.std(0, ddof=1) if a.shape[0] > 1 else np.zeros(a.shape[1])
  return {"mean": a.mean(0).tolist(), "std": std.tolist(), "n": a.shape[0]}


def format_cell(mean: float, std: float, n: int, digits: int = 1) -> str:
  """'97.3 ± 0.4' in percent (no ± part for a single seed)."""
  if n <= 1:
    return f"{100 * mean:.{digits}f}"
  return f"{100 * mean:.{digits}f} ± {100 * std:.{digits}f}"


def aggregate_records(records: Sequence[Dict]) -> Dict[str, Dict]:
  """{setting: {method: {test_acc, val_acc: aggregate(), diff, ...}}}.

  "diff" is the paired difference of the method's test accuracy to its
  `reference_of` row over their common seeds (claims.paired_diff, plus
  "reference" and "seeds"), "val_diff" the same on validation.
  """
  out: Dict[str, Dict] = {}
  for r in rows.finished(records):
    out.setdefault(r["setting"], {}).setdefault(r["method"], []).append(r)
  agg = {}
  for setting, by_method in out.items():
    agg[setting] = {}
    acc = {split: {m: {r["seed"]: r[f"{split}_acc"] for r in rs}
                   for m, rs in by_method.items()}
           for split in ("test", "val")}
    for method in sorted(by_method, key=rows.order_key):
      rs = sorted(by_method[method], key=lambda r: r["seed"])
      a = {
          "seeds": [r["seed"] for r in rs],
          "test_acc": aggregate([r["test_acc"] for r in rs]),
          "val_acc": aggregate([r["val_acc"] for r in rs]),
          "steps": rs[0]["steps"], "epochs": rs[0].get("epochs"),
          "train_seconds_mean": float(np.mean([r["train_seconds"]
                                               for r in rs])),
          "wall_seconds_mean": float(np.mean([r["wall_seconds"]
                                              for r in rs])),
          "student": method in rows.STUDENT_METHODS}
      ref = rows.reference_of(method)
      if ref is not None:
        for split, key in (("test", "diff"), ("val", "val_diff")):
          d = claims_lib.paired_by_seed(acc[split], method, ref)
          if d is not None:
            a[key] = dict(d, reference=ref)
      agg[setting][method] = a
  return agg


def per_setting_accuracy(records: Sequence[Dict], split: str = "test"
                         ) -> Dict[str, Dict[str, Dict[int, List[float]]]]:
  """setting -> method -> {seed: [E] accuracies} of the finished rows."""
  out: Dict[str, Dict] = {}
  for r in rows.finished(records):
    out.setdefault(r["setting"], {}).setdefault(r["method"], {})[
        r["seed"]] = r[f"{split}_acc"]
  return out


def markdown_table(agg_setting: Dict[str, Dict], digits: int = 1,
                   split: str = "test") -> str:
  """Rows = methods, columns = exits ("mean ± std" accuracy, %)."""
  key = f"{split}_acc"
  num_exits = max(len(a[key]["mean"]) for a in agg_setting.values())
  head = (["method"] + [f"exit {k}" for k in range(num_exits)]
          + ["seeds", "steps", "train s / run"])
  lines = ["| " + " | ".join(head) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
  for method, a in agg_setting.items():
    t = a[key]
    cells = [format_cell(m, s, t["n"], digits)
             for m, s in zip(t["mean"], t["std"])]
    cells += [""] * (num_exits - len(cells))
    name = f"{method} (student)" if a.get("student") else method
    lines.append("| " + " | ".join(
        [name] + cells + [str(t["n"]), str(a["steps"]),
                          f"{a['train_seconds_mean']:.0f}"]) + " |")
  return "\n".join(lines)


def diff_table(agg_setting: Dict[str, Dict], key: str = "diff") -> str:
  """Rows = methods, columns = exits: paired Δ vs the reference [95 % CI]."""
  diffs = {m: a[key] for m, a in agg_setting.items() if key in a}
  if not diffs:
    return ""
  num_exits = max(len(d["mean"]) for d in diffs.values())
  head = (["method", "vs"] + [f"exit {k}" for k in range(num_exits)]
          + ["seeds"])
  lines = ["| " + " | ".join(head) + " |",
           "|" + "|".join(["---", "---"] + ["---:"] * (num_exits + 1)) + "|"]
  for method, d in diffs.items():
    lines.append("| " + " | ".join([method, d["reference"]] + ci_cells(d)
                                   + [str(d["n"])]) + " |")
  return "\n".join(lines)


def ci_cells(d: Dict[str, Any], bold: bool = True) -> List[str]:
  """Per exit "mean [lo, hi]" of a paired difference (claims.paired_diff).

  Bold where the interval excludes 0 (when `bold`).
  """
  cells = []
  for m, lo, hi in zip(d["mean"], d["lo"], d["hi"]):
    c = claims_lib.format_ci(m, lo, hi)
    cells.append(f"**{c}**" if bold and (lo > 0 or hi < 0) else c)
  return cells
