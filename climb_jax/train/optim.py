"""Optimizers and learning rates: one AdamW per parameter group (the encoder, and each objective unit's head).

As in the reference, every group has its own optimizer and schedule:
  * the encoder follows the trainer's linear warmup (`trainer.warmup_steps`) and linear decay to
    `trainer.end_lr` at `trainer.total_steps`, at every step;
  * a unit's head (the MLM head included) follows `get_linear_schedule_with_warmup(N // 10, N)` with
    N = int(T * (end - start)), evaluated on the scheduler steps the unit has taken, that is on the
    steps it has been active plus `Unit.schedule_offset` (objectives.py explains the offset); it is 0
    while the head is frozen. `schedule="trainer"` instead gives a head the encoder's schedule (with
    the unit's peak), an option kept from earlier versions.

Learning rates are computed from the step counter by `LearningRates.at`, the one place they are
defined: the step applies exactly these values (the optimizer transformations below produce only
the direction) and returns them as `metrics["learning_rates"]`, so the log shows what was applied.

The direction is transformers' AdamW (the reference's heads use `transformers.AdamW`, its trainer
`adamw_hf`): bias corrections folded into the step size, eps added to sqrt(v) before correction,
i.e. m_hat / (sqrt(v_hat) + eps / sqrt(1 - b2^t)). The encoder's eps is `trainer.adam_eps` (1e-8);
each head's is its unit's `adam_eps` (1e-6, transformers.AdamW's default). A frozen head keeps its
parameters and optimizer state bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from climb_jax.curriculum.objectives import Unit


@dataclasses.dataclass(frozen=True)
class WarmupDecay:
    """Hugging Face's `get_linear_schedule_with_warmup` times `peak` (decaying to `end`, default 0):
    n / max(1, warmup) while n < warmup, then max(0, (total - n) / max(1, total - warmup))."""

    peak: float
    warmup: int
    total: int
    end: float = 0.0

    def __call__(self, n):
        n = jnp.asarray(n, jnp.float32)
        up = n / max(1, self.warmup)
        down = jnp.maximum(0.0, (self.total - n) / max(1, self.total - self.warmup))
        frac = jnp.where(n < self.warmup, up, down)
        return jnp.where(n < self.warmup, self.peak * frac, self.end + (self.peak - self.end) * frac)


@dataclasses.dataclass(frozen=True)
class LearningRates:
    """Every group's learning rate as a function of the global step (hashable: closed over by the step)."""

    total_steps: int
    encoder: WarmupDecay
    units: tuple[Unit, ...]
    heads: tuple[WarmupDecay, ...]  # per unit: on its schedule index ("window") or the global step ("trainer")

    @classmethod
    def from_config(cls, t: ConfigDict, units: Sequence[Unit]) -> "LearningRates":
        total = int(t.total_steps)
        encoder = WarmupDecay(float(t.lr), int(t.warmup_steps), total, float(t.end_lr))
        heads = []
        for u in units:
            if u.schedule == "trainer":
                heads.append(WarmupDecay(u.lr, int(t.warmup_steps), total, float(t.end_lr)))
            else:
                n = u.num_steps(total)
                heads.append(WarmupDecay(u.lr, n // 10, n))
        return cls(total, encoder, tuple(units), tuple(heads))

    def at(self, step) -> dict[str, jax.Array]:
        """{group: learning rate applied at `step`} (0 for a frozen head); host or jit."""
        step = jnp.asarray(step, jnp.int32)
        out = {"encoder": self.encoder(step)}
        for u, sched in zip(self.units, self.heads):
            first, last = u.update_steps(self.total_steps)
            index = step if u.schedule == "trainer" else step - first + u.schedule_offset(self.total_steps)
            on = (step >= first) & (step <= last)
            out[u.head] = jnp.where(on, sched(index), 0.0)
        return out


def scale_by_adam_hf(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """transformers.AdamW's direction: sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)."""

    def init(params):
        zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros())

    def update(updates, state, params=None):
        del params
        mu = jax.tree_util.tree_map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, updates)
        nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1.0 - b2) * g * g, state.nu, updates)
        count = optax.safe_int32_increment(state.count)
        t = count.astype(jnp.float32)
        size = jnp.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
        direction = jax.tree_util.tree_map(lambda m, v: size * m / (jnp.sqrt(v) + eps), mu, nu)
        return direction, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def _decay_mask(params):
    """Weight decay on matrices only (not biases or layer-norm scales), as Hugging Face's Trainer does."""
    return jax.tree_util.tree_map(lambda x: x.ndim >= 2, params)


def adamw_direction(b1: float, b2: float, eps: float, weight_decay: float) -> optax.GradientTransformation:
    """The AdamW direction every parameter group uses (pre-training's groups and fine-tuning,
    eval/finetune_model.py); the caller moves the parameters by -lr * direction."""
    return optax.chain(scale_by_adam_hf(b1, b2, eps), optax.add_decayed_weights(weight_decay, _decay_mask))


def make_optimizers(t: ConfigDict, units: Sequence[Unit]) -> dict[str, optax.GradientTransformation]:
    """One update direction per top-level parameter group: 'encoder' and each unit's head. The step
    scales each by its learning rate (`LearningRates.at`)."""
    txs = {"encoder": adamw_direction(t.adam_b1, t.adam_b2, t.adam_eps, t.weight_decay)}
    for u in units:
        txs[u.head] = adamw_direction(t.adam_b1, t.adam_b2, u.adam_eps, u.weight_decay)
    return txs


def init_opt_state(txs: Mapping[str, optax.GradientTransformation], params: dict) -> dict:
    return {name: tx.init(params[name]) for name, tx in txs.items()}


class Clipped(NamedTuple):
    grads: dict
    encoder_norm: jax.Array


def clip_like_torch(grads, max_norm: float):
    """`torch.nn.utils.clip_grad_norm_` over the whole tree: scaled by min(1, max_norm / (norm + 1e-6));
    returns (grads, norm). `max_norm <= 0` leaves them as they are. Fine-tuning clips everything it
    trains, since Hugging Face's Trainer clips its model's parameters and there the model holds the
    encoder and the classifier; pre-training clips the encoder only (clip_encoder)."""
    norm = optax.global_norm(grads)
    if max_norm <= 0:
        return grads, norm
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree_util.tree_map(lambda g: g * scale.astype(g.dtype), grads), norm


def clip_encoder(grads: dict, max_norm: float) -> Clipped:
    """The reference's clipping: `clip_grad_norm_(encoder.parameters(), max_norm)`, torch's rule
    (clip_like_torch) over the encoder's gradient; the heads have their own optimizers and are never
    clipped. `max_norm <= 0` turns clipping off."""
    encoder, norm = clip_like_torch(grads["encoder"], max_norm)
    return Clipped({**grads, "encoder": encoder}, norm)


def apply_updates(txs, opt_state: dict, params: dict, grads: dict, lrs: Mapping[str, jax.Array],
                  gates: Mapping[str, jax.Array]):
    """Moves every group by -lr * direction; a group whose gate is False keeps its parameters and
    optimizer state (the gate is given only for heads that can be frozen)."""
    new_params, new_state = {}, {}
    for name, tx in txs.items():
        direction, state = tx.update(grads[name], opt_state[name], params[name])
        lr = lrs[name]
        moved = jax.tree_util.tree_map(lambda p, d: (p - lr * d).astype(p.dtype), params[name], direction)
        if name in gates:
            on = gates[name]
            moved = jax.tree_util.tree_map(lambda new, old: jnp.where(on, new, old), moved, params[name])
            state = jax.tree_util.tree_map(lambda new, old: jnp.where(on, new, old), state, opt_state[name])
        new_params[name], new_state[name] = moved, state
    return new_params, new_state
