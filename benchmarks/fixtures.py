"""The train step the speed benchmarks run, built in one place.

`make_step(model, method_name, ...)` returns a `StepSetup`: the method, the
optimizer, the state from `mexd.state.create` and the real
`mexd.steps.make_train_step` under `mexd.cpu.xla_options.jit` with the state
donated, plus a random uint8 batch. step_time, overhead, memory,
sharded_step and input_pipeline all time this step.

Defaults (the CIFAR recipes'): SGD 0.1 + Nesterov 0.9, weight decay 5e-4 on
kernels, constant learning rate; on-device normalisation (mean 0.5, std
0.25), pad-4 random crop and flip.

Teacher-student methods (erde, kd) read a frozen teacher's logits. Here the
teacher is a copy of the student network with the state's initial
variables, so its forward pass costs what a same-size teacher's costs. Only
`_teacher` and the `StepSetup` methods know how the step receives it (the
third argument of the step); a benchmark calls `setup.step(state, batch)`.
"""

import dataclasses
import functools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mexd import config_lib
from mexd import losses
from mexd import models
from mexd import optim
from mexd import sharding
from mexd import state as state_lib
from mexd import steps
from mexd.cpu import xla_options

Batch = Dict[str, Any]  # {"image": uint8 [B, H, W, C], "label": int32 [B]}


def resnet18(width: int = 64, num_classes: int = 100, dtype: str = "float32",
             stages: Sequence[int] = (2, 2, 2, 2), layers=None):
  """The CIFAR multi-exit ResNet-18 with BYOT heads at base width `width`.

  Stage widths (w, 2w, 4w, 8w), stem w; w = 64 with stages (2, 2, 2, 2) is
  the registry's "resnet18". `stages` (1, 1, 1, 1) gives a ResNet-10 (tests).
  `layers`: a `mexd.models.layers.Layers`; None: those of the backend.
  """
  return models.get_model(
      "resnet18", num_classes=num_classes, head="byot", dtype=dtype,
      layers=layers, stage_sizes=tuple(stages),
      widths=tuple(width * m for m in (1, 2, 4, 8)), stem_width=width)


def fashion_cnn(student: bool = False, dtype: str = "float32", layers=None):
  """The Fashion-MNIST recipe's multi-exit CNN (`configs/fashion_mnist.py`;
  `student`: its width-halved student), 10 classes, 28 x 28 x 1 inputs.

  Built from the recipe's own config, so it follows the recipe.
  """
  from mexd.configs import fashion_mnist  # pylint: disable=g-import-not-at-top
  c = fashion_mnist.get_config("student=True" if student else None)
  return models.get_model(c.model.name, num_classes=10, dtype=dtype,
                          layers=layers, **dict(c.model.kwargs))


# --net names of the speed benchmarks -> (H, W, C), classes, crop pad.
NETS = {"resnet18": ((32, 32, 3), 100, 4),
        "fashion_cnn": ((28, 28, 1), 10, 2),
        "fashion_student": ((28, 28, 1), 10, 2)}


def net(name: str, *, width: int = 64, num_classes: Optional[int] = None,
        dtype: str = "float32", stages: Sequence[int] = (2, 2, 2, 2),
        layers=None):
  """A `NETS` entry's mexd model (resnet18 at base `width`)."""
  if name not in NETS:
    raise ValueError(f"net {name!r}: expected one of {sorted(NETS)}")
  if name == "resnet18":
    return resnet18(width, num_classes or NETS[name][1], dtype, stages,
                    layers)
  return fashion_cnn(name == "fashion_student", dtype, layers)


SMALL_MODELS = ("digits_cnn", "fashion_cnn", "small_cnn")


def canonical_setting(name: str) -> Tuple[int, Tuple[int, int, int]]:
  """(num_classes, (H, W, C)) of a registered model at its canonical size.

  CIFAR nets 32 x 32 x 3 with 100 classes, ImageNet nets 224 x 224 x 3 with
  1000, the small CNNs one channel with 10.
  """
  hw = models.input_size(name)
  if name in SMALL_MODELS:
    return 10, (hw, hw, 1)
  return (1000 if hw == 224 else 100), (hw, hw, 3)


def random_batch(batch: int, image_shape: Sequence[int], num_classes: int,
                 seed: int = 0) -> Dict[str, np.ndarray]:
  """Host batch: uint8 images [B, H, W, C] and int32 labels [B]."""
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (batch,) + tuple(image_shape),
                                dtype=np.uint8),
          "label": rng.integers(0, num_classes, (batch,), dtype=np.int32)}


@dataclasses.dataclass(frozen=True)
class StepSetup:
  """A built benchmark step.

  Attributes:
    model: the multi-exit Flax model.
    method: the `mexd.losses.Method`.
    tx: the optax optimizer.
    state: the initial `TrainState` (ShapeDtypeStructs when abstract).
    batch: {"image": uint8 [B, H, W, C], "label": int32 [B]} on the
      device(s), or ShapeDtypeStructs.
    jitted: the jitted step; call it through `step` / `compile`.
    teacher: the frozen teacher's {"params", "batch_stats"}, {} for methods
      without a teacher.
  """

  model: Any
  method: Any
  tx: Any
  state: Any
  batch: Batch
  jitted: Callable[..., Any]
  teacher: Any

  def step(self, state, batch: Batch):
    """(state, metrics) of one step (jit's call path; compiles once)."""
    return self.jitted(state, batch, self.teacher)

  def lower(self):
    """The step lowered for `state` and `batch`."""
    return self.jitted.lower(self.state, self.batch, self.teacher)

  def compile(self) -> Tuple[Callable[[Any, Batch], Any], Any]:
    """(run(state, batch) -> (state, metrics), the compiled executable).

    `run` calls the executable itself: it compiles once, where a first call
    of `step` after `lower().compile()` would compile a second time.
    """
    compiled = self.lower().compile()
    return functools.partial(_run_compiled, compiled, self.teacher), compiled


def _run_compiled(compiled, teacher, state, batch):
  return compiled(state, batch, teacher)


def _teacher(method, model, state, abstract: bool):
  """(teacher model or None, teacher variables or {}) for the step.

  The teacher is the student network with the state's initial variables,
  copied into buffers of its own (the state is donated, the teacher not).
  """
  if not method.needs_teacher:
    return None, {}
  variables = {"params": state.params["model"],
               "batch_stats": state.batch_stats}
  if not abstract:
    variables = jax.tree.map(jnp.copy, variables)
  return model, variables


def make_step(model, method_name: str, *, batch: int,
              image_shape: Sequence[int] = (32, 32, 3),
              num_classes: int = 100, dtype: str = "float32",
              crop_pad: int = 4, schedule: str = "constant",
              steps_per_epoch: int = 390, num_epochs: int = 200,
              abstract: bool = False, mesh=None, seed: int = 0,
              xla_cpu_options: Optional[bool] = None) -> StepSetup:
  """Builds the benchmark step of `model` trained with `method_name`.

  Args:
    model: the multi-exit Flax model (e.g. `resnet18(16)`).
    method_name: a `mexd.losses` name ("ce", "pl", "eed", "erde", ...).
    batch: global batch size B.
    image_shape: (H, W, C) of one image.
    num_classes: label range of the random batch.
    dtype: compute dtype of the step.
    crop_pad: pad of the random crop (0: none).
    schedule: learning-rate schedule of the SGD ("constant", "cosine").
    steps_per_epoch, num_epochs: the schedule's (and the methods') length.
    abstract: state and batch as ShapeDtypeStructs; nothing is allocated or
      run (for `lower().compile()`, e.g. memory analysis).
    mesh: a `mexd.sharding` mesh: state and teacher replicated on it, the
      batch sharded along its data axis, the step jitted with those
      shardings. None: the default device, no shardings.
    seed: the state's init key and the random batch's seed.
    xla_cpu_options: compile with `mexd.cpu.xla_options` (False: plain
      `jax.jit`); None follows the switch (`mexd.cpu.enabled()`).

  Returns:
    the `StepSetup`.
  """
  image_shape = tuple(image_shape)
  channels = image_shape[-1]
  method = losses.get_method(method_name)
  opt = config_lib.base_config().optimizer
  opt.schedule = schedule
  tx, _ = optim.make_optimizer(opt, steps_per_epoch, num_epochs)
  init = functools.partial(state_lib.create, model=model, method=method,
                           tx=tx, image_shape=image_shape)
  key = jax.random.PRNGKey(seed)
  host = random_batch(batch, image_shape, num_classes, seed)
  shardings = {}
  if abstract:
    state = jax.eval_shape(init, key)
    data = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
            for k, v in host.items()}
  elif mesh is None:
    state = jax.jit(init)(key)
    data = {k: jax.device_put(v) for k, v in host.items()}
  else:
    repl, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    ssh = jax.tree.map(lambda _: repl, jax.eval_shape(init, key))
    state = jax.jit(init, out_shardings=ssh)(key)
    data = {k: jax.device_put(v, bsh) for k, v in host.items()}
    shardings = dict(in_shardings=(ssh, bsh, repl),
                     out_shardings=(ssh, repl))
  teacher_model, teacher = _teacher(method, model, state, abstract)
  step_fn = steps.make_train_step(
      model=model, method=method, tx=tx, mean=(0.5,) * channels,
      std=(0.25,) * channels, crop_pad=crop_pad, flip=True,
      steps_per_epoch=steps_per_epoch, num_epochs=num_epochs,
      teacher_model=teacher_model, dtype=jnp.dtype(dtype))
  jitted = xla_options.jit(step_fn, enabled=xla_cpu_options,
                           donate_argnums=(0,), **shardings)
  return StepSetup(model=model, method=method, tx=tx, state=state,
                   batch=data, jitted=jitted, teacher=teacher)


def param_count(setup: StepSetup) -> int:
  """Number of model parameters (the method's own excluded)."""
  return int(sum(np.prod(a.shape)
                 for a in jax.tree.leaves(setup.state.params["model"])))


def thresholds_for(scores, p):
  """[E] thresholds making a fraction p of the live examples exit at k < E-1.

  scores: [E, N] max-prob scores of the one-pass logits.
  """
  e, n = scores.shape
  alive = np.ones(n, bool)
  theta = np.full(e, -np.inf, np.float32)
  for k in range(e - 1):
    s = np.sort(scores[k][alive])[::-1]
    m = int(round(p * s.size))
    if m == 0:
      theta[k] = np.inf
      continue
    # Midway between the m-th and (m+1)-th best scores (robust to rounding).
    theta[k] = s[m - 1] if m == s.size else 0.5 * (s[m - 1] + s[m])
    alive &= ~(scores[k] >= theta[k])
  return theta
