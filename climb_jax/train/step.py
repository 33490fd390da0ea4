"""The pure train step `(state, batch) -> (state, metrics)` and the per-sequence scoring step.

Everything a curriculum changes during a run enters as data: the step counter drives the pacing
functions and the objective windows inside the compiled function, so one compile serves the whole run.
Metrics are device sums and counts; the loop fetches them only at log steps.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from climb_jax.constants import NUM_SPECIAL
from climb_jax.curriculum import objectives, pacing, vocabulary
from climb_jax.curriculum.objectives import Unit
from climb_jax.models.roberta import LMHead, RobertaConfig, RobertaEncoder
from climb_jax.train import optim
from climb_jax.train.masking import mlm_mask
from climb_jax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """Everything static about a run's step: closed over by the compiled function."""

    model: RobertaConfig
    units: tuple[Unit, ...]
    total_steps: int
    mask_probability: float
    random_probability: float
    unmask_probability: float
    max_grad_norm: float
    vocab_kind: str = "none"
    vocab_pacing: pacing.PacingParams | None = None
    unk_targets: str = "predict_unk"
    data_pacing: pacing.PacingParams | None = None

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size


def curriculum_values(s: StepSettings, step):
    """(vocab pace, data fraction, objective weights) at `step`: the same code on host and in jit."""
    one = jnp.ones((), jnp.float32)
    vocab_pace = one if s.vocab_kind == "none" else jnp.asarray(pacing.pace(s.vocab_pacing, step, s.total_steps), jnp.float32)
    data_fraction = one if s.data_pacing is None else jnp.asarray(pacing.pace(s.data_pacing, step, s.total_steps), jnp.float32)
    weights = objectives.unit_weights(s.units, step, s.total_steps)
    return vocab_pace, data_fraction, weights


def _clip_by_global_norm(grads, max_norm: float):
    """torch.nn.utils.clip_grad_norm_ semantics: scale by max_norm / (norm + 1e-6) when above max_norm."""
    norm = optax.global_norm(grads)
    if max_norm <= 0:
        return grads, norm
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree_util.tree_map(lambda g: g * scale.astype(g.dtype), grads), norm


def make_train_step(s: StepSettings, txs: Mapping[str, optax.GradientTransformation]) -> Callable:
    """Builds the pure step function; the caller jits it once (with shardings and donation)."""
    encoder = RobertaEncoder(s.model)
    heads = {u.head: LMHead(s.model, num_outputs=(s.vocab_size if u.task == "mlm" else u.num_classes)) for u in s.units}

    def encode(params, ids, key):
        return encoder.apply({"params": params["encoder"]}, ids, None, deterministic=False, rngs={"dropout": key})

    def mlm_loss(params, ids, candidates, key):
        k_mask, k_drop = jax.random.split(key)
        mb = mlm_mask(k_mask, ids, candidates, mask_probability=s.mask_probability,
                      random_probability=s.random_probability, unmask_probability=s.unmask_probability,
                      vocab_size=s.vocab_size)
        hidden = encode(params, mb.input_ids, k_drop)
        picked = jnp.take_along_axis(hidden, mb.positions[..., None], axis=1)
        logits = heads["mlm_head"].apply({"params": params["mlm_head"]}, picked).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, mb.targets)
        correct = (jnp.argmax(logits, -1) == mb.targets).astype(jnp.float32)
        return jnp.stack([(nll * mb.weights).sum(), mb.weights.sum(), (correct * mb.weights).sum()])

    def pos_loss(params, unit: Unit, ids, pos_ids, key):
        k_mask, k_drop = jax.random.split(key)
        labels = objectives.pos_labels(pos_ids, unit.tags)
        masked, selected = objectives.pos_masking(k_mask, ids, labels, unit, s.vocab_size,
                                                  s.random_probability, s.unmask_probability)
        hidden = encode(params, masked, k_drop)
        logits = heads[unit.head].apply({"params": params[unit.head]}, hidden).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        w = selected.astype(jnp.float32)
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        return jnp.stack([(nll * w).sum(), w.sum(), (correct * w).sum()])

    def unit_grads(params, ids, pos_ids, candidates, weights, key, i):
        """One unit's weighted mean loss, its [loss sum, target count, correct count] and the gradient.

        Each unit is differentiated on its own, inside its own `lax.cond` when it can be inactive: a
        cond inside `value_and_grad` would make the inactive branch write zeros for every activation
        the active one keeps for the backward pass (a third of a vanilla step in memory traffic);
        here it writes only a zero gradient tree. The weight scales the loss, so it reaches the
        gradient as a scalar in the backward pass, not as another pass over the parameters."""
        u = s.units[i]
        k = jax.random.fold_in(key, i)

        def weighted_loss(p):
            st = mlm_loss(p, ids, candidates, k) if u.task == "mlm" else pos_loss(p, u, ids, pos_ids, k)
            return weights[i] * st[0] / jnp.maximum(st[1], 1.0), st

        (loss, st), g = jax.value_and_grad(weighted_loss, has_aux=True)(params)
        return loss, st, g

    def loss_and_grads(params, ids, pos_ids, candidates, weights, key):
        """The total loss sum_i w_i * mean_loss_i, the units' stats and the gradient of the total (the
        target counts do not depend on the parameters, so the units' gradients simply add up)."""
        total = jnp.zeros((), jnp.float32)
        grads = None
        stats = []
        for i, u in enumerate(s.units):
            compute = functools.partial(unit_grads, params, ids, pos_ids, candidates, weights, key, i)
            if u.always_active:
                loss, st, g = compute()
            else:  # skip the unit's passes while it is inactive; one compiled function either way
                loss, st, g = jax.lax.cond(
                    weights[i] > 0, compute,
                    lambda: (jnp.zeros((), jnp.float32), jnp.zeros((3,), jnp.float32),
                             jax.tree_util.tree_map(jnp.zeros_like, params)))
            total = total + loss
            grads = g if grads is None else jax.tree_util.tree_map(jnp.add, grads, g)
            stats.append(st)
        return total, jnp.stack(stats), grads

    def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
        step = state.step
        vocab_pace, data_fraction, weights = curriculum_values(s, step)
        ids = batch["input_ids"].astype(jnp.int32)
        pos_ids = batch["pos_ids"].astype(jnp.int32)
        candidates = ids >= NUM_SPECIAL
        if s.vocab_kind != "none":
            ids, replaced = vocabulary.apply_vocab_curriculum(s.vocab_kind, ids, pos_ids, vocab_pace,
                                                              state.curriculum.token_rank, s.vocab_size)
            if s.unk_targets == "exclude":
                candidates = candidates & ~replaced
        else:
            replaced = jnp.zeros_like(candidates)
        key = jax.random.fold_in(state.rng, step)
        loss, stats, grads = loss_and_grads(state.params, ids, pos_ids, candidates, weights, key)
        grads, grad_norm = _clip_by_global_norm(grads, s.max_grad_norm)
        gates = {u.head: weights[i] for i, u in enumerate(s.units) if not u.always_active}
        params, opt_state = optim.apply_updates(txs, state.opt_state, state.params, grads, gates)
        curriculum = state.curriculum.replace(vocab_pace=vocab_pace, data_fraction=data_fraction,
                                              objective_weights=weights)
        new_state = state.replace(step=step + 1, params=params, opt_state=opt_state, curriculum=curriculum)
        n_real = (batch["input_ids"] >= NUM_SPECIAL).sum().astype(jnp.float32)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "unit_stats": stats,  # [U, 3]: loss sum, target count, correct count
            "unk_replaced": (replaced & (batch["input_ids"] >= NUM_SPECIAL)).sum().astype(jnp.float32),
            "real_tokens": n_real,
            "vocab_pace": vocab_pace,
            "data_fraction": data_fraction,
            "objective_weights": weights,
        }
        return new_state, metrics

    return train_step


def make_score_fn(model: RobertaConfig, mask_probability: float) -> Callable:
    """Per-sequence MLM loss with fixed masks and no dropout: the model's own difficulty score
    (self-perplexity data curriculum). Row i is masked with key fold_in(key, index_i), so a sequence's
    score does not depend on which batch it was scored in."""
    encoder = RobertaEncoder(model)
    head = LMHead(model, num_outputs=model.vocab_size)

    def score(params, ids, indices, key):
        ids = ids.astype(jnp.int32)

        def one(row, index):
            mb = mlm_mask(jax.random.fold_in(key, index), row[None], row[None] >= NUM_SPECIAL,
                          mask_probability=mask_probability, random_probability=0.0, unmask_probability=0.0,
                          vocab_size=model.vocab_size)
            return mb

        mb = jax.vmap(one)(ids, indices)
        mb = jax.tree_util.tree_map(lambda x: x[:, 0], mb)
        hidden = encoder.apply({"params": params["encoder"]}, mb.input_ids, None, deterministic=True)
        picked = jnp.take_along_axis(hidden, mb.positions[..., None], axis=1)
        logits = head.apply({"params": params["mlm_head"]}, picked).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, mb.targets)
        return (nll * mb.weights).sum(1) / jnp.maximum(mb.weights.sum(1), 1.0)

    return score
