"""The rows of the method comparison: names, table order and references.

A row is a `mexd.losses` method name or one of the study's own variants:
pl_semisup and pl_semisup_eqsteps (P&L that also distils on the unlabeled
pool), ce_teacher (the CE teacher of erde / kd at its own budget),
ce_student (the student network trained with CE, the baseline of erde and
kd), ce_ge (CE with gradient equilibrium: IMTA's first stage) and imta2
(IMTA's second stage, from the same seed's ce_ge run). See
benchmarks/methods.py.
"""

from typing import Any, Dict, Iterator, List, Optional, Sequence

DATA = ("digits", "fashion_mnist")
STUDENT_METHODS = ("ce_student", "kd", "erde")
TEACHER = "ce_teacher"
ORDER = ("ce", "sdn", "byot", "pl", "pl_semisup", "pl_semisup_eqsteps",
         "pl_const", "eed", "mate", "imta", "ce_ge", "imta2", TEACHER,
         "ce_student", "kd", "erde")
ALL_METHODS = ("ce", "sdn", "byot", "pl", "pl_semisup", "pl_semisup_eqsteps",
               "eed", "mate", "imta", "ce_ge", "imta2", "erde", "kd")
# Rows trained from another row's run of the same seed (its weights and
# final exit): row -> that row.
STAGE_OF = {"imta2": "ce_ge"}


def expand_methods(methods: Sequence[str], setting: str,
                   with_kd: bool = True) -> List[str]:
  """The rows of one setting, in table order (teacher-student extras added).

  pl_semisup(_eqsteps) is dropped in the full setting (no unlabeled pool).
  """
  rows = [m for m in methods
          if not (m.startswith("pl_semisup") and setting == "full")]
  if "erde" in rows or "kd" in rows:
    rows += ["ce_student"] + (["kd"] if with_kd else [])
  rows += [STAGE_OF[m] for m in rows if m in STAGE_OF]
  return sorted(dict.fromkeys(rows), key=order_key)


def reference_of(method: str) -> Optional[str]:
  """The row a method is compared with: CE (students: the CE student)."""
  if method in ("ce", "ce_student"):
    return None
  if method == TEACHER:
    return "ce"
  return "ce_student" if method in STUDENT_METHODS else "ce"


def order_key(m: str):
  """Sort key: table order, unknown rows last (by name)."""
  return (ORDER.index(m) if m in ORDER else len(ORDER), m)


def finished(records: Sequence[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
  """The run records that are table rows and finished without an error."""
  return (r for r in records
          if "error" not in r and r.get("table_row", True))
