"""The exported cascade's directory: its files, manifest, hashes, versions.

`python -m mexd.export` writes, and `mexd.deploy.load` reads, one folder:

  manifest.json     what the folder holds (below) and the sha256 of every
                    other file
  weights.npz       the model variables as flat arrays w0000, w0001, ...
                    (the order of the programs' weight arguments)
  preprocess.jax    uint8 [b, H, W, C] pixels -> normalised float32 images,
                    (x / 255 - mean) / std as in training
  stage_<k>.jax     stage k and its exit test: (weights, h, previous argmax
                    [b], run length [b], policy index, threshold) ->
                    (h_k, argmax [b], run length [b], code [b]); code = the
                    class where the row leaves at exit k, else -1 - class
  forward.jax       the one-pass network: (weights, images) -> logits
                    [E, b, C] of every exit

Each `.jax` file is a `jax.export` serialized program (StableHLO) with a
symbolic batch dimension b, lowered for the platforms in the manifest, so
one folder runs on CPU, GPU and TPU. The manifest ("format": "mexd-cascade",
"format_version") records: num_exits, num_classes, class_names,
image_shape, input dtype, mean, std, the exit policy (name, thresholds,
the policy index the stages take, the guarantee it carries), exit_macs
(cumulative MACs per image of answering at exit k), the XLA compiler
options per platform, the versions of jax/jaxlib that exported it, the
source run, and files {name: {"sha256", "bytes"}}.

This module imports only the standard library and NumPy.
"""

import hashlib
import json
import os
import pathlib
from typing import Any, Dict, Sequence

from mexd import errors

FORMAT = "mexd-cascade"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.npz"
PREPROCESS = "preprocess.jax"
FORWARD = "forward.jax"


def stage_file(k: int) -> str:
  """The file name of stage k's program."""
  return f"stage_{k}.jax"


def program_files(num_exits: int) -> Sequence[str]:
  """Every program file of a cascade of `num_exits` exits."""
  return [PREPROCESS, FORWARD] + [stage_file(k) for k in range(num_exits)]


class ExportError(errors.InputError):
  """An export folder that cannot be used: missing, damaged, or made for
  another version or platform. The message names the file and the fix."""


def sha256(path) -> str:
  """Hex sha256 of a file's bytes."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def file_table(folder, names: Sequence[str]) -> Dict[str, Dict[str, Any]]:
  """{name: {"sha256", "bytes"}} of the named files in `folder`."""
  folder = pathlib.Path(folder)
  return {n: {"sha256": sha256(folder / n),
              "bytes": os.path.getsize(folder / n)} for n in names}


def write_manifest(folder, manifest: Dict[str, Any]) -> None:
  """Writes manifest.json (strict JSON, sorted keys)."""
  text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False)
  (pathlib.Path(folder) / MANIFEST).write_text(text + "\n")


def read_manifest(folder) -> Dict[str, Any]:
  """manifest.json of an export folder, checked for its format.

  Raises:
    ExportError: no folder, no or unreadable manifest, another format, or a
      format version this runtime does not know.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise ExportError(f"{folder} is not a folder; export a trained run "
                      "with python -m mexd.export --workdir=RUN --out=DIR")
  path = folder / MANIFEST
  if not path.is_file():
    raise ExportError(f"{folder} has no {MANIFEST}: not a mexd export (make "
                      "one with python -m mexd.export)")
  try:
    manifest = json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise ExportError(f"{path} is damaged (not JSON: {e}); export the run "
                      "again") from None
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    raise ExportError(f"{path} is not a {FORMAT} manifest")
  version = manifest.get("format_version")
  if version != FORMAT_VERSION:
    raise ExportError(
        f"{folder} has format version {version!r}; this runtime reads "
        f"version {FORMAT_VERSION}: export the run again with this mexd, or "
        "load it with the mexd that exported it")
  return manifest


def verify_files(folder, manifest: Dict[str, Any]) -> None:
  """Checks that every file the manifest lists is there, intact.

  Raises:
    ExportError: a listed file is missing, or its size or sha256 differ
      (damaged or replaced), or a program the cascade needs is not listed.
  """
  folder = pathlib.Path(folder)
  files = manifest.get("files", {})
  needed = [WEIGHTS] + list(program_files(int(manifest["num_exits"])))
  unlisted = [n for n in needed if n not in files]
  if unlisted:
    raise ExportError(f"{folder}/{MANIFEST} does not list {unlisted}; "
                      "export the run again")
  for name, want in sorted(files.items()):
    path = folder / name
    if not path.is_file():
      raise ExportError(f"{path} is missing; copy the whole export folder "
                        "or export the run again")
    size = os.path.getsize(path)
    if size != want["bytes"] or sha256(path) != want["sha256"]:
      raise ExportError(
          f"{path} is damaged: its sha256 (or size, {size} vs "
          f"{want['bytes']} bytes) differs from the manifest's; copy it "
          "again or export the run again")


def _version_tuple(v: str):
  out = []
  for part in str(v).split("."):
    digits = "".join(c for c in part if c.isdigit())
    out.append(int(digits) if digits else 0)
  return tuple(out)


def check_versions(manifest: Dict[str, Any], jax: str, jaxlib: str) -> None:
  """The installed jax / jaxlib must be at least the exporting ones.

  `jax.export` programs stay loadable by newer jax releases (within its
  compatibility window, which deserialization enforces); an older jax may
  not know the program's serialization or operations.

  Raises:
    ExportError: jax or jaxlib older than the export's.
  """
  made = manifest.get("versions", {})
  for name, have in (("jax", jax), ("jaxlib", jaxlib)):
    want = made.get(name)
    if want is None:
      raise ExportError(f"the manifest records no {name} version; export "
                        "the run again")
    if _version_tuple(have) < _version_tuple(want):
      raise ExportError(
          f"this export was made with {name} {want}, but {name} {have} is "
          f"installed: pip install '{name}>={want}' (or export the run again "
          f"with {name} {have})")
