"""Paired statistics and the seed papers' claims for benchmarks/methods.py.

Every comparison is *paired by seed*: method m and its reference r ran with
the same seed, so the same initialisation stream, batch order and (in the
data-limited setting) the same labeled subset. Per exit, the paired
differences d_s = acc_m(s) - acc_r(s) over the common seeds s give

  mean d,  95 % CI  mean d +- t_{0.975, n-1} sd(d) / sqrt(n)   (Student t)

A claim is a list of such comparisons with a direction:

* "gain" (m better than r): reproduced when the CI lies above 0, not
  reproduced when it lies below 0, inconclusive otherwise;
* "no_loss" (m not worse than r, non-inferiority with margin `margin`):
  reproduced when the CI lies above -margin, not reproduced when it lies
  below 0 and reaches past -margin (a loss larger than the margin cannot be
  excluded and a loss is certain), inconclusive otherwise;
* "larger_gain" (the gain of m over r in setting A exceeds that in setting
  B): the difference of two independent paired means, CI from their
  standard errors combined with Welch-Satterthwaite degrees of freedom.

Accuracies are fractions in [0, 1]; reports print percentage points.
"""

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from scipy import stats

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = (
    "reproduced", "not reproduced", "inconclusive")


def paired_diff(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]],
                level: float = 0.95) -> Dict[str, Any]:
  """Per-exit mean paired difference a - b with a Student-t interval.

  Args:
    a, b: [S][E] accuracies of the same S seeds (row s of a and of b come
      from the same seed).
    level: confidence level of the two-sided interval.

  Returns:
    {"mean": [E], "lo": [E], "hi": [E], "sd": [E], "n": S}; with S = 1 the
    interval is (-inf, inf).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 2 or a.shape[0] == 0:
    raise ValueError(f"a and b must both be [seeds, exits], got {a.shape} "
                     f"and {b.shape}")
  d = a - b
  n = d.shape[0]
  mean = d.mean(0)
  if n == 1:
    sd = np.zeros_like(mean)
    half = np.full_like(mean, np.inf)
  else:
    sd = d.std(0, ddof=1)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
  return {"mean": mean.tolist(), "lo": (mean - half).tolist(),
          "hi": (mean + half).tolist(), "sd": sd.tolist(), "n": n}


def diff_of_diffs(x: Dict[str, Any], y: Dict[str, Any], k: int,
                  level: float = 0.95) -> Dict[str, float]:
  """CI of x.mean[k] - y.mean[k] for two independent `paired_diff` results.

  Welch: se^2 = sx^2/nx + sy^2/ny, degrees of freedom by
  Welch-Satterthwaite.
  """
  vx = x["sd"][k] ** 2 / x["n"]
  vy = y["sd"][k] ** 2 / y["n"]
  mean = x["mean"][k] - y["mean"][k]
  if x["n"] < 2 or y["n"] < 2:
    return {"mean": mean, "lo": -math.inf, "hi": math.inf}
  se = math.sqrt(vx + vy)
  if se == 0:
    return {"mean": mean, "lo": mean, "hi": mean}
  dof = (vx + vy) ** 2 / (vx ** 2 / (x["n"] - 1) + vy ** 2 / (y["n"] - 1))
  half = stats.t.ppf(0.5 + level / 2, dof) * se
  return {"mean": mean, "lo": mean - half, "hi": mean + half}


def verdict(lo: float, hi: float, kind: str, margin: float = 0.005) -> str:
  """Reproduced / not reproduced / inconclusive for one interval."""
  if kind in ("gain", "larger_gain"):
    if lo > 0:
      return REPRODUCED
    if hi < 0:
      return NOT_REPRODUCED
    return INCONCLUSIVE
  if kind == "no_loss":
    if lo > -margin:
      return REPRODUCED
    if hi < 0:
      return NOT_REPRODUCED
    return INCONCLUSIVE
  raise ValueError(f"unknown claim kind {kind!r}")


def summarize(verdicts: Sequence[str]) -> str:
  """One verdict for a claim tested at several exits."""
  v = set(verdicts)
  if not v:
    return INCONCLUSIVE
  if len(v) == 1:
    return verdicts[0]
  k = sum(x == REPRODUCED for x in verdicts)
  return f"mixed ({k}/{len(verdicts)} reproduced)"


# The seed papers' claims. Each test: (method, reference, exits, kind);
# exits "early" = all but the final, "final", "all", "shallow" = the first
# half (at least one), or "exit0".
CLAIMS = (
    dict(paper="Phuong & Lampert", claim="early exits gain over CE "
         "(data-limited)", setting="limited",
         tests=[("pl", "ce", "early", "gain")]),
    dict(paper="Phuong & Lampert", claim="early exits gain over CE (full "
         "data)", setting="full", tests=[("pl", "ce", "early", "gain")]),
    dict(paper="Phuong & Lampert", claim="late exits are not hurt "
         "(data-limited; margin 0.5 points)", setting="limited",
         tests=[("pl", "ce", "final", "no_loss")]),
    dict(paper="Phuong & Lampert", claim="late exits are not hurt (full "
         "data; margin 0.5 points)", setting="full",
         tests=[("pl", "ce", "final", "no_loss")]),
    dict(paper="Phuong & Lampert", claim="the gain at exit 0 is larger "
         "with limited labels than with full data", setting="both",
         tests=[("pl", "ce", "exit0", "larger_gain")]),
    dict(paper="Phuong & Lampert", claim="semi-supervised distillation "
         "gains more than labeled-only P&L (equal labeled epochs)",
         setting="limited", tests=[("pl_semisup", "pl", "all", "gain")]),
    dict(paper="Phuong & Lampert", claim="semi-supervised distillation "
         "gains more than labeled-only P&L (equal optimizer steps)",
         setting="limited",
         tests=[("pl_semisup_eqsteps", "pl", "all", "gain")]),
    dict(paper="EED (Lee & Lee)", claim="every exit, the final included, "
         "gains over CE", setting="any",
         tests=[("eed", "ce", "all", "gain")]),
    dict(paper="MATE (Sun et al.)", claim="beats EED at shallow exits",
         setting="any", tests=[("mate", "eed", "shallow", "gain")]),
    dict(paper="MATE (Sun et al.)", claim="beats BYOT at shallow exits",
         setting="any", tests=[("mate", "byot", "shallow", "gain")]),
    dict(paper="ERDE (Guidez et al.)", claim="the student beats plain KD",
         setting="any", tests=[("erde", "kd", "all", "gain")]),
    dict(paper="ERDE (Guidez et al.)", claim="the student beats its "
         "CE-trained twin", setting="any",
         tests=[("erde", "ce_student", "all", "gain")]),
    dict(paper="BYOT (Zhang et al.)", claim="every exit gains over CE",
         setting="any", tests=[("byot", "ce", "all", "gain")]),
    dict(paper="SDN (Kaya et al.)", claim="the final exit is not hurt by "
         "the SDN weighting (margin 0.5 points)", setting="any",
         tests=[("sdn", "ce", "final", "no_loss")]),
    dict(paper="IMTA (Li et al.)", claim="every exit gains over CE "
         "(gradient equilibrium + one-for-all KD)", setting="any",
         tests=[("imta", "ce", "all", "gain")]),
)


def exit_indices(which: str, num_exits: int) -> List[int]:
  if which == "early":
    return list(range(num_exits - 1))
  if which == "final":
    return [num_exits - 1]
  if which == "all":
    return list(range(num_exits))
  if which == "shallow":
    return list(range(max(1, num_exits // 2)))
  if which == "exit0":
    return [0]
  raise ValueError(f"unknown exit set {which!r}")


def paired_by_seed(by_method: Dict[str, Dict[int, Sequence[float]]],
                   method: str, reference: str) -> Optional[Dict[str, Any]]:
  """`paired_diff` of method vs reference over their common seeds.

  Args:
    by_method: method -> {seed: [E] accuracies}.

  Returns:
    The paired_diff dict plus "seeds", or None if there is no common seed.
  """
  a, b = by_method.get(method, {}), by_method.get(reference, {})
  seeds = sorted(set(a) & set(b))
  if not seeds:
    return None
  out = paired_diff([a[s] for s in seeds], [b[s] for s in seeds])
  out["seeds"] = seeds
  return out


def evaluate_claims(per_setting: Dict[str, Dict[str, Dict[int, Sequence[
    float]]]], margin: float = 0.005) -> List[Dict[str, Any]]:
  """Verdicts of every CLAIMS entry the finished runs can test.

  Args:
    per_setting: setting ("full" / "limited") -> method -> {seed: [E] test
      accuracies}.
    margin: the non-inferiority margin of "no_loss" claims (fraction).

  Returns:
    One row per (claim, setting) that has data: paper, claim, setting,
    "tests" (per exit: method, reference, exit, mean, lo, hi, n, verdict)
    and the summary "verdict". Claims without the runs they need are left
    out.
  """
  rows = []
  for claim in CLAIMS:
    settings = (["limited", "full"] if claim["setting"] == "any"
                else [claim["setting"]])
    for setting in settings:
      tests = []
      for method, ref, which, kind in claim["tests"]:
        if kind == "larger_gain":
          lim = paired_by_seed(per_setting.get("limited", {}), method, ref)
          full = paired_by_seed(per_setting.get("full", {}), method, ref)
          if lim is None or full is None:
            continue
          for k in exit_indices(which, len(lim["mean"])):
            ci = diff_of_diffs(lim, full, k)
            tests.append(dict(method=method, reference=ref, exit=k,
                              n=min(lim["n"], full["n"]),
                              verdict=verdict(ci["lo"], ci["hi"], kind,
                                              margin), **ci))
          continue
        pd = paired_by_seed(per_setting.get(setting, {}), method, ref)
        if pd is None:
          continue
        for k in exit_indices(which, len(pd["mean"])):
          tests.append(dict(method=method, reference=ref, exit=k,
                            mean=pd["mean"][k], lo=pd["lo"][k],
                            hi=pd["hi"][k], n=pd["n"],
                            verdict=verdict(pd["lo"][k], pd["hi"][k], kind,
                                            margin)))
      if tests:
        rows.append(dict(paper=claim["paper"], claim=claim["claim"],
                         setting=setting, tests=tests,
                         verdict=summarize([t["verdict"] for t in tests])))
  return rows


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple:
  """Exact two-sided interval (lo, hi) of a binomial rate k / n: the Beta
  quantiles Beta(a; k, n - k + 1) and Beta(1 - a; k + 1, n - k),
  a = (1 - level) / 2 (0 and 1 at the edges)."""
  a = (1.0 - level) / 2.0
  lo = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
  hi = 1.0 if k == n else float(stats.beta.ppf(1.0 - a, k + 1, n - k))
  return lo, hi


def format_ci(mean: float, lo: float, hi: float) -> str:
  """'+1.2 [+0.4, +2.0]' in percentage points."""
  if not math.isfinite(lo):
    return f"{100 * mean:+.1f} [n = 1]"
  return f"{100 * mean:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def claims_markdown(rows: Sequence[Dict[str, Any]]) -> str:
  """The claims table: one line per claim and setting."""
  lines = ["| paper | claim | setting | verdict | Δ per exit, points "
           "[95 % CI] | seeds |",
           "|---|---|---|---|---|---:|"]
  for r in rows:
    cells = "; ".join(
        f"exit {t['exit']}: {format_ci(t['mean'], t['lo'], t['hi'])}"
        for t in r["tests"])
    n = min(t["n"] for t in r["tests"])
    lines.append(f"| {r['paper']} | {r['claim']} | {r['setting']} | "
                 f"**{r['verdict']}** | {cells} | {n} |")
  return "\n".join(lines)
