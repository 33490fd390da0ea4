"""The pure train step `(state, batch, curriculum) -> (state, metrics)` over a frozen settings dataclass.

Everything a curriculum changes during a run arrives as the `curriculum` argument, one pytree of fixed
shapes computed on the host (`curriculum/source.py`): the allowed vocabulary ids, the data difficulty
threshold, which units compute their loss, which heads move and every group's learning rate. So one
compile serves the whole run whatever the values, and the host may drive them (a schedule, or a
controller that watches the loss). The host-side sampler owns which rows are drawn; the threshold only
zeroes the loss weight of a row scored above it, which the exact sampler never draws (it keeps the
data curriculum exact when rows arrive shard by shard).

The recipe is the reference's: each active unit's loss is a mean over its targets and the step
minimises their sum; the encoder's gradient is clipped to norm 1.0 (the heads never are); each
group moves by its own AdamW and learning rate (`optim.py`). Metrics are device sums and counts;
the loop fetches them only at log steps.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from climb_jax.config import choices
from climb_jax.constants import NUM_SPECIAL
from climb_jax.curriculum import objectives, pacing, vocabulary
from climb_jax.curriculum.source import Curriculum
from climb_jax.curriculum.objectives import Unit
from climb_jax.models.roberta import LMHead, RobertaConfig, RobertaEncoder
from climb_jax.train import masking, optim
from climb_jax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """Everything static about a run's step: closed over by the compiled function."""

    model: RobertaConfig
    units: tuple[Unit, ...]
    total_steps: int
    learning_rates: optim.LearningRates
    max_grad_norm: float
    vocab_kind: str = "none"
    vocab_pacing: pacing.PacingParams | None = None
    unk_targets: str = choices.DEFAULT_UNK_TARGETS

    @classmethod
    def from_config(cls, config: ConfigDict, model: RobertaConfig, units: tuple[Unit, ...]) -> "StepSettings":
        """From a validated run config, its model and its parsed units."""
        t, vc = config.trainer, config.vocab_curriculum
        return cls(
            model=model,
            units=tuple(units),
            total_steps=int(t.total_steps),
            learning_rates=optim.LearningRates.from_config(t, units),
            max_grad_norm=float(t.max_grad_norm),
            vocab_kind=vc.kind,
            vocab_pacing=pacing.PacingParams.from_config(vc.pacing) if vc.kind != "none" else None,
            unk_targets=vc.unk_targets,
        )

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size


def make_train_step(s: StepSettings, txs: Mapping[str, optax.GradientTransformation]) -> Callable:
    """Builds the pure step function; the caller jits it once (with shardings and donation)."""
    encoder = RobertaEncoder(s.model)
    heads = {u.head: LMHead(s.model, num_outputs=(s.vocab_size if u.task == "mlm" else u.num_classes))
             for u in s.units}
    always = [u.always_active(s.total_steps) for u in s.units]

    def encode(params, ids, key):
        return encoder.apply({"params": params["encoder"]}, ids, None, deterministic=False, rngs={"dropout": key})

    def mlm_loss(params, u: Unit, ids, candidates, remap, key):
        k_mask, k_drop = jax.random.split(key)
        mb = masking.mlm_mask(k_mask, ids, candidates, mask_probability=u.mask_probability,
                              random_probability=u.random_probability, unmask_probability=u.unmask_probability,
                              vocab_size=s.vocab_size)
        hidden = encode(params, remap(mb.input_ids), k_drop)
        picked = jnp.take_along_axis(hidden, mb.positions[..., None], axis=1)
        logits = heads[u.head].apply({"params": params[u.head]}, picked).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, mb.targets)
        correct = (jnp.argmax(logits, -1) == mb.targets).astype(jnp.float32)
        return jnp.stack([(nll * mb.weights).sum(), mb.weights.sum(), (correct * mb.weights).sum(),
                          mb.overflow.sum().astype(jnp.float32)])

    def pos_loss(params, u: Unit, ids, pos_ids, rows, remap, key):
        k_mask, k_drop = jax.random.split(key)
        labels = objectives.pos_labels(pos_ids, u.tags)
        masked, selected = masking.pos_mask(k_mask, ids, labels, mask_probability_pos=u.mask_probability_pos,
                                            mask_probability_other=u.mask_probability_other,
                                            random_probability=u.random_probability,
                                            unmask_probability=u.unmask_probability, vocab_size=s.vocab_size)
        hidden = encode(params, remap(masked), k_drop)
        logits = heads[u.head].apply({"params": params[u.head]}, hidden).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        w = selected.astype(jnp.float32) * rows[:, None]
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        return jnp.stack([(nll * w).sum(), w.sum(), (correct * w).sum(), jnp.zeros((), jnp.float32)])

    def unit_grads(params, ids, pos_ids, rows, candidates, remap, weights, key, i):
        """One unit's weighted mean loss, its [loss sum, target count, correct count, overflow] and the
        gradient.

        Each unit is differentiated on its own, inside its own `lax.cond` when it can be inactive: a
        cond inside `value_and_grad` would make the inactive branch write zeros for every activation
        the active one keeps for the backward pass (a third of a vanilla step in memory traffic);
        here it writes only a zero gradient tree. The weight scales the loss, so it reaches the
        gradient as a scalar in the backward pass, not as another pass over the parameters."""
        u = s.units[i]
        k = jax.random.fold_in(key, i)

        def weighted_loss(p):
            st = (mlm_loss(p, u, ids, candidates, remap, k) if u.task == "mlm"
                  else pos_loss(p, u, ids, pos_ids, rows, remap, k))
            return weights[i] * st[0] / jnp.maximum(st[1], 1.0), st

        (loss, st), g = jax.value_and_grad(weighted_loss, has_aux=True)(params)
        return loss, st, g

    def loss_and_grads(params, ids, pos_ids, rows, candidates, remap, weights, key):
        """The total loss sum_i w_i * mean_loss_i, the units' stats and the gradient of the total (the
        target counts do not depend on the parameters, so the units' gradients simply add up)."""
        total = jnp.zeros((), jnp.float32)
        grads = None
        stats = []
        for i in range(len(s.units)):
            compute = functools.partial(unit_grads, params, ids, pos_ids, rows, candidates, remap, weights, key, i)
            if always[i]:
                loss, st, g = compute()
            else:  # skip the unit's passes while it is inactive; one compiled function either way
                loss, st, g = jax.lax.cond(
                    weights[i] > 0, compute,
                    lambda: (jnp.zeros((), jnp.float32), jnp.zeros((4,), jnp.float32),
                             jax.tree_util.tree_map(jnp.zeros_like, params)))
            total = total + loss
            grads = g if grads is None else jax.tree_util.tree_map(jnp.add, grads, g)
            stats.append(st)
        return total, jnp.stack(stats), grads

    def train_step(state: TrainState, batch: Mapping[str, jax.Array], cur: Curriculum):
        step = state.step
        raw = batch["input_ids"].astype(jnp.int32)
        pos_ids = batch["pos_ids"].astype(jnp.int32)
        # bool [B]: the rows the data curriculum allows (batches without scores: benchmarks, pre-flight)
        in_pace = (batch["score"] <= cur.difficulty_threshold if "score" in batch
                   else jnp.ones(raw.shape[:1], bool))
        candidates = (raw >= NUM_SPECIAL) & in_pace[:, None]
        if s.vocab_kind != "none":
            def remap(x):  # the reference maps after masking: random replacements obey the curriculum too
                return vocabulary.apply_allowed(x, pos_ids, cur.allowed_vocab)[0]

            ids, replaced = vocabulary.apply_allowed(raw, pos_ids, cur.allowed_vocab)
            if s.unk_targets == "exclude":
                candidates = candidates & ~replaced
        else:
            def remap(x):
                return x

            ids, replaced = raw, jnp.zeros_like(candidates)
        key = jax.random.fold_in(state.rng, step)
        loss, stats, grads = loss_and_grads(state.params, ids, pos_ids, in_pace.astype(jnp.float32), candidates,
                                            remap, cur.unit_weights, key)
        clipped = optim.clip_encoder(grads, s.max_grad_norm)
        gates = {u.head: cur.head_moves[i] for i, u in enumerate(s.units) if not always[i]}
        params, opt_state = optim.apply_updates(txs, state.opt_state, state.params, clipped.grads,
                                                cur.learning_rates, gates)
        new_state = state.replace(step=step + 1, params=params, opt_state=opt_state)
        allowed = cur.allowed_vocab[:, NUM_SPECIAL:]
        metrics = {
            "loss": loss,
            "grad_norm": clipped.encoder_norm,  # the encoder's, before clipping
            "unit_stats": stats[:, :3],  # [U, 3]: loss sum, target count, correct count
            "mlm_overflow": stats[:, 3].sum(),  # selected MLM tokens beyond the static slots (left out)
            "unk_replaced": replaced.sum().astype(jnp.float32),  # real tokens the vocabulary curriculum hid
            "real_tokens": (raw >= NUM_SPECIAL).sum().astype(jnp.float32),
            "rows_above_threshold": (~in_pace).sum().astype(jnp.float32),  # 0 with the exact sampler
            # The curriculum as applied: what the log and the plots show.
            "vocab_pace": cur.vocab_pace,
            "vocab_allowed_ids": allowed.any(axis=0).sum().astype(jnp.float32),
            "vocab_allowed_fraction": allowed.mean(dtype=jnp.float32),
            "difficulty_threshold": cur.difficulty_threshold,
            "objective_weights": cur.unit_weights,
            "learning_rates": cur.learning_rates,
        }
        return new_state, metrics

    return train_step
