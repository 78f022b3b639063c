"""Early-exit inference: exit policies, threshold calibration, staged runs.

  policies   scores [E, N] from logits [E, N, C]; exit_index; simulate
  calibrate  thresholds from validation: MSDNet sweep, cost budget,
             accuracy-drop tolerance (optionally with a Learn-then-Test
             guarantee; ltt_min_n: the validation size it needs),
             violation_rate
  certify    thresholds with guarantees on new data: accuracy drop
             (labelled, or label-free via the consistency risk), certified
             compute budget, both jointly
  bounds     the p-values behind them: hoeffding, hoeffding_bentkus,
             binomial, empirical_bernstein, wsr ("auto": the tightest)
  rules      shared-threshold rules on host arrays (what both share)
  staged     StagedPredictor: runs stage k only on the examples still in
  plots      accuracy-vs-cost curves and per-exit accuracy bars (PNG)

See docs/early_exit.md.
"""

from mexd.early_exit import bounds
from mexd.early_exit import calibrate
from mexd.early_exit import certify
from mexd.early_exit import plots
from mexd.early_exit import policies
from mexd.early_exit import staged
from mexd.early_exit.calibrate import calibrate_accuracy_drop
from mexd.early_exit.calibrate import calibrate_budget
from mexd.early_exit.calibrate import Calibration
from mexd.early_exit.calibrate import CertificationWarning
from mexd.early_exit.calibrate import ltt_min_eps
from mexd.early_exit.calibrate import ltt_min_n
from mexd.early_exit.calibrate import msdnet_sweep
from mexd.early_exit.calibrate import msdnet_thresholds
from mexd.early_exit.calibrate import violation_rate
from mexd.early_exit.certify import certify_accuracy
from mexd.early_exit.certify import certify_budget
from mexd.early_exit.certify import certify_joint
from mexd.early_exit.plots import plot_accuracy_cost
from mexd.early_exit.plots import plot_exit_accuracy
from mexd.early_exit.policies import evaluate_curve
from mexd.early_exit.policies import exit_index
from mexd.early_exit.policies import per_exit_accuracy
from mexd.early_exit.policies import policy_names
from mexd.early_exit.policies import scores
from mexd.early_exit.policies import simulate
from mexd.early_exit.policies import uniform_thresholds
from mexd.early_exit.staged import StagedPredictor
from mexd.early_exit.staged import StagedResult
