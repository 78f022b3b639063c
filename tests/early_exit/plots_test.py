"""The plot helpers write readable PNG files."""

import matplotlib.image
import numpy as np

from mexd.early_exit import plots


def test_plots_write_png(tmp_path):
  path = plots.plot_accuracy_cost(
      {"max_prob": ([3.0, 1.0, 2.0], [0.8, 0.6, 0.7]),
       "entropy": ([1.0, 3.0], [0.62, 0.81])},
      str(tmp_path / "sub" / "curve.png"), title="t", xlabel="MFLOPs",
      anytime=([1.0, 2.0, 3.0], [0.55, 0.7, 0.8]))
  img = matplotlib.image.imread(path)
  assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
  assert np.std(img) > 0.01  # not blank
  bars = plots.plot_exit_accuracy({"a": [0.5, 0.7, 0.8], "b": [0.6, 0.7, 0.75]},
                                  str(tmp_path / "bars.png"))
  assert matplotlib.image.imread(bars).shape[0] > 100
  single = plots.plot_exit_accuracy(np.array([0.5, 0.6]),
                                    str(tmp_path / "one.png"))
  assert matplotlib.image.imread(single).shape[0] > 100
