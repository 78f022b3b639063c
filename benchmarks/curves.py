"""Anytime and budgeted-batch curves of the study's runs.

Anytime: the exits' MACs per image vs their test accuracy. Budgeted batch
(MSDNet's protocol, max-prob policy): for each fraction p the thresholds
come from the run's validation logits (`mexd.early_exit.msdnet_sweep`), and
the test set gives the average MACs and accuracy at those thresholds.
"""

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from benchmarks import rows
from mexd import early_exit as ee


def of_run(r: Dict) -> Optional[Dict[str, Any]]:
  """Anytime and budgeted-batch (MSDNet, max-prob) curves of one run."""
  path = os.path.join(r["workdir"], "logits.npz")
  if not r.get("exit_macs") or not os.path.exists(path):
    return None
  z = np.load(path)
  macs = np.asarray(r["exit_macs"], np.float64)
  ps, th = ee.msdnet_sweep(z["val"], policy="max_prob")
  c = ee.evaluate_curve(z["test"], z["test_labels"], th, "max_prob", macs)
  return {"p": np.asarray(ps).tolist(),
          "avg_macs": np.asarray(c["avg_cost"]).tolist(),
          "test_acc": np.asarray(c["accuracy"]).tolist()}


def for_records(records: Sequence[Dict]) -> Dict[str, Dict]:
  """Per setting and method: the curves of every seed and their mean / std.

  Anytime: exit MACs vs per-exit test accuracy. Budgeted batch: for each
  MSDNet p (thresholds from that seed's validation logits) the average
  MACs and test accuracy; the band is the spread over seeds at equal p.
  """
  out: Dict[str, Dict] = {}
  groups: Dict[Tuple[str, str], List[Dict]] = {}
  for r in rows.finished(records):
    c = r.get("curves") or of_run(r)
    if c is None:
      continue
    groups.setdefault((r["setting"], r["method"]), []).append(
        dict(c, seed=r["seed"], exit_macs=r["exit_macs"],
             anytime_test_acc=list(map(float, r["test_acc"]))))
  for (setting, method), runs in groups.items():
    runs.sort(key=lambda c: c["seed"])
    cost = np.asarray([c["avg_macs"] for c in runs])
    acc = np.asarray([c["test_acc"] for c in runs])
    anytime = np.asarray([c["anytime_test_acc"] for c in runs])
    ddof = 1 if len(runs) > 1 else 0
    out.setdefault(setting, {})[method] = {
        "seeds": [c["seed"] for c in runs],
        "exit_macs": runs[0]["exit_macs"],
        "anytime_mean": anytime.mean(0).tolist(),
        "anytime_std": anytime.std(0, ddof=ddof).tolist(),
        "budgeted": {"p": runs[0]["p"],
                     "avg_macs_mean": cost.mean(0).tolist(),
                     "test_acc_mean": acc.mean(0).tolist(),
                     "test_acc_std": acc.std(0, ddof=ddof).tolist()},
        "per_seed": runs}
  return out
