"""Repository checks: the docs stand alone and read as documentation.

1. No tracked text file points at notes kept outside the repository:
   docs/methods.md is the source of truth for formulas, defaults and
   sources, and docs/benchmarks.md for measured numbers.
2. docs/*.md and README.md do not narrate past rounds of work (numbered
   work periods, what was tried when): they state current facts; history
   is in git log.

The patterns and the sample lines below are assembled from pieces so that
this file does not match itself. Needs git and a checkout (skipped in an installed wheel).
"""

import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_S = "ses" + "sion"  # A work period; spelt in pieces (see the docstring).

# References to files users do not have.
_OUTSIDE = [
    re.compile(r"\.\./" + "sha" + "red" + r"(?![\w-])"),
    re.compile("METH" + r"ODS\.md"),
    re.compile("PERF" + "_NOTES"),
]

# Lab-notebook narrative. Case-insensitive; each is specific enough not to hit
# ordinary prose ("float rounding", "previous argmax", "an earlier run").
_NARRATIVE = [re.compile(p, re.IGNORECASE) for p in (
    r"\b" + _S + r"s?[ -]?\d+",                       # numbered periods
    r"\b(this|last|previous|earlier|next|later) " + _S + r"\b",
    r"\b[\w-]+-equipped " + _S + r"\b",
    r"\bround \d+\b",
    r"\b(this|last|previous|earlier|next) round\b",
    r"\bwe tried\b",
    r"\btried and dropped\b",
    r"\bpreviously\b",
    r"\bearlier (\S+ )?(default|version|measurement)s?\b",
    r"\b(was|were) changed\b",
    r"\bthe default became\b",
    r"\b(before|after) the fix\b",
    r"\bwhat moved the number\b",
    r"\bfirst bottleneck\b",
    r"\bthen we\b",
)]


def _tracked_files():
  if shutil.which("git") is None:
    pytest.skip("git is not installed")
  if not (ROOT / ".git").exists():
    pytest.skip(f"{ROOT} is not a git checkout (e.g. an installed wheel)")
  out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"],
                       capture_output=True, check=False)
  if out.returncode != 0:
    pytest.skip(f"git ls-files failed: {out.stderr.decode(errors='replace')}")
  return [p for p in out.stdout.decode().split("\0") if p]


def _text(path: pathlib.Path):
  """The file's text, or None for binary, unreadable or missing files."""
  try:
    data = path.read_bytes()
  except OSError:  # tracked but deleted in the working tree
    return None
  if b"\0" in data[:8192]:
    return None
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError:
    return None


def _hits(paths, patterns):
  hits = []
  for rel in paths:
    text = _text(ROOT / rel)
    if text is None:
      continue
    for lineno, line in enumerate(text.splitlines(), 1):
      for pat in patterns:
        m = pat.search(line)
        if m:
          hits.append(f"{rel}:{lineno}: {m.group(0)!r}: {line.strip()[:160]}")
  return hits


def test_no_tracked_file_points_outside_the_repository():
  hits = _hits(_tracked_files(), _OUTSIDE)
  assert not hits, (
      "files refer to notes outside the repository; cite docs/methods.md "
      "(§ numbers) or docs/benchmarks.md, or state the fact inline:\n"
      + "\n".join(hits))


def test_docs_do_not_narrate_past_work():
  docs = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))
  docs.append("README.md")
  hits = _hits(docs, _NARRATIVE)
  assert not hits, (
      "docs narrate past rounds of work; state the current facts (history "
      "belongs in git log):\n" + "\n".join(hits))


@pytest.mark.parametrize("line, narrative", [
    (_S.title() + " 16: batch norm.", True),
    ("the " + _S + "-13 numbers", True),
    ("Seed-0 runs of the previous " + _S + " were reused", True),
    ("left for a GPU-equipped " + _S + ".", True),
    ("We tried Winograd first.", True),
    ("The earlier 12-epoch default reached 83 %", True),
    ("gradients agree to float32 rounding", False),
    ("the policy state (previous argmax and run length)", False),
    ("an earlier run still holds the TPU on some worker", False),
    ("round-robin timing", False),
])
def test_narrative_patterns(line, narrative):
  assert any(p.search(line) for p in _NARRATIVE) == narrative


@pytest.mark.parametrize("line, outside", [
    ("see ../" + "sha" + "red/METH" + "ODS.md §2", True),
    ("PERF" + "_NOTES: 0.26 of PyTorch", True),
    ("--workdir=/sha" + "red/runs/c100-eed", False),
    ("docs/methods.md §2.1", False),
    ("_STUDENT_" + "METH" + "ODS = (...)", False),
])
def test_outside_patterns(line, outside):
  assert any(p.search(line) for p in _OUTSIDE) == outside
