"""Periodic actions of the training loop: "every N steps, and on these steps".

The loop calls each action after every step with the number of steps done;
an action fires when that number is a multiple of its period or one of its
extra steps, and never on the steps it skips. CLU's `PeriodicAction` has the
same contract, but importing `clu.periodic_actions` imports TensorFlow
(through `clu.metric_writers`), which mexd does not depend on.
"""

from typing import Any, Callable, Collection, Optional


class Periodic:
  """Calls `fn(step, *args)` on every `every`-th step and on `on_steps`.

  Attributes:
    every: the period in steps (>= 1), or None for `on_steps` only.
    on_steps: extra steps to fire on (e.g. the last step).
    skip_steps: steps never to fire on, even when due (e.g. the last step of
      the validation action, whose final evaluation is done after the loop).
  """

  def __init__(self, fn: Callable[..., Any], every: Optional[int], *,
               on_steps: Collection[int] = (),
               skip_steps: Collection[int] = ()):
    if every is not None and every < 1:
      raise ValueError(f"every must be >= 1 steps, got {every}")
    self.fn, self.every = fn, every
    self.on_steps, self.skip_steps = frozenset(on_steps), frozenset(skip_steps)

  def due(self, step: int) -> bool:
    """Whether the action fires after `step` steps."""
    if step in self.skip_steps:
      return False
    return ((self.every is not None and step % self.every == 0)
            or step in self.on_steps)

  def __call__(self, step: int, *args) -> bool:
    """Runs the action if it is due; returns whether it ran."""
    if not self.due(step):
      return False
    self.fn(step, *args)
    return True
