"""Block-structured multi-exit nets (ResNet, WRN, ResNeXt, VGG); exit placement.

An architecture is a flat list of *units* (the stem, each residual block, each
VGG conv layer, a final BN-ReLU) built by `BlockNet.plan()`. Exits sit after
some units; the units between two exits form one stage (`Stage`), so stage k
runs units (e_{k-1}, e_k] and exit head k reads unit e_k's output.

Exit positions (`exits` option):
* "stages": after the last unit of each architectural stage (the default:
  four exits for ResNets, three for WRN / ResNeXt, five for VGG).
* a tuple of fractions in (0, 1), as SDN: exit i goes after the first unit
  whose cumulative backbone MACs (convs only, at the canonical input size,
  32 for CIFAR and 224 for ImageNet) reach fraction_i of the backbone total;
  the final exit is always added after the last unit. E = len(fractions) + 1.

Every unit is an unbound `nn.Module` with attributes `out_width` and `stride`
(its spatial downsampling factor) and a `cost(hw)` method returning its
analytic MACs for an hw x hw input; the analytic cost is used only to place
exits (measured costs come from XLA, see `mexd.models.costs`).
"""

from typing import Any, List, NamedTuple, Sequence, Tuple, Union

import flax.linen as nn
import jax.numpy as jnp

from mexd import errors
from mexd.models import base
from mexd.models import heads
from mexd.models import layers

Array = Any


def conv_macs(hw: int, cin: int, cout: int, kernel: int, stride: int,
              groups: int = 1) -> Tuple[int, int]:
  """MACs and output size of a k x k conv with padding k // 2 on hw x hw."""
  out = (hw + 2 * (kernel // 2) - kernel) // stride + 1
  return out * out * kernel * kernel * cin * cout // groups, out


class Plan(NamedTuple):
  """An architecture as a list of units.

  Attributes:
    units: unbound unit modules (attributes out_width, stride; method cost).
    stage_ends: index of the last unit of each architectural stage.
    input_size: canonical input size (32 CIFAR, 224 ImageNet).
    hidden: hidden widths of the final classifier (FinalHead).
  """

  units: List[nn.Module]
  stage_ends: Tuple[int, ...]
  input_size: int
  hidden: Tuple[int, ...] = ()


def unit_costs(plan: Plan) -> List[int]:
  """Analytic MACs of every unit at the plan's canonical input size."""
  hw, costs = plan.input_size, []
  for u in plan.units:
    costs.append(u.cost(hw))
    hw = -(-hw // u.stride)
  return costs


def place_exits(costs: Sequence[int], stage_ends: Sequence[int],
                exits: Union[str, Sequence[float]]) -> Tuple[int, ...]:
  """Unit index after which each exit sits (the last one = the last unit).

  Args:
    costs: per-unit MACs.
    stage_ends: last unit of each architectural stage (used by "stages").
    exits: "stages" or a tuple of increasing fractions in (0, 1).

  Raises:
    InputError: bad option, or two fractions that fall on the same unit or on
      the last unit.
  """
  n = len(costs)
  if isinstance(exits, str):
    if exits != "stages":
      raise errors.InputError(
          f"exits must be 'stages' or a tuple of fractions, got "
          f"{exits!r}")
    return tuple(stage_ends)
  total, cum, idx = float(sum(costs)), 0, []
  cums = []
  for c in costs:
    cum += c
    cums.append(cum)
  for f in exits:
    if not 0.0 < f < 1.0:
      raise errors.InputError(f"exit fractions must lie in (0, 1), got {exits}")
    i = next(i for i, c in enumerate(cums) if c >= f * total)
    if (idx and i <= idx[-1]) or i == n - 1:
      raise errors.InputError(
          f"exit fractions {tuple(exits)} put two exits after unit {i} (or an "
          f"early exit after the last unit); cumulative costs per unit: "
          f"{[round(c / total, 3) for c in cums]}")
    idx.append(i)
  return tuple(idx) + (n - 1,)


class Stage(nn.Module):
  """Runs a sequence of units: h -> u_m(... u_1(h))."""

  units: Sequence[nn.Module]

  def __call__(self, x: Array, *, train: bool = False) -> Array:
    """x: [B, H, W, K] -> [B, H', W', K']."""
    for u in self.units:
      x = u(x, train=train)
    return x


class BlockNet(base.MultiExitModel):
  """A multi-exit net built from a `Plan` (subclasses implement `plan`).

  Attributes:
    num_classes: C.
    head: intermediate exit head kind, one of `heads.HEAD_KINDS`; the final
      exit is the backbone's classifier (`heads.FinalHead`).
    exits: "stages" or a tuple of compute fractions (see module docstring).
    dtype: compute dtype; parameters are float32.
    conv, norm: the layer classes of every unit and head
      (`mexd.models.layers`; `get_model` picks them for the backend).
  """

  num_classes: int = 10
  head: str = "byot"
  exits: Union[str, Tuple[float, ...]] = "stages"
  dtype: Any = jnp.float32
  conv: layers.ModuleDef = layers.FLAX.conv
  norm: layers.ModuleDef = layers.FLAX.norm

  @nn.nowrap
  def plan(self) -> Plan:
    raise NotImplementedError

  @nn.nowrap
  def unit_kwargs(self):
    """Keywords of every unbound unit of `plan`: dtype and layer classes."""
    return dict(dtype=self.dtype, conv=self.conv, norm=self.norm,
                parent=None)

  @nn.nowrap
  def exit_units(self) -> Tuple[int, ...]:
    """Index of the unit after which each exit sits."""
    p = self.plan()
    return place_exits(unit_costs(p), p.stage_ends, self.exits)

  def setup(self):
    if self.head not in heads.HEAD_KINDS:
      raise errors.InputError(f"unknown head kind {self.head!r}; valid: "
                              f"{', '.join(heads.HEAD_KINDS)}")
    p = self.plan()
    ends = place_exits(unit_costs(p), p.stage_ends, self.exits)
    # Downsampling level (product of strides) after each unit.
    levels, lvl = [], 1
    for u in p.units:
      lvl *= u.stride
      levels.append(lvl)
    final_width = p.units[-1].out_width
    blocks, exit_heads, start = [], [], 0
    for k, e in enumerate(ends):
      blocks.append(Stage(tuple(p.units[start:e + 1]), parent=None))
      start = e + 1
      if k == len(ends) - 1:
        exit_heads.append(heads.FinalHead(
            self.num_classes, p.hidden, dtype=self.dtype, parent=None))
        continue
      exit_heads.append(heads.make_head(
          self.head, num_classes=self.num_classes, features=final_width,
          steps=self._byot_steps(p.units, levels, e), dtype=self.dtype,
          conv=self.conv, norm=self.norm))
    self.blocks = blocks
    self.heads = exit_heads

  @nn.nowrap
  def _byot_steps(self, units, levels, e) -> Tuple[Tuple[int, int], ...]:
    """(width, stride) conv steps from unit e's map to the final map.

    One stride-2 step per halving of the resolution; step j outputs the width
    of the first later unit at that resolution, the last step the final
    width. A single stride-1 step if only the width differs.
    """
    final_level, final_width = levels[-1], units[-1].out_width
    steps, lvl = [], levels[e]
    while lvl < final_level:
      lvl *= 2
      width = next(u.out_width for u, l in zip(units, levels) if l == lvl)
      steps.append([width, 2])
    if steps:
      steps[-1][0] = final_width
    elif units[e].out_width != final_width:
      steps.append([final_width, 1])
    return tuple(tuple(s) for s in steps)
