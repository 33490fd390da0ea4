"""Masking: Bernoulli selection (count per row ~ Binomial), the corruption splits, the static slots."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from climb_jax.constants import MASK_ID, NUM_SPECIAL
from climb_jax.train.masking import OVERFLOW_TAIL, corrupt, mlm_mask, num_targets, pos_mask

V = 1000


def _batch(b=64, length=128, vocab=V, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(NUM_SPECIAL, vocab, size=(b, length)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 0, 2
    return jnp.asarray(ids)


def _mask(ids, key=0, **kw):
    args = dict(mask_probability=0.15, random_probability=0.1, unmask_probability=0.0, vocab_size=V)
    args.update(kw)
    return mlm_mask(jax.random.PRNGKey(key), ids, ids >= NUM_SPECIAL, **args)


def _chi_square_p(observed, expected):
    """p-value of Pearson's chi-square, bins with expected < 5 merged into their neighbour."""
    obs, exp = [], []
    o_acc = e_acc = 0.0
    for o, e in zip(observed, expected):
        o_acc, e_acc = o_acc + o, e_acc + e
        if e_acc >= 5:
            obs.append(o_acc), exp.append(e_acc)
            o_acc = e_acc = 0.0
    obs[-1] += o_acc
    exp[-1] += e_acc
    obs, exp = np.asarray(obs), np.asarray(exp)
    return stats.chi2.sf(((obs - exp) ** 2 / exp).sum(), len(obs) - 1)


def test_selected_count_per_row_follows_binomial():
    """The reference selects each non-special token independently with p = 0.15 (Bernoulli): the
    count per row is Binomial(n, 0.15), not a fixed round(0.15 n)."""
    ids = _batch(b=512)
    n = 126  # candidates per row: everything but <s> and </s>
    counts = []
    for key in range(8):  # 4096 rows
        mb = _mask(ids, key=key)
        assert int(mb.overflow.sum()) == 0
        counts.append(np.asarray(mb.weights.sum(1)).astype(int))
    counts = np.concatenate(counts)
    observed = np.bincount(counts, minlength=n + 1)
    expected = stats.binom.pmf(np.arange(n + 1), n, 0.15) * len(counts)
    assert _chi_square_p(observed, expected) > 1e-3
    assert counts.std() > 3.0  # a fixed count would have none


def test_targets_slots_and_untouched_positions():
    ids = _batch()
    mb = _mask(ids, key=3)
    assert mb.positions.shape == (64, num_targets(128, 0.15))
    pos, w = np.asarray(mb.positions), np.asarray(mb.weights) > 0
    chosen = pos[w]
    assert ((chosen > 0) & (chosen < 127)).all()  # never <s> (0) or </s> (127)
    # Slots hold the selected positions in increasing order, real slots first.
    for row_pos, row_w in zip(pos, w):
        assert (np.diff(row_pos[row_w]) > 0).all() and not (row_w[1:] & ~row_w[:-1]).any()
    np.testing.assert_array_equal(np.asarray(mb.targets), np.take_along_axis(np.asarray(ids), pos, 1))
    changed = np.asarray(mb.input_ids) != np.asarray(ids)
    selected = np.zeros_like(changed)
    rows = np.broadcast_to(np.arange(64)[:, None], pos.shape)
    selected[rows[w], pos[w]] = True
    assert not (changed & ~selected).any()
    # Same key, same masks.
    again = _mask(ids, key=3)
    np.testing.assert_array_equal(np.asarray(again.input_ids), np.asarray(mb.input_ids))


def _split(original, corrupted, selected, vocab):
    """Counts of (mask, unchanged, other) among the selected positions, and their expected shares
    for probabilities (mask, random, unmask): a random draw can land on <mask> or on the original."""
    o, c = np.asarray(original)[selected], np.asarray(corrupted)[selected]
    observed = np.array([(c == MASK_ID).sum(), (c == o).sum(), ((c != MASK_ID) & (c != o)).sum()])
    return observed


@pytest.mark.parametrize("random_p, unmask_p", [(0.1, 0.0), (0.1, 0.1)])
def test_corruption_split_by_chi_square(random_p, unmask_p):
    """90/10/0 (the reference's MLM unit, `unmask_probability: 0`) and 80/10/10 (its POS units)."""
    ids = _batch(b=256)
    selected = np.asarray(ids) >= NUM_SPECIAL
    out = corrupt(jax.random.PRNGKey(7), ids, jnp.asarray(selected), random_probability=random_p,
                  unmask_probability=unmask_p, vocab_size=V)
    observed = _split(ids, out, selected, V)
    m = 1.0 - random_p - unmask_p
    share = np.array([m + random_p / V, unmask_p + random_p / V, random_p * (1 - 2 / V)])
    assert _chi_square_p(observed, share * observed.sum()) > 1e-3
    if unmask_p == 0.0:  # unchanged only when a random draw hits the original token
        assert observed[1] < 0.01 * observed.sum()


def test_random_tokens_are_uniform_over_the_whole_vocabulary():
    """`randint(len(tokenizer))`: special ids included."""
    vocab = 40
    ids = jnp.full((512, 128), 20, jnp.int32)
    out = np.asarray(corrupt(jax.random.PRNGKey(1), ids, jnp.ones(ids.shape, bool), random_probability=1.0,
                             unmask_probability=0.0, vocab_size=vocab))
    observed = np.bincount(out.ravel(), minlength=vocab)
    assert observed[:NUM_SPECIAL].sum() > 0
    assert _chi_square_p(observed, np.full(vocab, out.size / vocab)) > 1e-3


def test_pos_mask_rates_and_split():
    rng = np.random.default_rng(0)
    ids = rng.integers(NUM_SPECIAL, V, size=(256, 128)).astype(np.int32)
    ids[:, 0] = 0
    labels = rng.integers(0, 3, size=ids.shape)
    masked, selected = pos_mask(jax.random.PRNGKey(0), jnp.asarray(ids), jnp.asarray(labels),
                                mask_probability_pos=0.4, mask_probability_other=0.15, random_probability=0.1,
                                unmask_probability=0.1, vocab_size=V)
    sel = np.asarray(selected)
    assert not sel[:, 0].any()  # specials never
    for lab, p in ((labels[:, 1:] > 0, 0.4), (labels[:, 1:] == 0, 0.15)):
        n = lab.sum()
        k = sel[:, 1:][lab].sum()
        assert abs(k - p * n) < 4 * math.sqrt(n * p * (1 - p)), (k, p * n)
    observed = _split(ids, masked, sel, V)
    share = np.array([0.8 + 0.1 / V, 0.1 + 0.1 / V, 0.1 * (1 - 2 / V)])
    assert _chi_square_p(observed, share * observed.sum()) > 1e-3
    assert (np.asarray(masked)[~sel] == ids[~sel]).all()


def test_slot_bound_and_overflow_are_counted():
    # K: the smallest bound whose Binomial(L, p) tail is below OVERFLOW_TAIL.
    k = num_targets(128, 0.15)
    assert stats.binom.sf(k, 128, 0.15) <= OVERFLOW_TAIL < stats.binom.sf(k - 1, 128, 0.15)
    # With 2 slots every row overflows: the first 2 selections are kept, the rest left untouched.
    ids = _batch(b=32)
    full = _mask(ids, key=4, num_slots=128)
    small = _mask(ids, key=4, num_slots=2)
    count = np.asarray(full.weights.sum(1)).astype(int)
    np.testing.assert_array_equal(np.asarray(small.overflow), np.maximum(count - 2, 0))
    np.testing.assert_array_equal(np.asarray(small.positions), np.asarray(full.positions)[:, :2])
    changed = np.asarray(small.input_ids) != np.asarray(ids)
    later = np.asarray(full.positions)[:, 2:][np.asarray(full.weights)[:, 2:] > 0]
    rows = np.broadcast_to(np.arange(32)[:, None], full.positions[:, 2:].shape)[np.asarray(full.weights)[:, 2:] > 0]
    assert not changed[rows, later].any()


def test_the_default_configs_select_and_corrupt_as_the_reference():
    """The probabilities the run configs give, not ones the test passes: `configs/vanilla.py`'s MLM unit
    selects each non-special token with p = 0.15 and corrupts 90/10/0 (the reference's `mlm` unit,
    `unmask_probability: 0`); the POS unit of `configs/objective_cl.py` selects tagged tokens with
    p = 0.4 and the others with 0.15, and corrupts 80/10/10 (the reference's `pos` units)."""
    from climb_jax.curriculum import objectives
    from tests.helpers import load_config

    (mlm,) = objectives.parse_units(load_config("vanilla").objective_curriculum.units)
    pos = next(u for u in objectives.parse_units(load_config("objective_cl").objective_curriculum.units)
               if u.task == "pos")
    ids = _batch(b=512)
    mb = mlm_mask(jax.random.PRNGKey(11), ids, ids >= NUM_SPECIAL, mask_probability=mlm.mask_probability,
                  random_probability=mlm.random_probability, unmask_probability=mlm.unmask_probability,
                  vocab_size=V)
    n, k = 512 * 126, float(mb.weights.sum())  # candidates: every token but <s> and </s>
    assert abs(k - 0.15 * n) < 4 * math.sqrt(n * 0.15 * 0.85)
    selected = np.zeros(ids.shape, bool)
    w = np.asarray(mb.weights) > 0
    selected[np.broadcast_to(np.arange(512)[:, None], w.shape)[w], np.asarray(mb.positions)[w]] = True
    observed = _split(ids, mb.input_ids, selected, V)
    assert _chi_square_p(observed, np.array([0.9 + 0.1 / V, 0.1 / V, 0.1 * (1 - 2 / V)]) * observed.sum()) > 1e-3
    assert observed[1] < 0.01 * observed.sum()  # 0 % left unchanged

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=ids.shape)  # 0: a token whose tag the unit does not predict
    masked, sel = pos_mask(jax.random.PRNGKey(12), ids, jnp.asarray(labels),
                           mask_probability_pos=pos.mask_probability_pos,
                           mask_probability_other=pos.mask_probability_other,
                           random_probability=pos.random_probability, unmask_probability=pos.unmask_probability,
                           vocab_size=V)
    sel = np.asarray(sel)
    real = np.asarray(ids) >= NUM_SPECIAL
    for group, p in ((real & (labels > 0), 0.4), (real & (labels == 0), 0.15)):
        n, k = group.sum(), sel[group].sum()
        assert abs(k - p * n) < 4 * math.sqrt(n * p * (1 - p)), (k, p * n)
    observed = _split(ids, masked, sel, V)
    assert _chi_square_p(observed, np.array([0.8 + 0.1 / V, 0.1 + 0.1 / V, 0.1 * (1 - 2 / V)]) * observed.sum()) > 1e-3
