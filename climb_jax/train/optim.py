"""Optimizers: one AdamW per parameter group (the encoder, and each objective unit's head).

The encoder follows the trainer's linear warmup / linear decay. Each unit's head has its own AdamW and
schedule (the trainer's, or warmup over the first tenth of the unit's window and decay to zero at its
end, as in the seed), and only moves while its unit is active: the step gates its update and its
optimizer state with the unit's weight, so an inactive head is bit-for-bit unchanged.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from climb_jax.curriculum.objectives import Unit


def trainer_schedule(t: ConfigDict, peak_lr: float | None = None) -> optax.Schedule:
    """Linear warmup to the peak, then linear decay to `end_lr` at `total_steps`."""
    peak = t.lr if peak_lr is None else peak_lr
    warmup = optax.linear_schedule(0.0, peak, max(t.warmup_steps, 1))
    decay = optax.linear_schedule(peak, t.end_lr, max(t.total_steps - t.warmup_steps, 1))
    return optax.join_schedules([warmup, decay], [t.warmup_steps])


def window_schedule(unit: Unit, total_steps: int) -> optax.Schedule:
    """Warmup over the first tenth of the unit's window, linear decay to zero at its end."""
    start, end = unit.window_steps(total_steps)
    end = min(end, total_steps)
    length = max(end - start, 1)
    warmup = max(length // 10, 1)

    def schedule(step):
        rel = jnp.asarray(step, jnp.float32) - start
        up = rel / warmup
        down = (length - rel) / max(length - warmup, 1)
        return unit.lr * jnp.clip(jnp.minimum(up, down), 0.0, 1.0)

    return schedule


def _decay_mask(params):
    """Weight decay on matrices only (not biases or layer-norm scales), as Hugging Face's Trainer does."""
    return jax.tree_util.tree_map(lambda x: x.ndim >= 2, params)


def _adamw(t: ConfigDict, schedule, weight_decay: float) -> optax.GradientTransformation:
    return optax.adamw(schedule, b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps, weight_decay=weight_decay,
                       mask=_decay_mask)


def make_optimizers(t: ConfigDict, units: Sequence[Unit]) -> dict[str, optax.GradientTransformation]:
    """One optimizer per top-level parameter group: 'encoder' and each unit's head."""
    txs = {"encoder": _adamw(t, trainer_schedule(t), t.weight_decay)}
    for u in units:
        sched = trainer_schedule(t, u.lr) if u.schedule == "trainer" else window_schedule(u, t.total_steps)
        txs[u.head] = _adamw(t, sched, u.weight_decay)
    return txs


def schedules(t: ConfigDict, units: Sequence[Unit]) -> dict[str, optax.Schedule]:
    """The learning rate of every group, for logging."""
    out = {"encoder": trainer_schedule(t)}
    for u in units:
        out[u.head] = trainer_schedule(t, u.lr) if u.schedule == "trainer" else window_schedule(u, t.total_steps)
    return out


def init_opt_state(txs: Mapping[str, optax.GradientTransformation], params: dict) -> dict:
    return {name: tx.init(params[name]) for name, tx in txs.items()}


def apply_updates(txs, opt_state: dict, params: dict, grads: dict, gates: Mapping[str, jax.Array]):
    """Updates every group; a group with a gate of 0 keeps its parameters and optimizer state."""
    new_params, new_state = {}, {}
    for name, tx in txs.items():
        updates, state = tx.update(grads[name], opt_state[name], params[name])
        moved = optax.apply_updates(params[name], updates)
        if name in gates:
            on = gates[name] > 0
            moved = jax.tree_util.tree_map(lambda new, old: jnp.where(on, new, old), moved, params[name])
            state = jax.tree_util.tree_map(lambda new, old: jnp.where(on, new, old), state, opt_state[name])
        new_params[name], new_state[name] = moved, state
    return new_params, new_state
