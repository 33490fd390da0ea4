"""The vocabulary curriculum: early in training, tokens outside an allowed set become `<unk>`.

`apply_vocab_curriculum` runs inside the jitted train step. It reads the pacing value as data, so
the allowed set widens over the run without recompiling; `kind` is a static Python string chosen
once per run. A token's rank is its id: with `data.token_order=frequency` the data pipeline numbers
non-special ids by corpus count (the paper's rule), and with `token_order=bpe` raw merge ids give
the reference's code behaviour, so no rank table is needed. The allowed sets follow CLIMB:

  token_ids               allowed iff id <= pace * V
  pos_tags                allowed iff pos <= pace * 11 (POS_TAGS order: NOUN, VERB, ..., ., X)
  pos_tags_and_token_ids  allowed iff pos * V + id <= pace * 11 * V

Special tokens (ids below `NUM_SPECIAL`, including `<pad>` and `<mask>`) are never replaced. At
pace >= 1 nothing is replaced. The step applies the map after masking as the reference does, so a
random replacement token outside the allowed set becomes `<unk>` too. This differs from the
reference only for `pos_tags_and_token_ids`, whose rule keeps every `X`-tagged token (key
11 * V + id > 11 * V) as `<unk>` even at full pace; the curriculum is meant to end on the whole
vocabulary.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from climb_jax.config.choices import VOCAB_KINDS
from climb_jax.constants import NUM_POS, NUM_SPECIAL, UNK_ID
from climb_jax.errors import ConfigError

MAX_POS = NUM_POS - 1  # the reference's `max(POS_TAG_MAP.values())` = 11


def _check_kind(kind: str) -> None:
    if kind not in VOCAB_KINDS:
        raise ConfigError(f"vocab_curriculum.kind='{kind}' is not valid; choose one of: {', '.join(VOCAB_KINDS)}.")


def apply_vocab_curriculum(kind: str, input_ids, pos_ids, pace, vocab_size: int):
    """Maps tokens outside the allowed set to `<unk>`.

    Args:
      kind: static curriculum kind (one of `VOCAB_KINDS`).
      input_ids: int [B, L] token ids.
      pos_ids: int [B, L] POS class indices (into `POS_TAGS`), same shape.
      pace: float scalar in [0, 1] (may be traced).
      vocab_size: static vocabulary size V.

    Returns:
      (mapped_ids int32 [B, L], replaced bool [B, L]); `replaced` marks the positions set to `<unk>`.
      The map is idempotent (`<unk>` is special), so applying it again after masking only touches
      the random replacement tokens.
    """
    _check_kind(kind)
    ids = jnp.asarray(input_ids).astype(jnp.int32)
    if kind == "none":
        return ids, jnp.zeros(ids.shape, bool)
    if vocab_size <= NUM_SPECIAL:
        raise ConfigError(f"a vocabulary of {vocab_size} ids has no room beyond the {NUM_SPECIAL} special tokens.")
    pace = jnp.asarray(pace, jnp.float32)
    special = ids < NUM_SPECIAL
    if kind == "pos_tags":
        key = jnp.asarray(pos_ids).astype(jnp.int32)
        limit = pace * MAX_POS
    elif kind == "token_ids":
        key, limit = ids, pace * vocab_size
    else:  # pos_tags_and_token_ids: lexicographic (pos, id) in one integer, as in the reference
        key = jnp.asarray(pos_ids).astype(jnp.int32) * vocab_size + ids
        limit = pace * (MAX_POS * vocab_size)
    # Integer keys compared with a float limit: floor(limit) keeps the comparison exact in float32.
    replaced = (key > jnp.floor(limit).astype(jnp.int32)) & ~special & (pace < 1.0)
    return jnp.where(replaced, UNK_ID, ids).astype(jnp.int32), replaced


def allowed_vocab_fraction(kind: str, pace, vocab_size: int):
    """The share of the curriculum's units allowed at `pace` (float or array; numpy on the host).

    token_ids: allowed non-special ids / (V - NUM_SPECIAL); pos_tags: allowed POS classes / 12;
    pos_tags_and_token_ids: allowed (class, non-special id) pairs / (12 * (V - NUM_SPECIAL)).
    Specials are always allowed and are left out of both counts. `none` is 1.
    """
    _check_kind(kind)
    p = np.asarray(pace, np.float64)
    words = vocab_size - NUM_SPECIAL
    if kind == "none":
        return np.ones_like(p)
    if kind == "pos_tags":
        return np.clip(np.floor(p * MAX_POS) + 1, 0, NUM_POS) / NUM_POS
    if kind == "token_ids":
        return np.clip(np.floor(p * vocab_size) - NUM_SPECIAL + 1, 0, words) / words
    limit = np.floor(p * (MAX_POS * vocab_size))[..., None] - np.arange(NUM_POS) * vocab_size
    fraction = np.clip(limit - NUM_SPECIAL + 1, 0, words).sum(-1) / (NUM_POS * words)
    return np.where(p >= 1.0, 1.0, fraction)
