"""The training state: one pytree holding everything a step reads and writes, and nothing else.

The step reads the step counter, the parameters, the optimizer states and the run's base key. The
curricula keep no state of their own in it: the vocabulary pace, which objective units are active,
which heads move and every learning rate are pure functions of the step counter, computed in one
place (`step.curriculum_at`) inside the compiled step, so a curriculum moving never recompiles it
and a checkpoint of this state is a checkpoint of the curricula. The data curriculum's pace belongs
to the host-side sampler, whose state is saved beside this one.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from climb_jax.curriculum.objectives import Unit
from climb_jax.models.roberta import LMHead, RobertaConfig, init_params


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 []: steps taken; the curricula and learning rates are functions of it
    params: dict  # {'encoder', 'mlm_head', '<unit>_head'...}
    opt_state: dict  # one optimizer state per parameter group
    rng: jax.Array  # uint32 [2]: the run's base key; every step folds in the step number


def init_model_params(rng: jax.Array, model_cfg: RobertaConfig, units: Sequence[Unit]) -> dict:
    """Encoder, MLM head and every POS unit's head (an LM-head-shaped classifier, as in the reference)."""
    k_model, k_heads = jax.random.split(rng)
    params = dict(init_params(k_model, model_cfg))
    hidden = jnp.zeros((1, 1, model_cfg.hidden_size), jnp.float32)
    for i, u in enumerate(units):
        if u.task == "pos":
            head = LMHead(model_cfg, num_outputs=u.num_classes)
            params[u.head] = head.init(jax.random.fold_in(k_heads, i), hidden)["params"]
    return params


def param_count(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def create_train_state(rng: jax.Array, model_cfg: RobertaConfig, units: Sequence[Unit], txs: dict) -> TrainState:
    """A fresh state: parameters from `rng` and the optimizer states."""
    k_params, k_run = jax.random.split(rng)
    params = init_model_params(k_params, model_cfg, units)
    opt_state = {name: tx.init(params[name]) for name, tx in txs.items()}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, rng=k_run)
