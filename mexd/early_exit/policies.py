"""Early-exit rules: confidence scores per exit and threshold exits.

Every policy turns stacked exit logits `[E, N, C]` (deepest last) into a score
`[E, N]` where higher means "more confident"; an example leaves at the first
exit k whose score reaches that exit's threshold, `score[k] >= theta_k`, and
the final exit always answers (`theta_{E-1}` is treated as -inf).

  max_prob   max_c softmax(z)_c                          (MSDNet, 6.2)
  entropy    -H(softmax(z)) = sum_c p_c log p_c <= 0     (BranchyNet, 6.3)
  margin     top-1 minus top-2 softmax probability
  patience   run length: how many consecutive exits up to k (k included)
             share exit k's argmax. Thresholds theta_k = p give the patience
             rule "exit at the first k whose last p exits agree".

Probabilities instead of logits: pass `jnp.log(probs)`; softmax of log-probs
returns the probabilities. All functions are pure and jit-compatible (the
policy name must be static).

Usage (logits [E, N, C], labels [N]):
  s = scores(logits, "entropy")                  # [E, N]
  out = simulate(logits, labels, [-0.5, -0.5, -jnp.inf], "entropy",
                 exit_costs=[1.0, 2.0, 3.0])
  out["accuracy"], out["avg_cost"], out["exit_fraction"]
"""

import functools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from mexd import errors

Array = Any
# (previous exit's argmax [B] int32, previous run length [B] int32).
State = Tuple[Array, Array]


def max_prob(logits: Array) -> Array:
  """Max softmax probability. logits: [..., C] -> [...]."""
  return jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1)


def neg_entropy(logits: Array) -> Array:
  """Minus the softmax entropy (nats), <= 0. logits: [..., C] -> [...]."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  p = jnp.exp(logp)
  # 0 * log 0 = 0 where a logit is -inf.
  return jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)


def margin(logits: Array) -> Array:
  """Top-1 minus top-2 softmax probability. logits: [..., C] -> [...]."""
  top2 = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), 2)[0]  # [..., 2]
  return top2[..., 0] - top2[..., 1]


def init_state(batch: int) -> State:
  """The policy state before exit 0: no previous prediction, run length 0."""
  return (jnp.full((batch,), -1, jnp.int32), jnp.zeros((batch,), jnp.int32))


def score_step(policy: str, logits_k: Array,
               state: State) -> Tuple[Array, State]:
  """The score of one exit, given the state carried from the previous exits.

  This is the form the staged predictor runs; `scores` is the loop over it.

  Args:
    policy: a name from `policy_names()` (static).
    logits_k: [B, C] logits of exit k.
    state: (previous argmax [B], previous run length [B]) from `init_state`
      or the previous call.

  Returns:
    (score [B] float32, new state).
  """
  pred = jnp.argmax(logits_k, axis=-1).astype(jnp.int32)  # [B]
  prev_pred, prev_run = state
  run = jnp.where(pred == prev_pred, prev_run + 1, 1).astype(jnp.int32)
  if policy == "patience":
    score = run.astype(jnp.float32)
  else:
    score = get_score_fn(policy)(logits_k).astype(jnp.float32)
  return score, (pred, run)


_SCORE_FNS: Dict[str, Optional[Callable[[Array], Array]]] = {
    "max_prob": max_prob,
    "entropy": neg_entropy,
    "margin": margin,
    "patience": None,  # stateful: see `score_step`.
}


def policy_names() -> Sequence[str]:
  """Sorted names of every exit policy."""
  return sorted(_SCORE_FNS)


def check_policy(policy: str):
  """Raises InputError, listing the valid names, for an unknown policy."""
  if policy not in _SCORE_FNS:
    raise errors.InputError(f"unknown exit policy {policy!r}; valid policies: "
                            f"{', '.join(policy_names())}")


def get_score_fn(policy: str) -> Callable[[Array], Array]:
  """The per-exit score function `[..., C] -> [...]` of a stateless policy.

  Raises:
    InputError: unknown name (listing the valid ones), or "patience", which
      depends on earlier exits: use `scores` or `score_step`.
  """
  check_policy(policy)
  fn = _SCORE_FNS[policy]
  if fn is None:
    raise errors.InputError(f"policy {policy!r} depends on earlier exits; use "
                            "scores(logits, policy) or score_step(...)")
  return fn


@functools.partial(jax.jit, static_argnames="policy")
def scores(logits: Array, policy: str = "max_prob") -> Array:
  """Confidence score of every exit and example (higher = more confident).

  Args:
    logits: [E, N, C] stacked exit logits, deepest last.
    policy: a name from `policy_names()`.

  Returns:
    [E, N] float32 scores.
  """
  check_policy(policy)
  logits = jnp.asarray(logits)
  state = init_state(logits.shape[1])
  out = []
  for k in range(logits.shape[0]):
    s, state = score_step(policy, logits[k], state)
    out.append(s)
  return jnp.stack(out)


def uniform_thresholds(value: float, num_exits: int) -> Array:
  """[E] thresholds: `value` at exits 0..E-2, -inf at the final exit."""
  return jnp.concatenate([jnp.full((num_exits - 1,), value, jnp.float32),
                          jnp.array([-jnp.inf], jnp.float32)])


def exit_index(scores_: Array, thresholds: Array) -> Array:
  """First exit whose score reaches its threshold; the final exit otherwise.

  Args:
    scores_: [E, N] scores.
    thresholds: [E] thresholds; the last entry is ignored (taken as -inf).

  Returns:
    [N] int32 exit index in [0, E).
  """
  scores_ = jnp.asarray(scores_)
  thresholds = jnp.asarray(thresholds, scores_.dtype)
  if thresholds.shape != scores_.shape[:1]:
    raise errors.InputError(
        f"thresholds {thresholds.shape} must have one entry per "
        f"exit, E = {scores_.shape[0]}")
  ok = scores_ >= thresholds[:, None]  # [E, N]
  ok = ok.at[-1].set(True)
  return jnp.argmax(ok, axis=0).astype(jnp.int32)


def default_costs(num_exits: int) -> Array:
  """Cumulative cost k + 1 of exit k (stages run), when none is given."""
  return jnp.arange(1, num_exits + 1, dtype=jnp.float32)


def per_exit_accuracy(logits: Array, labels: Array) -> Array:
  """[E] top-1 accuracy of each exit. logits: [E, N, C], labels: [N]."""
  return jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(labels)[None], axis=1)


def _costs(exit_costs, num_exits: int) -> Array:
  costs = (default_costs(num_exits) if exit_costs is None
           else jnp.asarray(exit_costs, jnp.float32))
  if costs.shape != (num_exits,):
    raise errors.InputError(
        f"exit_costs {costs.shape} must have E = {num_exits} "
        "entries")
  return costs


@jax.jit
def _outcome(scores_, logits, labels, thresholds, costs):
  """simulate() given the scores [E, N]."""
  num_exits, n = scores_.shape
  all_preds = jnp.argmax(logits, -1)  # [E, N]
  ex = exit_index(scores_, thresholds)  # [N]
  preds = all_preds[ex, jnp.arange(n)].astype(jnp.int32)  # [N]
  return {
      "accuracy": jnp.mean(preds == labels),
      "avg_cost": jnp.mean(costs[ex]),
      "exit_fraction": jnp.mean(
          ex[None] == jnp.arange(num_exits)[:, None], axis=1),
      "predictions": preds,
      "exit": ex,
  }


# One simulate() per threshold vector: thresholds [P, E].
_curve = jax.jit(jax.vmap(_outcome, in_axes=(None, None, None, 0, None)))


def simulate(logits: Array, labels: Array, thresholds: Array,
             policy: str = "max_prob",
             exit_costs: Optional[Sequence[float]] = None
             ) -> Dict[str, Array]:
  """Applies a threshold rule to precomputed one-pass logits.

  Args:
    logits: [E, N, C] stacked exit logits, deepest last.
    labels: [N] integer labels.
    thresholds: [E] per-exit thresholds on the policy score (last ignored).
    policy: a name from `policy_names()`.
    exit_costs: [E] cumulative cost of answering at exit k (FLOPs, MACs, ms);
      defaults to k + 1.

  Returns:
    dict with "accuracy" (scalar), "avg_cost" (scalar, mean cost of the exit
    taken), "exit_fraction" [E], "predictions" [N] int32, "exit" [N] int32.
  """
  logits = jnp.asarray(logits)
  costs = _costs(exit_costs, logits.shape[0])
  return _outcome(scores(logits, policy), logits, jnp.asarray(labels),
                  jnp.asarray(thresholds, jnp.float32), costs)


def evaluate_curve(logits: Array, labels: Array, thresholds: Array,
                   policy: str = "max_prob",
                   exit_costs: Optional[Sequence[float]] = None
                   ) -> Dict[str, Array]:
  """`simulate` for a stack of threshold vectors (one curve point each).

  Args:
    logits: [E, N, C]; labels: [N].
    thresholds: [P, E] one threshold vector per point (e.g. from
      `calibrate.msdnet_sweep`).
    policy, exit_costs: as in `simulate`.

  Returns:
    dict with "avg_cost" [P], "accuracy" [P], "exit_fraction" [P, E].
  """
  logits = jnp.asarray(logits)
  costs = _costs(exit_costs, logits.shape[0])
  out = _curve(scores(logits, policy), logits, jnp.asarray(labels),
               jnp.asarray(thresholds, jnp.float32), costs)
  return {key: out[key] for key in ("avg_cost", "accuracy", "exit_fraction")}
