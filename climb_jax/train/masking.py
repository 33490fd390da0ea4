"""Masking inside the compiled step: which tokens each objective unit predicts, and how they are corrupted.

Both units follow the reference's collators. Every non-special token is selected independently
(Bernoulli): with `mask_probability` for an MLM unit; with `mask_probability_pos` for a POS unit's
tagged tokens and `mask_probability_other` for the rest. A selected token becomes `<mask>` with
probability 1 - random - unmask, a token drawn uniformly from the whole vocabulary (special tokens
included, as `randint(len(tokenizer))`) with probability `random_probability`, and stays unchanged
with `unmask_probability`: 90/10/0 for the reference's MLM unit, 80/10/10 for its POS units.

The MLM loss runs on gathered slots. The number of selected tokens of a row is Binomial(n, p), so
its vocabulary projection (the largest matmul of a small model) need only run on a static number
K of slots per row instead of all L positions: K is the smallest bound whose Binomial(L, p) tail is
below `OVERFLOW_TAIL`: 47 slots for L = 128 and p = 0.15, 37 % of the projection work of all 128
positions (the encoder's work is unchanged, so a `small` model's forward pass saves about a tenth). A row that selects more than K tokens keeps its first K selections and leaves the rest
uncorrupted and unpredicted; `MaskedBatch.overflow` counts them (the step logs it as
`mlm_overflow`), and at 1e-9 per row it is expected to stay zero for a whole paper run (400k steps
x 128 rows). The POS heads have a dozen outputs and run on every position.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from climb_jax.constants import MASK_ID, NUM_SPECIAL

# Probability, per row, that more tokens are selected than there are slots.
OVERFLOW_TAIL = 1e-9


class MaskedBatch(NamedTuple):
    input_ids: jax.Array  # [B, L] with the selected positions corrupted
    positions: jax.Array  # [B, K] positions the loss is computed on (slot order = position order)
    targets: jax.Array  # [B, K] original tokens at those positions
    weights: jax.Array  # [B, K] 1.0 for a real target, 0.0 for an unused slot
    overflow: jax.Array  # [B] int32: selected tokens beyond the K slots (left out)


@functools.lru_cache(maxsize=None)
def num_targets(seq_len: int, mask_probability: float, tail: float = OVERFLOW_TAIL) -> int:
    """The static slot count K: the smallest K >= 1 with P(Binomial(seq_len, p) > K) <= tail."""
    p = float(mask_probability)
    if p <= 0.0:
        return 1
    if p >= 1.0:
        return seq_len
    cdf = 0.0
    for k in range(seq_len + 1):
        cdf += math.comb(seq_len, k) * p ** k * (1.0 - p) ** (seq_len - k)
        if k >= 1 and 1.0 - cdf <= tail:
            return k
    return seq_len


def corrupt(key: jax.Array, input_ids: jax.Array, selected: jax.Array, *, random_probability: float,
            unmask_probability: float, vocab_size: int) -> jax.Array:
    """The selected positions become <mask> / a uniform random id in [0, V) / themselves with
    probabilities (1 - random - unmask, random, unmask); every other position is unchanged."""
    k_kind, k_rand = jax.random.split(key)
    r = jax.random.uniform(k_kind, input_ids.shape)
    to_mask = r < 1.0 - random_probability - unmask_probability
    to_random = (~to_mask) & (r < 1.0 - unmask_probability)
    random_ids = jax.random.randint(k_rand, input_ids.shape, 0, vocab_size, dtype=input_ids.dtype)
    new = jnp.where(to_mask, jnp.asarray(MASK_ID, input_ids.dtype), jnp.where(to_random, random_ids, input_ids))
    return jnp.where(selected, new, input_ids)


def mlm_mask(key: jax.Array, input_ids: jax.Array, candidates: jax.Array, *, mask_probability: float,
             random_probability: float, unmask_probability: float, vocab_size: int,
             num_slots: int | None = None) -> MaskedBatch:
    """Selects each of the `candidates` with `mask_probability`, corrupts the selected (`corrupt`) and
    gathers them into `num_slots` (default `num_targets(L, p)`) loss slots per row."""
    batch, length = input_ids.shape
    k = num_targets(length, mask_probability) if num_slots is None else int(num_slots)
    k_sel, k_corrupt = jax.random.split(key)
    selected = (jax.random.uniform(k_sel, (batch, length)) < mask_probability) & candidates
    order = jnp.cumsum(selected, axis=1, dtype=jnp.int32)  # 1-based rank of each selection in its row
    kept = selected & (order <= k)
    count = order[:, -1]
    # Slot j holds the (j+1)-th kept position: the number of positions whose rank is <= j.
    slots = jnp.arange(k, dtype=jnp.int32)
    positions = (order[:, None, :] <= slots[None, :, None]).sum(-1, dtype=jnp.int32)
    valid = slots[None, :] < jnp.minimum(count, k)[:, None]
    positions = jnp.where(valid, positions, 0)
    targets = jnp.take_along_axis(input_ids, positions, axis=1)
    masked = corrupt(k_corrupt, input_ids, kept, random_probability=random_probability,
                     unmask_probability=unmask_probability, vocab_size=vocab_size)
    return MaskedBatch(masked, positions, targets, valid.astype(jnp.float32), jnp.maximum(count - k, 0))


def pos_mask(key: jax.Array, input_ids: jax.Array, labels: jax.Array, *, mask_probability_pos: float,
             mask_probability_other: float, random_probability: float, unmask_probability: float,
             vocab_size: int) -> tuple[jax.Array, jax.Array]:
    """A POS unit's masking: tokens with a label > 0 (a tag of the unit) selected with
    `mask_probability_pos`, other non-special tokens with `mask_probability_other`, then `corrupt`.

    Returns (corrupted ids, selected) where `selected` marks the positions the loss is computed on.
    """
    k_sel, k_corrupt = jax.random.split(key)
    prob = jnp.where(labels > 0, mask_probability_pos, mask_probability_other)
    selected = (jax.random.uniform(k_sel, input_ids.shape) < prob) & (input_ids >= NUM_SPECIAL)
    masked = corrupt(k_corrupt, input_ids, selected, random_probability=random_probability,
                     unmask_probability=unmask_probability, vocab_size=vocab_size)
    return masked, selected
