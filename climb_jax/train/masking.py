"""Masked-LM masking inside the compiled step.

A fixed number of positions per sequence is masked (round(p * candidates), as in the original BERT
recipe), chosen uniformly at random among non-special tokens. Because the count is bounded by a static
K = ceil(p * L), the MLM head runs on K gathered positions per sequence instead of all L: exact, and
about L/K times less vocabulary-projection work.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from climb_jax.constants import MASK_ID, NUM_SPECIAL


class MaskedBatch(NamedTuple):
    input_ids: jax.Array  # [B, L] with masked positions replaced
    positions: jax.Array  # [B, K] positions the loss is computed on
    targets: jax.Array  # [B, K] original tokens at those positions
    weights: jax.Array  # [B, K] 1.0 for a real target, 0.0 for an unused slot


def num_targets(seq_len: int, mask_probability: float) -> int:
    """Static number of target slots per sequence (an upper bound on the masked count)."""
    return max(1, math.ceil(mask_probability * seq_len))


def mlm_mask(key: jax.Array, input_ids: jax.Array, candidates: jax.Array, *, mask_probability: float,
             random_probability: float, unmask_probability: float, vocab_size: int) -> MaskedBatch:
    """Masks round(p * n) of the `candidates` of each row (at least one when a row has any).

    Of the chosen positions, a fraction 1 - random - unmask becomes <mask>, `random_probability` a random
    non-special token, `unmask_probability` stays unchanged; all are predicted.
    """
    batch, length = input_ids.shape
    k = num_targets(length, mask_probability)
    k_pos, k_kind, k_rand = jax.random.split(key, 3)
    n_cand = candidates.sum(axis=1)
    n_mask = jnp.clip(jnp.round(mask_probability * n_cand), jnp.minimum(n_cand, 1), k).astype(jnp.int32)
    noise = jnp.where(candidates, jax.random.uniform(k_pos, (batch, length)), -1.0)
    _, positions = jax.lax.top_k(noise, k)
    valid = jnp.arange(k)[None, :] < n_mask[:, None]
    targets = jnp.take_along_axis(input_ids, positions, axis=1)

    r = jax.random.uniform(k_kind, (batch, k))
    to_mask = r < 1.0 - random_probability - unmask_probability
    to_random = (~to_mask) & (r < 1.0 - unmask_probability)
    random_ids = jax.random.randint(k_rand, (batch, k), NUM_SPECIAL, vocab_size, dtype=input_ids.dtype)
    new = jnp.where(to_mask, MASK_ID, jnp.where(to_random, random_ids, targets))
    new = jnp.where(valid, new, targets)
    rows = jnp.arange(batch)[:, None]
    masked = input_ids.at[rows, positions].set(new)
    return MaskedBatch(masked, positions, targets, valid.astype(jnp.float32))
