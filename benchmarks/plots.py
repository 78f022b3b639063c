"""The PNG figures of the method comparison (per setting).

`<out>/methods_<name>_<setting>_{exits,diff,anytime,budget}.png`: per-exit
test accuracy, the paired difference to CE, and the anytime and
budgeted-batch curves as mean ± std bands over seeds.
"""

import os
from typing import Dict, List, Tuple

from matplotlib.figure import Figure
import numpy as np

from mexd import early_exit as ee
from mexd.early_exit import plots as ee_plots


# One marker per ten series: matplotlib's colour cycle repeats after ten.
_MARKERS = "os^Dv"


def _marker(i: int) -> str:
  return _MARKERS[(i // 10) % len(_MARKERS)]


def _save_fig(fig, path: str) -> str:
  return ee_plots._save(fig, path)  # pylint: disable=protected-access


def plot_bands(curves: Dict[str, Tuple], path: str, *, title: str,
               xlabel: str, ylabel: str) -> str:
  """Mean curves with a ± std band: name -> (x [P], mean [P], std [P])."""
  fig = Figure(figsize=(6, 4.2))
  ax = fig.add_subplot()
  for i, (name, (x, m, sd)) in enumerate(curves.items()):
    x, m, sd = (np.asarray(v, float) for v in (x, m, sd))
    o = np.argsort(x, kind="stable")
    line, = ax.plot(x[o], m[o], marker="." if i < 10 else _marker(i),
                    markersize=None if i < 10 else 4, label=name)
    ax.fill_between(x[o], (m - sd)[o], (m + sd)[o], alpha=0.15,
                    color=line.get_color(), linewidth=0)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="lower right", ncol=2)
  return _save_fig(fig, path)


def plot_diffs(diffs: Dict[str, Dict], path: str, *, title: str) -> str:
  """Paired Δ vs the reference per exit, 95 % CI error bars (points)."""
  fig = Figure(figsize=(6.5, 4.2))
  ax = fig.add_subplot()
  n = max(len(d["mean"]) for d in diffs.values())
  width = 0.8 / max(len(diffs), 1)
  for i, (name, d) in enumerate(diffs.items()):
    m = 100 * np.asarray(d["mean"])
    lo, hi = 100 * np.asarray(d["lo"]), 100 * np.asarray(d["hi"])
    lo, hi = np.where(np.isfinite(lo), lo, m), np.where(np.isfinite(hi), hi, m)
    x = np.arange(m.size) + (i - (len(diffs) - 1) / 2) * width
    ax.errorbar(x, m, yerr=[m - lo, hi - m], fmt=_marker(i), capsize=3,
                label=f"{name} − {d['reference']}")
  ax.axhline(0, color="k", linewidth=0.8)
  ax.set_xticks(np.arange(n))
  ax.set_xticklabels([f"exit {k}" for k in range(n)])
  ax.set_ylabel("paired Δ test accuracy (points), 95 % CI")
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3, axis="y")
  ax.legend(fontsize=7, ncol=2)
  return _save_fig(fig, path)


def write_plots(name: str, agg: Dict, curves: Dict, out: str) -> List[str]:
  """Every figure of study `name` into `out`; their paths."""
  paths = []
  for setting, by_method in agg.items():
    stem = os.path.join(out, f"methods_{name}_{setting}")
    paths.append(ee.plot_exit_accuracy(
        {m: a["test_acc"]["mean"] for m, a in by_method.items()},
        f"{stem}_exits.png",
        title=f"{name} ({setting}): per-exit test accuracy, mean of "
        "seeds", ylabel="test accuracy"))
    diffs = {m: a["diff"] for m, a in by_method.items() if "diff" in a}
    if diffs:
      paths.append(plot_diffs(diffs, f"{stem}_diff.png", title=(
          f"{name} ({setting}): paired difference to CE per exit")))
    cs = curves.get(setting, {})
    if cs:
      n = max(len(c["seeds"]) for c in cs.values())
      paths.append(plot_bands(
          {m: (c["exit_macs"], c["anytime_mean"], c["anytime_std"])
           for m, c in cs.items()}, f"{stem}_anytime.png",
          xlabel="MACs per image (up to the exit)", ylabel="test accuracy",
          title=f"{name} ({setting}): anytime, mean ± std of {n} seeds"))
      paths.append(plot_bands(
          {m: (c["budgeted"]["avg_macs_mean"], c["budgeted"]["test_acc_mean"],
               c["budgeted"]["test_acc_std"]) for m, c in cs.items()},
          f"{stem}_budget.png", xlabel="average MACs per image",
          ylabel="test accuracy",
          title=f"{name} ({setting}): budgeted batch (max-prob), mean ± "
          f"std of {n} seeds"))
  return paths
