"""Difficulty scorers on hand-built data: source orders, n-gram perplexity against a direct computation,
child age, and batched self-perplexity against the score function applied row by row."""

import math
from collections import Counter
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from climb_jax.constants import NUM_SPECIAL
from climb_jax.curriculum import difficulty as D
from climb_jax.errors import ConfigError, DataError

MINI = ("aochildes", "switchboard", "overheard", "scripts", "brown_fiction", "brown_nonfiction")
BABYLM_2023 = ("aochildes", "bnc_spoken", "cbt", "children_stories", "gutenberg", "open_subtitles", "qed",
               "simple_wikipedia", "switchboard", "wikipedia")
BABYLM_2024 = ("childes", "bnc_spoken", "gutenberg", "open_subtitles", "simple_wiki", "switchboard")


def split_of(source_ids, positions=None):
    source_ids = np.asarray(source_ids, np.int16)
    if positions is None:
        positions = np.linspace(0, 1, len(source_ids), dtype=np.float32)
    return SimpleNamespace(name="train", source_ids=source_ids, positions=np.asarray(positions, np.float32))


# -- source order ------------------------------------------------------------------------------


def test_seed_orders_for_babylm_2023():
    split = split_of(np.arange(len(BABYLM_2023)))
    spoken = dict(zip(BABYLM_2023, D.source_order_scores(split, BABYLM_2023, "spoken_first")))
    assert spoken == {"aochildes": 1, "bnc_spoken": 2, "switchboard": 2, "open_subtitles": 3, "qed": 3, "cbt": 4,
                      "children_stories": 4, "simple_wikipedia": 5, "wikipedia": 6, "gutenberg": 6}
    gram = dict(zip(BABYLM_2023, D.source_order_scores(split, BABYLM_2023, "grammatical_first")))
    assert gram == {"cbt": 1, "children_stories": 1, "simple_wikipedia": 2, "wikipedia": 3, "gutenberg": 3,
                    "open_subtitles": 4, "bnc_spoken": 5, "switchboard": 5, "qed": 6, "aochildes": 6}


@pytest.mark.parametrize("order", ["spoken_first", "grammatical_first"])
@pytest.mark.parametrize("sources", [BABYLM_2024, MINI, tuple(f"{s}.train" for s in MINI)])
def test_presets_cover_every_known_corpus(order, sources):
    scores = D.source_order_scores(split_of(np.arange(len(sources))), sources, order)
    assert scores.dtype == np.float32 and np.all(scores >= 1) and np.all(scores <= 6)


def test_mini_orders_are_sensible():
    split = split_of(np.arange(6))
    spoken = dict(zip(MINI, D.source_order_scores(split, MINI, "spoken_first")))
    gram = dict(zip(MINI, D.source_order_scores(split, MINI, "grammatical_first")))
    assert spoken["aochildes"] < spoken["overheard"] < spoken["scripts"] < spoken["brown_fiction"] < spoken["brown_nonfiction"]
    assert spoken["switchboard"] == spoken["overheard"]
    assert gram["brown_fiction"] < gram["brown_nonfiction"] < gram["scripts"] < gram["overheard"] < gram["aochildes"]


def test_rows_follow_their_source():
    split = split_of([2, 0, 0, 1, 2])
    scores = D.source_order_scores(split, ("aochildes", "gutenberg", "switchboard"), "spoken_first")
    np.testing.assert_array_equal(scores, [2, 1, 1, 6, 2])


def test_custom_mapping():
    split = split_of([0, 1, 2, 1])
    scores = D.source_order_scores(split, ("a", "b.train", "c"), "custom", "a:3, b:1.5,c:2")
    np.testing.assert_array_equal(scores, [3, 1.5, 2, 1.5])


def test_unnamed_source_lists_sources_and_names():
    with pytest.raises(ConfigError) as info:
        D.source_order_scores(split_of([0, 1]), ("aochildes", "tweets"), "spoken_first")
    msg = str(info.value)
    assert "tweets" in msg and "Sources found in the corpus: aochildes, tweets" in msg and "wikipedia" in msg
    with pytest.raises(ConfigError, match="Sources found in the corpus: a, b"):
        D.source_order_scores(split_of([0, 1]), ("a", "b"), "custom", "a:1")


@pytest.mark.parametrize("order, custom, message", [
    ("easy_first", "", "spoken_first, grammatical_first, custom"),
    ("custom", "", "needs data_curriculum.source_difficulty"),
    ("custom", "a=1", "not 'name:difficulty'"),
    ("custom", "a:x", "not a number"),
    ("custom", "a:inf", "finite"),
])
def test_bad_orders(order, custom, message):
    with pytest.raises(ConfigError, match=message):
        D.source_order_scores(split_of([0]), ("a",), order, custom)


def test_source_ids_out_of_range():
    with pytest.raises(DataError, match="source ids outside"):
        D.source_order_scores(split_of([0, 3]), ("aochildes", "qed"), "spoken_first")


# -- n-gram perplexity -------------------------------------------------------------------------


def ngram_reference(rows, n, k, vocab_size, include_specials=False):
    """Direct computation with dictionaries: strip specials (or only <pad>), pad histories with <s> (id 0)."""
    seqs = [[t for t in r if (t != 1 if include_specials else t >= NUM_SPECIAL)] for r in rows]
    grams, hists = Counter(), Counter()
    for seq in seqs:
        padded = [0] * (n - 1) + seq
        for i, w in enumerate(seq):
            h = tuple(padded[i:i + n - 1])
            grams[h + (w,)] += 1
            hists[h] += 1
    out = []
    outcomes = vocab_size - 1 if include_specials else vocab_size - NUM_SPECIAL
    for seq in seqs:
        if not seq:
            out.append(1.0)
            continue
        padded = [0] * (n - 1) + seq
        total = 0.0
        for i, w in enumerate(seq):
            h = tuple(padded[i:i + n - 1])
            total += math.log((grams[h + (w,)] + k) / (hists[h] + k * outcomes))
        out.append(math.exp(-total / len(seq)))
    return np.array(out)


@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("k", [1.0, 0.1, 0.0])
def test_ngram_matches_direct_computation(n, k, specials):
    rng = np.random.default_rng(n)
    V = 12
    rows = rng.integers(NUM_SPECIAL, V, (7, 9))
    rows[:, 0], rows[:, -1] = 0, 2  # <s> ... </s>
    rows[2, 4] = 3  # an <unk> inside a row: skipped, the history runs across it
    rows[3, 5:] = 1  # padding
    rows[4, 1:-1] = rows[5, 1:-1]  # a repeated row
    rows[6, 1:-1] = 1  # a row with no real token
    got = D.ngram_scores(rows.astype(np.int32), n, k, V, include_specials=specials)
    assert got.dtype == np.float32 and got.shape == (7,)
    np.testing.assert_allclose(got, ngram_reference(rows.tolist(), n, k, V, specials), rtol=2e-6)


def test_default_ngram_is_the_reference_unsmoothed_unigram_by_hand():
    """The reference: MLE unigram counts over every non-pad token of the training rows (specials
    included), a row's score 2 ** mean(-log2 p) over its non-pad tokens."""
    rows = np.array([[0, 5, 6, 2],
                     [0, 5, 5, 2],
                     [0, 7, 2, 1]], np.int32)  # 1 = <pad>: neither counted nor scored
    # counts: <s> 3, 5: 3, 6: 1, </s> 3, 7: 1 -> 11 tokens
    p = {0: 3 / 11, 5: 3 / 11, 6: 1 / 11, 2: 3 / 11, 7: 1 / 11}
    by_hand = [2 ** (-(math.log2(p[0]) + math.log2(p[5]) + math.log2(p[6]) + math.log2(p[2])) / 4),
               2 ** (-(math.log2(p[0]) + 2 * math.log2(p[5]) + math.log2(p[2])) / 4),
               2 ** (-(math.log2(p[0]) + math.log2(p[7]) + math.log2(p[2])) / 3)]
    got = D.ngram_scores(rows, 1, vocab_size=8)
    np.testing.assert_allclose(got, by_hand, rtol=1e-6)
    np.testing.assert_allclose(by_hand, [11 / 27 ** 0.25, 11 / 3, 11 / 9 ** (1 / 3)], rtol=1e-12)


def test_ngram_ranks_repetitive_text_easier():
    rng = np.random.default_rng(0)
    V = 500
    rows = rng.integers(NUM_SPECIAL, V, (200, 30))
    rows[:20] = rng.integers(NUM_SPECIAL, 15, (20, 30))  # rows of a few frequent tokens
    scores = D.ngram_scores(rows.astype(np.int32), 2, 1.0, V)
    assert scores[:20].max() < scores[20:].min()


def test_ngram_errors():
    ids = np.full((2, 4), 7, np.int32)
    with pytest.raises(ConfigError, match="n >= 1"):
        D.ngram_scores(ids, 0)
    with pytest.raises(ConfigError, match="ngram_smoothing"):
        D.ngram_scores(ids, 1, -1.0)
    with pytest.raises(DataError, match="outside the vocabulary"):
        D.ngram_scores(ids, 1, 1.0, vocab_size=7)
    with pytest.raises(DataError, match="rows, length"):
        D.ngram_scores(ids[0], 1)


# -- pseudo-perplexity (the reference's self-perplexity) ------------------------------------------


def fake_nll(calls):
    """A stand-in for the masked model: the NLL of copy c depends on its row and its masked position."""
    def nll(ids, positions):
        calls.append((ids.shape, positions.shape))
        rows = np.arange(len(ids))
        return (ids[rows, positions] % 7) * 0.1 + positions * 0.01 + ids.sum(1) * 1e-4

    return nll


def test_pseudo_perplexity_averages_over_every_non_special_position():
    rng = np.random.default_rng(1)
    L = 9
    ids = rng.integers(NUM_SPECIAL, 40, (11, L)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 0, 2
    ids[3, 4:6] = [2, 0]  # a line boundary inside a row: two more special positions
    calls = []
    indices = np.array([10, 3, 0, 3, 7])  # unsorted, with a repeat
    got = D.pseudo_perplexity_scores(fake_nll(calls), ids, indices=indices, copies=6)
    direct = []
    for i in indices:
        nll = [fake_nll([])(ids[i][None], np.array([p]))[0] for p in range(L) if ids[i, p] >= NUM_SPECIAL]
        direct.append(math.exp(np.mean(nll)))
    np.testing.assert_allclose(got, direct, rtol=1e-6)
    assert {c for c in calls} == {((6, L), (6,))}  # fixed shapes: the last call padded
    assert len(calls) == math.ceil((5 * (L - 2) - 2) / 6)  # exactly the non-special positions, in calls of 6


def test_pseudo_perplexity_errors():
    ids = np.full((4, 3), 9, np.int32)
    with pytest.raises(DataError, match="not finite"):
        D.pseudo_perplexity_scores(lambda i, p: np.full(len(i), np.inf), ids, copies=2)
    with pytest.raises(DataError, match="indices must lie"):
        D.pseudo_perplexity_scores(lambda i, p: np.zeros(len(i)), ids, indices=[4], copies=2)
    with pytest.raises(ConfigError, match="rescore_batch_size"):
        D.pseudo_perplexity_scores(lambda i, p: np.zeros(len(i)), ids, copies=0)
    specials_only = np.zeros((2, 3), np.int32)  # nothing to mask: perplexity 1, no call
    np.testing.assert_array_equal(D.pseudo_perplexity_scores(None, specials_only, copies=2), [1.0, 1.0])


def test_uniform_and_child_age():
    np.testing.assert_array_equal(D.uniform_scores(3), np.ones(3, np.float32))
    split = split_of([0, 0, 1], positions=[0.0, 0.5, 0.2])
    np.testing.assert_array_equal(D.child_age_scores(split), np.float32([0.0, 0.5, 0.2]))
    with pytest.raises(DataError, match="non-finite"):
        D.child_age_scores(split_of([0], positions=[np.nan]))


# -- self-perplexity ---------------------------------------------------------------------------


def make_loss(calls):
    """A tiny jitted per-row loss: softmax cross-entropy of each token under a fixed logit table."""
    table = jax.random.normal(jax.random.PRNGKey(0), (40, 40))

    @jax.jit
    def loss(ids, pos):
        calls.append(ids.shape)
        logits = table[ids[:, :-1]] + pos[:, :-1, None].astype(jnp.float32) * 0.01
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0].mean(1)

    return loss


def test_self_perplexity_is_exp_loss_per_row_with_one_shape():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 40, (23, 10)).astype(np.int32)
    pos = rng.integers(0, 12, (23, 10)).astype(np.int8)
    calls = []
    loss = make_loss(calls)
    indices = np.array([20, 3, 7, 3, 0, 22, 11])  # unsorted, with a repeat
    got = D.self_perplexity_scores(loss, ids, pos, indices=indices, batch_size=4)
    direct = np.exp(np.asarray(loss(ids, pos)))[indices]
    np.testing.assert_allclose(got, direct, rtol=1e-5)
    assert {shape for shape in calls} == {(4, 10), (23, 10)}  # every batch padded to 4 rows
    everything = D.self_perplexity_scores(loss, ids, pos, batch_size=5)
    np.testing.assert_allclose(everything, np.exp(np.asarray(loss(ids, pos))), rtol=1e-5)


def test_self_perplexity_passes_indices_when_asked():
    seen = []

    def loss(ids, pos, idx):
        seen.append(np.asarray(idx).copy())
        return np.asarray(idx, np.float32) / 10

    ids = np.zeros((6, 3), np.int32)
    got = D.self_perplexity_scores(loss, ids, ids.astype(np.int8), indices=[5, 1, 2], batch_size=2)
    np.testing.assert_allclose(got, np.exp(np.array([0.5, 0.1, 0.2])), rtol=1e-6)
    np.testing.assert_array_equal(seen[0], [1, 2])
    np.testing.assert_array_equal(seen[1], [5, 5])  # padded with the last row


def test_self_perplexity_errors():
    ids = np.zeros((4, 3), np.int32)
    with pytest.raises(DataError, match="not finite"):
        D.self_perplexity_scores(lambda i, p: np.full(len(i), np.nan), ids, ids, batch_size=2)
    with pytest.raises(DataError, match="indices must lie"):
        D.self_perplexity_scores(lambda i, p: np.zeros(len(i)), ids, ids, indices=[4], batch_size=2)
    with pytest.raises(ConfigError, match="rescore_batch_size"):
        D.self_perplexity_scores(lambda i, p: np.zeros(len(i)), ids, ids, batch_size=0)
