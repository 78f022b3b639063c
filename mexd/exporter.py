"""Exports a trained run as a self-contained cascade folder (`mexd.deploy`).

  out = exporter.export_run("runs/digits", "export/digits")
  # or: python -m mexd.export --workdir=runs/digits --out=export/digits

The folder (layout: `mexd.deploy.artifact`) holds every stage of the
network as a `jax.export` program with a symbolic batch dimension, the
weights beside them as arrays, and a manifest with the calibrated exit rule,
the per-exit MACs, class names, preprocessing constants, the jax/jaxlib
versions and the sha256 of every file. `mexd.deploy.load(folder)` runs it
with jax and NumPy only.

The programs are lowered with the portable layers (`mexd.models.layers.FLAX`:
XLA's own convolutions, the same variables and numbers as the CPU layers of
training) for every platform asked for (default CPU, CUDA and TPU), so one
folder serves all three. mexd's XLA:CPU options (`mexd.cpu.xla_options`,
behind the MEXD_CPU_FAST switch) are recorded for the runtime to compile
with on CPU.
"""

import os
import pathlib
import shutil
import tempfile
from typing import Any, Dict, Optional, Sequence

import jax
from jax import export as jax_export
import jax.numpy as jnp
import numpy as np

from mexd import cpu
from mexd import errors
from mexd import exit_policy as exit_policy_lib
from mexd import paths
from mexd import predict
from mexd import workdir as workdir_lib
from mexd.cpu import xla_options
from mexd.data import augment
from mexd.data import class_names as class_names_lib
from mexd.deploy import artifact
from mexd.deploy import runtime
from mexd.early_exit import policies
from mexd.models import costs as costs_lib
from mexd.models import layers

DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")


def stage_program(model, treedef, k: int):
  """fn(weights, h, prev [b], run [b], policy_index, theta) -> (h_k, argmax
  [b], run length [b], code [b]) of stage k (see `artifact`)."""

  def fn(weights, h, prev, run, policy_index, theta):
    variables = jax.tree.unflatten(treedef, weights)
    h, logits, _ = model.apply(variables, k, h, train=False, method="stage")
    out = [policies.score_step(name, logits, (prev, run))
           for name in policies.policy_names()]
    pred, run = out[0][1]
    done = jnp.stack([s for s, _ in out])[policy_index] >= theta
    return h, pred, run, jnp.where(done, pred, -1 - pred)

  return fn


def forward_program(model, treedef):
  """fn(weights, images [b, H, W, C] float32) -> logits [E, b, C]."""

  def fn(weights, images):
    logits, _ = model.apply(jax.tree.unflatten(treedef, weights), images,
                            train=False)
    return logits.astype(jnp.float32)

  return fn


def _write(folder: pathlib.Path, name: str, fn, platforms, *specs) -> Any:
  """Exports jit(fn) at `specs` into folder/name; returns its out avals
  (as a pytree of ShapeDtypeStructs)."""
  exported = jax_export.export(jax.jit(fn), platforms=platforms)(*specs)
  (folder / name).write_bytes(exported.serialize())
  return jax.eval_shape(fn, *specs)


def resolve_policy(workdir: str, policy_file: Optional[str],
                   thresholds: Optional[Sequence[float]],
                   policy: str) -> Dict[str, Any]:
  """The exit rule to export: exit_policy.json (`policy_file`, default the
  run's), or the given thresholds with `policy`.

  Raises:
    InputError: no calibrated rule and no thresholds.
  """
  path = paths.path(policy_file or os.path.join(workdir, "exit_policy.json"))
  if thresholds is not None:
    saved = exit_policy_lib.load_exit_policy(path) if path.exists() else {}
    return {**saved, "policy": policy,
            "thresholds": np.asarray(thresholds, np.float32),
            "calibrated": False}
  if not path.exists():
    raise errors.InputError(
        f"{workdir} has no calibrated exit policy ({path} not found): run "
        f"python -m mexd.evaluate --workdir={workdir} first, or give "
        "--thresholds=t0,t1,... (one per exit) and --exit_policy_name")
  return {**exit_policy_lib.load_exit_policy(path), "calibrated": True}


def _stats(config, rule: Dict[str, Any]) -> Dict[str, Any]:
  """mean, std, image_shape, num_classes of the run's training data (from
  exit_policy.json, else recomputed from the data set)."""
  keys = ("mean", "std", "image_shape", "num_classes")
  if all(k in rule for k in keys):
    return {k: rule[k] for k in keys}
  from mexd import data as data_lib  # pylint: disable=g-import-not-at-top
  splits, _ = data_lib.load_splits(config.data)
  tr = splits["train"]
  return {"mean": list(map(float, tr.mean)), "std": list(map(float, tr.std)),
          "image_shape": list(tr.image_shape), "num_classes": tr.num_classes}


def export_run(workdir: str, out: str, *, policy_file: Optional[str] = None,
               thresholds: Optional[Sequence[float]] = None,
               policy: str = "max_prob",
               platforms: Sequence[str] = DEFAULT_PLATFORMS,
               class_names: Optional[Sequence[str]] = None,
               overwrite: bool = False) -> Dict[str, Any]:
  """Writes the export folder of a trained run; returns its manifest.

  Args:
    workdir: a trained run (its newest readable checkpoint is exported).
    out: the folder to write (must not exist unless `overwrite`).
    policy_file: exit_policy.json to take the rule from (default the run's,
      written by `python -m mexd.evaluate`).
    thresholds: [E] thresholds instead of a calibrated rule, with `policy`.
    policy: the exit policy of `thresholds`.
    platforms: platforms to lower for ("cpu", "cuda", "rocm", "tpu").
    class_names: names of the classes (default the data set's).
    overwrite: replace an existing `out`.

  Raises:
    InputError: no calibrated rule and no thresholds, bad thresholds, an
      existing `out`, an unknown platform.
  """
  _check_out(out, overwrite, platforms)
  config = workdir_lib.load_config(workdir)
  rule = resolve_policy(workdir, policy_file, thresholds, policy)
  stats = _stats(config, rule)
  model = predict.build_model(config, int(stats["num_classes"]))
  ckpt = workdir_lib.read_checkpoint(workdir)
  source = {"workdir": os.path.abspath(workdir), "step": int(ckpt.step),
            "method": str(config.method), "model": str(config.model.name),
            "data": str(config.data.name), "calibrated": rule["calibrated"]}
  for key in ("eps", "delta", "val_accuracy", "guarantee"):
    if rule.get(key) is not None:
      source[key] = rule[key]
  return export_model(
      model, ckpt.variables, out, policy=rule["policy"],
      thresholds=rule["thresholds"], exit_macs=rule.get("exit_macs"),
      class_names=class_names or class_names_lib.class_names(
          config.data.name, int(stats["num_classes"])),
      platforms=platforms, source=source, overwrite=overwrite, **stats)


def _check_out(out: str, overwrite: bool, platforms: Sequence[str]) -> None:
  if os.path.exists(out) and not overwrite:
    raise errors.InputError(f"{out} exists; pass --overwrite to replace it")
  bad = sorted(set(platforms) - {"cpu", "cuda", "rocm", "tpu"})
  if bad or not platforms:
    raise errors.InputError(f"platforms {list(platforms)}: expected some of "
                            "cpu, cuda, rocm, tpu")


def export_model(model, variables, out: str, *, policy: str,
                 thresholds: Sequence[float], mean: Sequence[float],
                 std: Sequence[float], image_shape: Sequence[int],
                 num_classes: int,
                 exit_macs: Optional[Sequence[float]] = None,
                 class_names: Optional[Sequence[str]] = None,
                 platforms: Sequence[str] = DEFAULT_PLATFORMS,
                 source: Optional[Dict[str, Any]] = None,
                 overwrite: bool = False) -> Dict[str, Any]:
  """Writes the export folder of a `MultiExitModel` and its variables.

  Args:
    model: the model (rebuilt here with the portable layers).
    variables: its {"params", "batch_stats"} (host or device arrays).
    out: the folder to write (replaced atomically).
    policy, thresholds: the exit rule ([E] thresholds, last -inf).
    mean, std, image_shape: the training data's normalisation and shape.
    num_classes: classes of every exit.
    exit_macs: [E] cumulative MACs per image (default: measured by XLA,
      `mexd.models.costs.exit_costs(cascade=True)`).
    class_names: default "0".."C-1".
    platforms: platforms to lower for.
    source: where the weights came from (recorded in the manifest).
    overwrite: replace an existing `out`.

  Returns:
    the manifest written.
  """
  _check_out(out, overwrite, platforms)
  model = layers.with_layers(model, layers.FLAX)
  variables = jax.device_get(variables)
  num_exits = model.apply(variables, method=lambda m: m.num_exits)
  from mexd.deploy import checks  # pylint: disable=g-import-not-at-top
  checks.policy_and_thresholds(
      {"policy_names": policies.policy_names(), "num_exits": num_exits,
       "policy": {"name": policy, "thresholds": thresholds}}, None, None)
  if exit_macs is None:
    exit_macs = [r["macs"] for r in costs_lib.exit_costs(
        model, variables, image_shape, cascade=True)]
  names = [str(n) for n in (class_names or range(num_classes))]
  if len(names) != int(num_classes):
    raise errors.InputError(f"{len(names)} class names for {num_classes} "
                            "classes")
  stats = {"mean": mean, "std": std, "image_shape": image_shape,
           "num_classes": num_classes}
  rule = {"policy": policy, "thresholds": thresholds, "exit_macs": exit_macs}
  parent = os.path.dirname(os.path.abspath(out))
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=".export-", dir=parent))
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is private (0700).
  try:
    files = _write_programs(tmp, model, variables, stats, tuple(platforms),
                            num_exits)
    manifest = _manifest(rule, stats, names, list(platforms), num_exits,
                         source or {})
    manifest["files"] = artifact.file_table(tmp, files)
    artifact.write_manifest(tmp, manifest)
    if os.path.exists(out):
      shutil.rmtree(out)
    os.replace(tmp, out)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  return manifest


def _write_programs(folder: pathlib.Path, model, variables, stats,
                    platforms, num_exits: int) -> Sequence[str]:
  """weights.npz and every program; returns the file names."""
  leaves, treedef = jax.tree.flatten(variables)
  for i, leaf in enumerate(leaves):
    if np.asarray(leaf).dtype.kind not in "fiub":
      raise errors.InputError(f"variable {i} has dtype {leaf.dtype}, which "
                              "weights.npz cannot hold")
  np.savez(folder / artifact.WEIGHTS,
           **{f"w{i:04d}": np.asarray(a) for i, a in enumerate(leaves)})
  b, = jax_export.symbolic_shape("b")
  w = [jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) for a in leaves]
  shape = tuple(int(d) for d in stats["image_shape"])
  pixels = jax.ShapeDtypeStruct((b,) + shape, jnp.uint8)
  images = jax.ShapeDtypeStruct((b,) + shape, jnp.float32)
  mean, std = (np.asarray(stats[k], np.float32) for k in ("mean", "std"))
  _write(folder, artifact.PREPROCESS,
         lambda x: augment.normalize(x, mean, std), platforms, pixels)
  _write(folder, artifact.FORWARD, forward_program(model, treedef),
         platforms, w, images)
  h = images
  state = jax.ShapeDtypeStruct((b,), jnp.int32)
  scalar = (jax.ShapeDtypeStruct((), jnp.int32),
            jax.ShapeDtypeStruct((), jnp.float32))
  for k in range(num_exits):
    h = _write(folder, artifact.stage_file(k),
               stage_program(model, treedef, k), platforms, w, h, state,
               state, *scalar)[0]
  return [artifact.WEIGHTS] + list(artifact.program_files(num_exits))


def _manifest(rule, stats, names, platforms, num_exits,
              source) -> Dict[str, Any]:
  """The manifest (without its file table)."""
  t = exit_policy_lib.encode_thresholds(rule["thresholds"])
  return {
      "format": artifact.FORMAT, "format_version": artifact.FORMAT_VERSION,
      "num_exits": int(num_exits), "num_classes": int(stats["num_classes"]),
      "class_names": names,
      "image_shape": [int(d) for d in stats["image_shape"]],
      "input_dtypes": ["uint8", "float32"],
      "mean": [float(v) for v in np.ravel(stats["mean"])],
      "std": [float(v) for v in np.ravel(stats["std"])],
      "policy": {"name": rule["policy"], "thresholds": t},
      "policy_names": list(policies.policy_names()),
      "exit_macs": [float(v) for v in rule["exit_macs"]],
      "cost_rule": "MACs per image of the cascade up to exit k (stages 0..k, "
                   "every head) = XLA flops / 2",
      "platforms": platforms,
      "compiler_options": ({"cpu": dict(xla_options.CPU_OPTIONS)}
                           if cpu.enabled() else {}),
      "versions": runtime.installed_versions(),
      "source": source}
