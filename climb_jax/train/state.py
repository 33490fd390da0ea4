"""The training state: one pytree holding everything a step reads and writes, and nothing else.

The curriculum state lives inside it, so the compiled step reads the vocabulary pace, the data
fraction and the objective weights as inputs: a curriculum moving never recompiles the step, and a
checkpoint of the state is a checkpoint of the curriculum.
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
class CurriculumState:
    """Curriculum values in force at `TrainState.step`, recomputed by every step from the step counter."""

    vocab_pace: jax.Array  # float32 []: the vocabulary curriculum's pacing value (1.0 = everything)
    token_rank: jax.Array  # int32 [V]: frequency rank of each id (the vocabulary curriculum's order)
    data_fraction: jax.Array  # float32 []: fraction of the (difficulty-sorted) data the sampler may use
    objective_weights: jax.Array  # float32 [U]: 1.0 for each active objective unit, in `units` order


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 []
    params: dict  # {'encoder', 'mlm_head', 'pos_<unit>'...}
    opt_state: dict  # one optax state per parameter group
    rng: jax.Array  # uint32 [2]: the run's base key; every step folds in the step number
    curriculum: CurriculumState


def init_model_params(rng: jax.Array, model_cfg: RobertaConfig, units: Sequence[Unit]) -> dict:
    """Encoder, MLM head and every POS unit's head (an LM-head-shaped classifier, as in the seed)."""
    k_model, k_heads = jax.random.split(rng)
    params = dict(init_params(k_model, model_cfg))
    hidden = jnp.zeros((1, 1, model_cfg.hidden_size), jnp.float32)
    for i, u in enumerate(units):
        if u.task == "pos":
            head = LMHead(model_cfg, num_outputs=u.num_classes)
            params[u.head] = head.init(jax.random.fold_in(k_heads, i), hidden)["params"]
    return params


def initial_curriculum(token_rank: np.ndarray, num_units: int) -> CurriculumState:
    return CurriculumState(
        vocab_pace=jnp.ones((), jnp.float32),
        token_rank=jnp.asarray(token_rank, jnp.int32),
        data_fraction=jnp.ones((), jnp.float32),
        objective_weights=jnp.ones((num_units,), jnp.float32),
    )


def param_count(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def create_train_state(rng: jax.Array, model_cfg: RobertaConfig, units: Sequence[Unit], txs: dict,
                       token_rank: np.ndarray) -> TrainState:
    """A fresh state: parameters from `rng`, optimizer states, and the curriculum at its start."""
    k_params, k_run = jax.random.split(rng)
    params = init_model_params(k_params, model_cfg, units)
    opt_state = {name: tx.init(params[name]) for name, tx in txs.items()}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, rng=k_run,
                      curriculum=initial_curriculum(token_rank, len(units)))
