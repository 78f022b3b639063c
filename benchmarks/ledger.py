"""The study's ledger: one committed JSON record per finished run.

`<ledger>/<setting>/<method>/seed<k>.json` holds the run's config and its
record (accuracies, steps, wall-clock, curves), so a study resumes on a
fresh machine: a run whose recorded config matches is read back, not
trained (`config_diff` says what counts as a match).
"""

import json
import os
from typing import Any, Dict, List, Optional

from mexd import workdir as workdir_lib

# Config fields that name a run directory of this machine; the runs they
# name are themselves ledger runs of a fixed config.
MACHINE_PATHS = ("teacher_workdir", "init_workdir")


def record_path(task: Dict[str, Any]) -> Optional[str]:
  """`<ledger>/<setting>/<method>/seed<k>.json`, or None without a ledger."""
  if not task.get("ledger"):
    return None
  return os.path.join(task["ledger"], task["setting"], task["method"],
                      f"seed{task['seed']}.json")


def config_diff(old: Any, new: Any, prefix: str = "") -> List[str]:
  """Dotted fields of the recorded config `old` whose value `new` changes.

  Fields of `new` that `old` lacks (config fields added after the run was
  recorded, which by convention default to the earlier behaviour) and unset
  (None) values are ignored; so are the fields a resumed run may change
  (mexd.workdir's resumable fields, e.g. the progress bar) and the teacher's
  and the warm start's work-directory paths (MACHINE_PATHS).
  """
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for k, v in old.items():
      if v is None or (not prefix and (k in workdir_lib.RESUMABLE_FIELDS
                                       or k in MACHINE_PATHS)):
        continue
      out += config_diff(v, new.get(k), f"{prefix}{k}.")
    return out
  if isinstance(old, list) and isinstance(new, (list, tuple)):
    return [] if list(old) == list(new) else [prefix.rstrip(".")]
  return [] if old == new else [prefix.rstrip(".")]


def read(task: Dict[str, Any], config) -> Optional[Dict[str, Any]]:
  """The committed record of this run, if its config is the same."""
  path = record_path(task)
  if not path or not os.path.exists(path):
    return None
  with open(path) as f:
    entry = json.load(f)
  if config_diff(entry["config"], workdir_lib.config_to_dict(config)):
    return None
  return entry["record"]


def write(task: Dict[str, Any], config, rec: Dict[str, Any]) -> None:
  """Records the run's config and record (no-op without a ledger)."""
  path = record_path(task)
  if not path:
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  keep = {k: v for k, v in rec.items() if k not in ("workdir", "reused")}
  with open(path, "w") as f:
    json.dump({"config": workdir_lib.config_to_dict(config), "record": keep},
              f, indent=1, sort_keys=True)
