"""Vocabulary curriculum maps: which ids become <unk> at given paces, specials, jit, allowed fractions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from climb_jax.constants import NUM_POS, NUM_SPECIAL, POS_INDEX, UNK_ID
from climb_jax.constants import MASK_ID
from climb_jax.config.choices import PAPER_VOCAB_KINDS
from climb_jax.curriculum.vocabulary import allowed_vocab_fraction, apply_vocab_curriculum
from climb_jax.errors import ConfigError

V = 100
VOCAB_KINDS = ("none", *PAPER_VOCAB_KINDS)  # the word list has its own tests (test_curriculum_source.py)
X = POS_INDEX["X"]
# <s> tok tok tok </s> <pad> <mask> <unk>, with POS classes per position.
IDS = np.array([[0, 5, 20, 60, 2, 1, 4, 3],
                [0, 99, 10, 50, 30, 9, 2, 1]], np.int32)
POS = np.array([[X, 0, 1, 5, X, X, X, X],
                [X, 11, 3, 2, 0, 10, X, X]], np.int8)


def mapped(kind, pace):
    out, replaced = apply_vocab_curriculum(kind, IDS, POS, pace, V)
    return np.asarray(out), np.asarray(replaced)


def test_token_ids():
    out, rep = mapped("token_ids", 0.2)  # allowed iff id <= 20
    expect = IDS.copy()
    expect[0, 3] = UNK_ID
    expect[1, [1, 3, 4]] = UNK_ID
    np.testing.assert_array_equal(out, expect)
    np.testing.assert_array_equal(rep, (expect == UNK_ID) & (IDS != UNK_ID))
    out, _ = mapped("token_ids", 0.6)  # id 60 is exactly at the limit: allowed
    assert out[0, 3] == 60 and out[1, 1] == UNK_ID
    out, rep = mapped("token_ids", 1.0)
    np.testing.assert_array_equal(out, IDS)
    assert not rep.any()


def test_pos_tags():
    out, rep = mapped("pos_tags", 0.1)  # 0.1 * 11 = 1.1: NOUN and VERB only
    expect = IDS.copy()
    expect[0, 3] = UNK_ID  # DET
    expect[1, [1, 2, 3, 5]] = UNK_ID  # X, ADV, ADJ, "."
    np.testing.assert_array_equal(out, expect)
    out, _ = mapped("pos_tags", 3 / 11)  # up to ADV
    assert out[1, 2] == 10 and out[1, 3] == 50 and out[1, 5] == UNK_ID
    out, rep = mapped("pos_tags", 1.0)
    np.testing.assert_array_equal(out, IDS)


def test_pos_tags_and_token_ids():
    # limit = pace * 11 * V; key = pos * V + id.
    out, _ = mapped("pos_tags_and_token_ids", (1 * V + 20) / (11 * V))  # NOUN all, VERB up to id 20
    expect = IDS.copy()
    expect[0, 3] = UNK_ID  # DET 60
    expect[1, [1, 2, 3, 5]] = UNK_ID  # X 99, ADV 10, ADJ 50, "." 9
    np.testing.assert_array_equal(out, expect)
    assert out[0, 2] == 20  # VERB id 20 sits exactly on the limit
    out, _ = mapped("pos_tags_and_token_ids", (1 * V + 19) / (11 * V))
    assert out[0, 2] == UNK_ID


@pytest.mark.parametrize("kind", VOCAB_KINDS)
def test_specials_never_replaced(kind):
    out, rep = mapped(kind, 0.0)
    special = IDS < NUM_SPECIAL
    np.testing.assert_array_equal(out[special], IDS[special])
    assert not rep[special].any()
    if kind != "none":
        assert rep[~special].sum() > 0


@pytest.mark.parametrize("kind", VOCAB_KINDS[1:])
def test_map_after_masking_hides_random_tokens_and_keeps_mask(kind):
    """The step maps again after masking (the reference maps the masked inputs): <mask> stays, a random
    replacement outside the allowed set becomes <unk>, and mapped tokens are left as they are."""
    once, _ = apply_vocab_curriculum(kind, IDS, POS, 0.2, V)
    twice, rep = apply_vocab_curriculum(kind, once, POS, 0.2, V)
    np.testing.assert_array_equal(np.asarray(twice), np.asarray(once))  # idempotent
    assert not np.asarray(rep).any()
    masked = np.asarray(once).copy()
    masked[1, 2] = MASK_ID  # a masked position
    masked[0, 1] = 99  # a random replacement at a NOUN position
    out, _ = apply_vocab_curriculum(kind, masked, POS, 0.2, V)
    assert np.asarray(out)[1, 2] == MASK_ID
    # token ids: 99 is above 0.2 * V; with POS tags a NOUN position stays allowed (key 0 * V + 99 <= 220).
    assert np.asarray(out)[0, 1] == (UNK_ID if kind == "token_ids" else 99)
    masked[1, 3] = 7  # a random replacement at an ADJ position: hidden by the POS kinds, allowed by id
    out, _ = apply_vocab_curriculum(kind, masked, POS, 0.1, V)
    assert np.asarray(out)[1, 3] == (7 if kind == "token_ids" else UNK_ID)


@pytest.mark.parametrize("kind", VOCAB_KINDS[1:])
def test_jit_matches_host_and_compiles_once(kind):
    traces = []

    @jax.jit
    def f(ids, pos, pace):
        traces.append(1)
        return apply_vocab_curriculum(kind, ids, pos, pace, V)

    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, (4, 32)).astype(np.int32)
    pos = rng.integers(0, NUM_POS, (4, 32)).astype(np.int8)
    for pace in (0.0, 0.13, 0.5, 0.77, 1.0):
        a = f(jnp.asarray(ids), jnp.asarray(pos), jnp.float32(pace))
        b = apply_vocab_curriculum(kind, ids, pos, pace, V)
        np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
        np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
    assert len(traces) == 1


@pytest.mark.parametrize("kind", VOCAB_KINDS)
def test_allowed_fraction_counts_allowed_units(kind):
    """Against brute force: every (pos class, non-special id) pair through the map itself."""
    ids = np.tile(np.arange(NUM_SPECIAL, V, dtype=np.int32), NUM_POS)[None]
    pos = np.repeat(np.arange(NUM_POS, dtype=np.int8), V - NUM_SPECIAL)[None]
    paces = np.array([0.0, 0.05, 0.3, 0.5, 0.91, 1.0])
    got = allowed_vocab_fraction(kind, paces, V)
    for p, g in zip(paces, got):
        _, rep = apply_vocab_curriculum(kind, ids, pos, p, V)
        assert g == pytest.approx(1.0 - np.asarray(rep).mean())
    assert float(allowed_vocab_fraction(kind, 1.0, V)) == 1.0
    assert np.all(np.diff(got) >= 0)


def test_errors():
    with pytest.raises(ConfigError, match="token_ids, pos_tags"):
        apply_vocab_curriculum("words", IDS, POS, 0.5, V)
    with pytest.raises(ConfigError, match="special tokens"):
        apply_vocab_curriculum("token_ids", IDS, POS, 0.5, NUM_SPECIAL)


def test_full_pace_allows_x_tagged_tokens():
    """The reference's combined rule would keep X-tagged tokens as <unk> forever; at pace 1 nothing is replaced."""
    ids = np.array([[0, 50, 99, 2]], np.int32)
    pos = np.array([[X, X, X, X]], np.int8)
    out, rep = apply_vocab_curriculum("pos_tags_and_token_ids", ids, pos, 1.0, V)
    np.testing.assert_array_equal(np.asarray(out), ids)
    out, _ = apply_vocab_curriculum("pos_tags_and_token_ids", ids, pos, 0.999, V)
    assert np.asarray(out)[0, 1] == UNK_ID
