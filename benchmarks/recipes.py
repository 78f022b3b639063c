"""Runs every training recipe of configs/ end to end on mock data.

Each recipe is the config a researcher would run (`configs/cifar100.py:eed`,
`configs/cub200.py`, ...) with its `runlocal=True` variant (1 epoch, small
batch), trained by `mexd.trainer.train_and_evaluate` on tiny data written in
the real on-disk format (`mexd.data.mock`: CIFAR python archives, tfds
array_record sets), so the loader, model, method, sharded step, checkpoints
and evaluation all run as they would on the real data. Teacher-student
recipes (ERDE, KD) first train their CE teacher, then the student from its
work directory. Prints a table and writes benchmarks/results/recipes.json.

  python -m benchmarks.recipes                      # every recipe
  python -m benchmarks.recipes --only=cifar100:eed,cifar10:erde

The mock data is learnable (class-specific colour patterns), so accuracy
above chance shows that the pipeline trains; it says nothing about the
recipes' accuracy on real data.
"""

import os
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

from absl import app
from absl import flags
import jax

from benchmarks import common
from mexd import configs
from mexd import trainer
from mexd.data import mock

# (recipe name, config file, config arg, teacher recipe or None).
RECIPES: List[Tuple[str, str, str, Optional[str]]] = [
    ("cifar100:ce", "cifar100", "method=ce", None),
    ("cifar100:sdn", "cifar100", "method=sdn", None),
    ("cifar100:byot", "cifar100", "method=byot", None),
    ("cifar100:eed", "cifar100", "method=eed", None),
    ("cifar100:mate", "cifar100", "method=mate", None),
    ("cifar100:pl", "cifar100", "method=pl", None),
    ("cifar100:pl_semisup", "cifar100", "method=pl,semisup=True", None),
    ("cifar100:erde", "cifar100", "method=erde,student=True", "cifar100:ce"),
    ("cifar100:kd", "cifar100", "method=kd,student=True", "cifar100:ce"),
    ("cifar10:ce", "cifar10", "method=ce", None),
    ("cifar10:erde", "cifar10", "method=erde,student=True", "cifar10:ce"),
    ("svhn:ce", "svhn", "method=ce", None),
    ("svhn:erde", "svhn", "method=erde,student=True", "svhn:ce"),
    ("cub200:mate", "cub200", "method=mate", None),
    ("stanford_dogs:mate", "stanford_dogs", "method=mate", None),
    ("imagenet64:mate", "imagenet64", "method=mate", None),
    ("imagenet:pl", "imagenet", "method=pl", None),
    ("imagenet:eed", "imagenet", "method=eed", None),
]

# Mock data per data set name: (writer, kwargs) and the val images carved.
MOCK_VAL = {"cifar100": 200, "cifar10": 40, "tfds:svhn_cropped": 40,
            "tfds:caltech_birds2011": 200, "tfds:stanford_dogs": 120,
            "tfds:imagenet_resized/64x64": 1000, "tfds:imagenet2012": 8}

FLAGS = flags.FLAGS
flags.DEFINE_string("only", "", "Comma-separated recipe names (default: all).")
flags.DEFINE_string("workroot", None,
                    "Run directories (default: a temporary folder).")
flags.DEFINE_string("data_dir", None,
                    "Mock data folder (default: under workroot).")
common.define_flags("recipes", out=os.path.join(common.RESULTS,
                                                "recipes.json"))
flags.adopt_module_key_flags(common)


def write_mock(data_dir: str, name: str):
  """Writes the mock files of data set `name` into `data_dir` (once)."""
  marker = os.path.join(data_dir, ".done-" + name.replace("/", "_")
                        .replace(":", "_"))
  if os.path.exists(marker):
    return
  if name in ("cifar10", "cifar100"):
    mock.write_cifar(data_dir, name, train_per_class=8 if name == "cifar100"
                     else 40, test_per_class=2 if name == "cifar100" else 10)
  elif name == "tfds:svhn_cropped":
    mock.write_tfds(data_dir, "svhn_cropped",
                    per_class={"train": 40, "test": 10}, shape=(32, 32, 3))
  elif name in ("tfds:caltech_birds2011", "tfds:stanford_dogs"):
    mock.write_tfds(data_dir, name[5:], per_class={"train": 4, "test": 1},
                    shape=(48, 56, 3))
  elif name == "tfds:imagenet_resized/64x64":
    mock.write_tfds(data_dir, "imagenet_resized/64x64",
                    per_class={"train": 3, "validation": 1},
                    shape=(64, 64, 3))
  elif name == "tfds:imagenet2012":  # Variable-size JPEGs, streamed.
    mock.write_tfds(data_dir, "imagenet2012",
                    per_class={"train": 6, "validation": 2},
                    classes=range(10), sizes=(40, 120))
  else:
    raise ValueError(f"no mock data for {name!r}")
  open(marker, "w").close()


def make_config(config_file: str, arg: str, data_dir: str,
                teacher_workdir: Optional[str]):
  """The recipe's runlocal config pointed at the mock data."""
  c = configs.load(config_file, ",".join(a for a in (arg, "runlocal")
                                          if a))
  c.data.data_dir = data_dir
  c.data.val_size = MOCK_VAL[c.data.name]
  if c.data.get("labeled_per_class"):
    c.data.labeled_per_class = 4  # The recipe's 100 per class, scaled down.
  if teacher_workdir:
    c.teacher_workdir = teacher_workdir
  c.progress_bar = False
  return c


def run(recipe: str, workroot: str, data_dir: str,
        done: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
  """Trains one recipe (after its teacher); returns its record."""
  _, config_file, arg, teacher = next(r for r in RECIPES if r[0] == recipe)
  if teacher and teacher not in done:
    done[teacher] = run(teacher, workroot, data_dir, done)
  teacher_dir = done[teacher]["workdir"] if teacher else None
  config = make_config(config_file, arg, data_dir, teacher_dir)
  write_mock(data_dir, config.data.name)
  workdir = os.path.join(workroot, recipe.replace(":", "_"))
  t0 = time.time()
  res = trainer.train_and_evaluate(config, workdir, overwrite=True)
  wall = time.time() - t0
  return {
      "recipe": recipe, "config": f"{config_file}:{arg}",
      "data": config.data.name, "model": config.model.name,
      "method": config.method, "exits": len(res["test"]["acc"]),
      "batch_size": config.batch_size, "steps": res["steps"],
      "train_seconds": res["train_seconds"], "wall_seconds": wall,
      "images_per_s": res["steps"] * config.batch_size
                      / max(res["train_seconds"], 1e-9),
      "test_acc": res["test"]["acc"], "val_acc": res["val"]["acc"],
      "devices": jax.device_count(), "workdir": workdir}


def main(argv):
  del argv
  common.setup_from_flags()
  names = [r[0] for r in RECIPES]
  only = [n for n in FLAGS.only.split(",") if n] or names
  unknown = sorted(set(only) - set(names))
  if unknown:
    raise app.UsageError(
        f"unknown recipes {unknown}; valid: {', '.join(names)}")
  env = common.environment()
  workroot = FLAGS.workroot or tempfile.mkdtemp(prefix="mexd-recipes-")
  data_dir = FLAGS.data_dir or os.path.join(workroot, "data")
  os.makedirs(data_dir, exist_ok=True)
  done: Dict[str, Dict[str, Any]] = {}
  rows = []
  for name in only:
    try:
      rec = done.get(name) or run(name, workroot, data_dir, done)
    except Exception as e:  # pylint: disable=broad-except
      rec = {"recipe": name, "error": f"{type(e).__name__}: {e}"}
    done[name] = rec
    rows.append(rec)
    acc = " / ".join(f"{100 * a:.0f}" for a in rec.get("test_acc", []))
    print(f"[recipes] {name:22s} " + (
        f"{rec['model']:18s} {rec['method']:5s} {rec['steps']:4d} steps "
        f"{rec['train_seconds']:6.1f} s train {rec['wall_seconds']:6.1f} s "
        f"wall  test % {acc}" if "error" not in rec else rec["error"]),
          flush=True)
  common.write_record("recipes", rows, env)
  return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
  app.run(main)
