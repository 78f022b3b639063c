"""Warm start from a finished run and training a subset of the parameters
(IMTA's second stage: classifiers on a frozen first-stage network)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mexd import errors
from mexd import optim
from mexd import state as state_lib
from mexd.losses import imta


def _cfg(**kw):
  return ml_collections.ConfigDict(dict(
      name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1,
      schedule="constant", **kw))


def _params():
  return {"model": {"blocks_0": {"conv0": {"kernel": jnp.ones((3, 3, 1, 2))}},
                    "heads_0": {"fc": {"kernel": jnp.ones((2, 2))},
                                "out": {"kernel": jnp.ones((2, 4)),
                                        "bias": jnp.zeros((4,))}},
                    "heads_1": {"head": {"out": {"kernel": jnp.ones((4, 4))}},
                                "proj": {"kernel": jnp.ones((4, 4))}}},
          "method": {}}


def test_trainable_pattern_freezes_the_rest():
  tx, _ = optim.make_optimizer(_cfg(trainable=imta.CLASSIFIERS), 10, 1)
  params = _params()
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  paths = {optim.param_path(p): np.asarray(u) for p, u in
           jax.tree_util.tree_flatten_with_path(updates)[0]}
  moved = sorted(p for p, u in paths.items() if np.abs(u).max() > 0)
  assert moved == ["model/heads_0/out/bias", "model/heads_0/out/kernel",
                   "model/heads_1/head/out/kernel",
                   "model/heads_1/proj/kernel"]
  # The trained kernels get SGD with coupled weight decay: -lr (g + wd p).
  np.testing.assert_allclose(paths["model/heads_0/out/kernel"],
                             -0.1 * (1 + 0.1) * 1.9, rtol=1e-6)
  full, _ = optim.make_optimizer(_cfg(), 10, 1)
  all_updates, _ = full.update(grads, full.init(params), params)
  assert all(np.abs(u).max() > 0 for u in jax.tree.leaves(all_updates))


def test_trainable_pattern_matching_nothing_is_a_clear_error():
  tx, _ = optim.make_optimizer(_cfg(trainable="^model/nothing/"), 10, 1)
  with pytest.raises(errors.InputError, match="matches no parameter; paths "
                     "look like 'model/blocks_0/conv0/kernel'"):
    tx.init(_params())


def test_warm_start_copies_matching_leaves_only():
  fresh = state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=_params(),
      batch_stats={"blocks_0": {"bn0": {"mean": jnp.zeros((2,))}}},
      opt_state=optax.sgd(0.1).init(_params()), method_state={},
      rng=jax.random.PRNGKey(0), skipped=jnp.zeros((), jnp.int32))
  run = {"params": {"blocks_0": {"conv0": {"kernel": np.full((3, 3, 1, 2),
                                                             7.0)}},
                    "heads_0": {"out": {"kernel": np.full((2, 4), 5.0)}},
                    # A different shape (an ISC classifier reads 2 x D).
                    "heads_1": {"head": {"out": {"kernel": np.ones((8, 4))}}}},
         "batch_stats": {"blocks_0": {"bn0": {"mean": np.full((2,), 3.0)}}}}
  state, copied, kept = state_lib.warm_start(fresh, run)
  assert sorted(copied) == ["batch_stats/blocks_0/bn0/mean",
                            "params/blocks_0/conv0/kernel",
                            "params/heads_0/out/kernel"]
  assert "params/heads_1/head/out/kernel" in kept
  m = state.params["model"]
  np.testing.assert_array_equal(m["blocks_0"]["conv0"]["kernel"], 7.0)
  np.testing.assert_array_equal(m["heads_0"]["out"]["kernel"], 5.0)
  np.testing.assert_array_equal(m["heads_0"]["out"]["bias"], 0.0)
  np.testing.assert_array_equal(m["heads_1"]["head"]["out"]["kernel"], 1.0)
  np.testing.assert_array_equal(state.batch_stats["blocks_0"]["bn0"]["mean"],
                                3.0)
  assert state.params["method"] == {}


@pytest.mark.slow
def test_imta_two_stages_train_the_classifiers_of_the_first_stage(tmp_path):
  """Stage 1: CE + GE. Stage 2: from its weights, with its final exit as the
  target; every parameter but the classifiers keeps stage 1's value."""
  import helpers  # pylint: disable=g-import-not-at-top
  from mexd import train  # pylint: disable=g-import-not-at-top
  from mexd import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  first, second = str(tmp_path / "ge"), str(tmp_path / "imta2")
  c1 = helpers.digits_config(num_epochs=1, method="ce")
  c1.gradient_equilibrium = True
  train.train_and_evaluate(c1, first)
  c2 = helpers.digits_config(num_epochs=1, method="imta")
  c2.loss.imta.target = "teacher"
  c2.teacher_workdir = c2.init_workdir = first
  c2.optimizer.trainable = imta.CLASSIFIERS
  res = train.train_and_evaluate(c2, second)
  assert res["steps"] > 0
  v1, v2 = (traverse_util.flatten_dict(workdir_lib.load_variables(w)[
      "params"], sep="/") for w in (first, second))
  assert v1.keys() == v2.keys()
  changed = sorted(k for k in v1 if not np.array_equal(v1[k], v2[k]))
  assert changed and all(k.split("/")[1] == "out" for k in changed), changed
  assert any(k.startswith("heads_2/") for k in changed)
