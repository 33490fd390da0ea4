"""The vocabulary curriculum: early in training, tokens outside an allowed set become `<unk>`.

The allowed set is data, not code: `allowed_vocab` turns a pace into a bool table `[NUM_POS, V]`
(row = part-of-speech class, column = token id) on the host side of the step, and the compiled step
only looks tokens up in it (`apply_allowed`). So the set can widen on a schedule or react to the run
(`curriculum/source.py`) without recompiling, and it need not be a prefix of ids at all (`word_list`).
The rules, for pace p and vocabulary size V (CLIMB's, plus one of this project's):

  token_ids               allowed iff id <= floor(p * V)   (ids in the tokenizer's order, `data.token_order`)
  pos_tags                allowed iff pos <= floor(p * 11) (POS_TAGS order: NOUN, VERB, ..., ., X)
  pos_tags_and_token_ids  allowed iff pos * V + id <= floor(p * 11 * V)
  word_list               allowed iff rank(id) <= r_min + p * (r_max - r_min), where rank(id) is the
                          lowest rank of a listed word the id spells (`curriculum/word_list.py`); ids
                          that no listed word covers enter at pace `unlisted_pace`

Special tokens (ids below `NUM_SPECIAL`, including `<pad>` and `<mask>`) are always allowed, and at
p >= 1 everything is. The step applies the map after masking as the reference does, so a random
replacement token outside the allowed set becomes `<unk>` too. Differences from the reference: the
pace is floored in float32 (exact for integer keys); for `pos_tags_and_token_ids` the reference's rule
keeps every `X`-tagged token (key 11 * V + id > 11 * V) as `<unk>` even at full pace, while here the
curriculum ends on the whole vocabulary.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from climb_jax.config.choices import VOCAB_KINDS
from climb_jax.curriculum.pacing import array_module
from climb_jax.constants import NUM_POS, NUM_SPECIAL, UNK_ID
from climb_jax.errors import ConfigError

MAX_POS = NUM_POS - 1  # the reference's `max(POS_TAG_MAP.values())` = 11


def _check_kind(kind: str) -> None:
    if kind not in VOCAB_KINDS:
        raise ConfigError(f"vocab_curriculum.kind='{kind}' is not valid; choose one of: {', '.join(VOCAB_KINDS)}.")


def allowed_vocab(kind: str, pace, vocab_size: int, ranks=None, unlisted_pace: float = 1.0):
    """The ids the model may see at `pace`: bool [NUM_POS, V]. One body for both sides: numpy on the
    host (a float pace: plots, tests), `jnp` inside jit (a traced pace: the curriculum source), in
    float32 either way, so both give the same table.

    `ranks` (float32 [V], `inf` for unlisted ids) is needed by `word_list` only."""
    _check_kind(kind)
    if vocab_size <= NUM_SPECIAL:
        raise ConfigError(f"a vocabulary of {vocab_size} ids has no room beyond the {NUM_SPECIAL} special tokens.")
    xp = array_module(pace)
    pace = xp.asarray(pace, xp.float32)
    ids = xp.arange(vocab_size, dtype=xp.int32)[None, :]
    pos = xp.arange(NUM_POS, dtype=xp.int32)[:, None]
    if kind == "none":
        return xp.ones((NUM_POS, vocab_size), bool)
    if kind == "word_list":
        if ranks is None:
            raise ConfigError("vocab_curriculum.kind='word_list' needs vocab_curriculum.word_list (a TSV of word, rank).")
        ranks = xp.asarray(ranks, xp.float32)
        listed = xp.isfinite(ranks)
        low = xp.min(xp.where(listed, ranks, xp.inf))
        high = xp.max(xp.where(listed, ranks, -xp.inf))
        ok = xp.where(listed, ranks <= low + pace * (high - low), pace >= unlisted_pace)[None, :]
    else:
        if kind == "pos_tags":
            key, limit = pos, pace * xp.float32(MAX_POS)
        elif kind == "token_ids":
            key, limit = ids, pace * xp.float32(vocab_size)
        else:  # pos_tags_and_token_ids: lexicographic (pos, id) in one integer, as in the reference
            key, limit = pos * vocab_size + ids, pace * xp.float32(MAX_POS * vocab_size)
        # Integer keys compared with a float limit: floor(limit) keeps the comparison exact in float32.
        ok = key <= xp.floor(limit).astype(xp.int32)
    return xp.broadcast_to(ok | (ids < NUM_SPECIAL) | (pace >= 1.0), (NUM_POS, vocab_size))


def apply_allowed(input_ids, pos_ids, allowed):
    """Maps tokens outside `allowed` (bool [NUM_POS, V], from `allowed_vocab`) to `<unk>`.

    Returns (mapped_ids int32 [B, L], replaced bool [B, L]). The map is idempotent (`<unk>` is
    special), so applying it again after masking only touches the random replacement tokens."""
    ids = jnp.asarray(input_ids).astype(jnp.int32)
    replaced = ~allowed[jnp.asarray(pos_ids).astype(jnp.int32), ids]
    return jnp.where(replaced, UNK_ID, ids).astype(jnp.int32), replaced


def apply_vocab_curriculum(kind: str, input_ids, pos_ids, pace, vocab_size: int, ranks=None):
    """`apply_allowed` of the table at `pace` (one call, for tests and analysis)."""
    return apply_allowed(input_ids, pos_ids, allowed_vocab(kind, pace, vocab_size, ranks))


def allowed_vocab_fraction(kind: str, pace, vocab_size: int, ranks=None):
    """The share of the curriculum's units allowed at `pace` (a float or an array of paces; host):
    allowed (class, non-special id) pairs over all of them, i.e. allowed ids / (V - NUM_SPECIAL) for
    the id kinds and allowed POS classes / 12 for `pos_tags`. Specials are left out; `none` is 1."""
    paces = np.asarray(pace, np.float64)
    out = [allowed_vocab(kind, p, vocab_size, ranks)[:, NUM_SPECIAL:].mean() for p in paces.reshape(-1)]
    return np.asarray(out, np.float64).reshape(paces.shape)
