"""PNG plots of early-exit results (matplotlib, Agg canvas, no pyplot state).

  plot_accuracy_cost({"max_prob": (costs, accs), "entropy": (c2, a2)},
                     "runs/acc_vs_cost.png", xlabel="MFLOPs")
  plot_exit_accuracy({"P&L": acc_pl, "baseline": acc_base},
                     "runs/exit_acc.png")
"""

import io
from typing import Mapping, Optional, Sequence, Tuple, Union

from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

Curve = Tuple[Sequence[float], Sequence[float]]


def _save(fig: Figure, path: str) -> str:
  """Saves `fig` to `path` (a local path or a URI such as gs://...).

  The format follows the suffix (.png, .pdf, .svg, ...), as savefig does.
  """
  out = epath.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  FigureCanvasAgg(fig)
  buf = io.BytesIO()
  fig.savefig(buf, format=out.suffix[1:].lower() or None, dpi=120,
              bbox_inches="tight")
  out.write_bytes(buf.getvalue())
  return path


def plot_accuracy_cost(curves: Mapping[str, Curve], path: str, *,
                       title: Optional[str] = None,
                       xlabel: str = "average cost",
                       ylabel: str = "accuracy",
                       anytime: Optional[Curve] = None) -> str:
  """Accuracy against average cost, one line per policy or method.

  Args:
    curves: name -> (avg costs [P], accuracies [P]); points are sorted by
      cost before drawing (e.g. `policies.evaluate_curve` outputs).
    path: output PNG path (parent folders are created).
    title, xlabel, ylabel: labels.
    anytime: optional (exit costs [E], per-exit accuracies [E]) drawn as
      markers: every example leaving at the same exit.

  Returns:
    path.
  """
  fig = Figure(figsize=(5.5, 4))
  ax = fig.add_subplot()
  for name, (cost, acc) in curves.items():
    cost, acc = np.asarray(cost, float), np.asarray(acc, float)
    order = np.argsort(cost, kind="stable")
    ax.plot(cost[order], acc[order], marker=".", label=name)
  if anytime is not None:
    ax.plot(*map(np.asarray, anytime), "k^", linestyle="none",
            label="single exit")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right")
  return _save(fig, path)


def plot_exit_accuracy(per_exit: Union[Mapping[str, Sequence[float]],
                                       Sequence[float]], path: str, *,
                       title: Optional[str] = None,
                       ylabel: str = "accuracy") -> str:
  """Grouped bars of per-exit accuracy, one colour per method.

  Args:
    per_exit: name -> [E] accuracies (e.g. `policies.per_exit_accuracy`),
      or a single [E] sequence.
    path: output PNG path.
    title, ylabel: labels.

  Returns:
    path.
  """
  if not isinstance(per_exit, Mapping):
    per_exit = {"": per_exit}
  fig = Figure(figsize=(5.5, 4))
  ax = fig.add_subplot()
  num_exits = max(len(v) for v in per_exit.values())
  width = 0.8 / len(per_exit)
  for i, (name, acc) in enumerate(per_exit.items()):
    acc = np.asarray(acc, float)
    ax.bar(np.arange(acc.size) + (i - (len(per_exit) - 1) / 2) * width, acc,
           width, label=name or None)
  ax.set_xticks(np.arange(num_exits))
  ax.set_xticklabels([f"exit {k}" for k in range(num_exits)])
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  if any(per_exit):
    ax.legend()
  return _save(fig, path)
