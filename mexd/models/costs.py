"""Per-exit compute (measured by XLA) and parameter counts of multi-exit models.

Counting rules:
* FLOPs are XLA's `cost_analysis()["flops"]` of the compiled (optimised)
  eval-mode program that runs stages 0..k and returns exit k's logits, for
  ONE image (compiled with batch 1), with the model rebuilt from stock flax
  layers (`layers.FLAX`: XLA's convolutions, the architecture's cost
  whichever layers the model runs with). XLA counts a multiply-add as 2
  flops, and MACs = flops / 2.
* XLA counts only the kernel taps that land inside the image: products with
  the zero padding are not counted (a 3x3 conv on a 4x4 map counts 100 of
  the 144 taps). It also counts elementwise work (BN scale / shift, ReLU,
  pooling, residual adds) at about one flop per element. On small maps the
  first effect wins: CIFAR ResNet-18 measures 0.484 G MACs where the usual
  count (all taps, convs + fc) is 0.557 G.
* The prefix for exit k contains blocks 0..k and head k only (heads of the
  earlier exits are not run), i.e. the cumulative cost of answering at exit
  k when the earlier exits' heads are skipped; an early-exit cascade that
  evaluates every head pays the earlier heads' cost on top.

Example:
  model = get_model("resnet18", num_classes=100)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)   # or real
  exit_costs(model, variables, (32, 32, 3))  # [{"exit": 0, "macs": ...}, ...]
"""

from typing import Any, Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mexd import errors
from mexd.models import layers


def _flops(compiled) -> float:
  """The "flops" entry of `compiled.cost_analysis()` (a dict or a list)."""
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  if not ca or "flops" not in ca:
    raise RuntimeError(f"XLA cost analysis has no 'flops' entry: {ca!r}")
  return float(ca["flops"])


def prefix_fn(model, k: int, cascade: bool = False):
  """fn(variables, images) -> exit k's logits [B, C]: stages 0..k, eval mode.

  Runs blocks 0..k and only head k, or with `cascade` every head 0..k (what
  an early-exit cascade pays to answer at exit k: it evaluates each earlier
  exit before moving on).
  """

  def run(m, images):
    h = images
    outs = []
    for j in range(k + 1):
      if cascade:
        h, logits, _ = m.stage(j, h, train=False)
        outs.append(logits)
      else:
        h = m.blocks[j](jnp.asarray(h, m.dtype) if j == 0 else h,
                        train=False)
    if cascade:
      # Keep every head live: XLA would drop the unused ones.
      return jnp.stack(outs).astype(jnp.float32)
    logits, _ = m.heads[k](h, train=False)
    return logits.astype(jnp.float32)

  def fn(variables, images):
    return model.apply(variables, images, method=run)

  return fn


def exit_costs(model, variables: Any, input_shape: Sequence[int],
               cascade: bool = False) -> List[Dict[str, float]]:
  """XLA-measured cost of reaching every exit, per single image.

  Args:
    model: a `MultiExitModel`.
    variables: its variables, real arrays or `jax.ShapeDtypeStruct`s (e.g.
      from `jax.eval_shape(model.init, ...)`); only shapes are used.
    input_shape: one image's shape (H, W, C), or (1, H, W, C).
    cascade: count every head 0..k (an early-exit cascade's cost of
      answering at exit k) instead of head k alone.

  Returns:
    One dict per exit k (shallowest first): {"exit": k, "flops": XLA flops,
    "macs": flops / 2} of the program that runs stages 0..k and returns exit
    k's logits (see the module docstring for the counting rule).
  """
  shape = tuple(input_shape)
  if len(shape) == 3:
    shape = (1,) + shape
  if len(shape) != 4 or shape[0] != 1:
    raise errors.InputError(
        f"input_shape must be (H, W, C) or (1, H, W, C), got "
        f"{tuple(input_shape)}")
  model = layers.with_layers(model, layers.FLAX)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                          variables)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  num_exits = model.apply(abstract, method=lambda m: m.num_exits)
  out = []
  for k in range(num_exits):
    lowered = jax.jit(prefix_fn(model, k, cascade)).lower(abstract, x)
    compiled = lowered.compile()
    flops = _flops(compiled)
    out.append({"exit": k, "flops": flops, "macs": flops / 2})
  return out


def _count(tree) -> int:
  return int(sum(np.prod(a.shape) for a in jax.tree.leaves(tree)))


def param_counts(variables: Any) -> Dict[str, int]:
  """Parameter counts by role (the "params" collection only; no BN stats).

  Args:
    variables: a model's variables (arrays or ShapeDtypeStructs) with top
      level modules "blocks_<k>" and "heads_<k>", k in [0, E).

  Returns:
    {"blocks": all blocks_*, "final_head": heads_<E-1>, "exit_heads":
    heads_0..heads_<E-2>, "backbone": blocks + final head (the single-exit
    network, comparable to published counts), "heads": exit_heads (the
    overhead of the early exits), "total"}.
  """
  params = variables["params"]
  head_keys = sorted((k for k in params if k.startswith("heads_")),
                     key=lambda s: int(s.split("_")[1]))
  blocks = _count({k: v for k, v in params.items()
                   if k.startswith("blocks_")})
  final = _count(params[head_keys[-1]]) if head_keys else 0
  exit_heads = _count([params[k] for k in head_keys[:-1]])
  return {"blocks": blocks, "final_head": final, "exit_heads": exit_heads,
          "backbone": blocks + final, "heads": exit_heads,
          "total": _count(params)}
