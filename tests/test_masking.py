"""MLM masking: counts, candidates, 80/10/10 proportions, and determinism."""

import jax
import jax.numpy as jnp
import numpy as np

from climb_jax.constants import MASK_ID, NUM_SPECIAL
from climb_jax.train.masking import mlm_mask, num_targets


def _batch(b=64, length=128, vocab=1000, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(NUM_SPECIAL, vocab, size=(b, length)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 0, 2
    return jnp.asarray(ids)


def _mask(ids, key=0, **kw):
    args = dict(mask_probability=0.15, random_probability=0.1, unmask_probability=0.1, vocab_size=1000)
    args.update(kw)
    return mlm_mask(jax.random.PRNGKey(key), ids, ids >= NUM_SPECIAL, **args)


def test_masks_round_p_times_candidates_and_never_specials():
    ids = _batch()
    mb = _mask(ids)
    assert mb.positions.shape == (64, num_targets(128, 0.15))
    counts = np.asarray(mb.weights.sum(1))
    assert (counts == round(0.15 * 126)).all()
    pos = np.asarray(mb.positions)
    w = np.asarray(mb.weights) > 0
    chosen = pos[w]
    assert ((chosen > 0) & (chosen < 127)).all()  # never <s> (0) or </s> (127)
    # Targets are the original tokens; untouched positions are unchanged.
    np.testing.assert_array_equal(np.asarray(mb.targets), np.take_along_axis(np.asarray(ids), pos, 1))
    changed = np.asarray(mb.input_ids) != np.asarray(ids)
    rows = np.arange(64)[:, None]
    selected = np.zeros_like(changed)
    selected[np.broadcast_to(rows, pos.shape)[w], pos[w]] = True
    assert not (changed & ~selected).any()


def test_replacement_proportions_are_80_10_10():
    ids = _batch(b=512, seed=1)
    mb = _mask(ids, key=3)
    w = np.asarray(mb.weights) > 0
    new = np.take_along_axis(np.asarray(mb.input_ids), np.asarray(mb.positions), 1)[w]
    old = np.asarray(mb.targets)[w]
    n = len(new)
    frac_mask = (new == MASK_ID).mean()
    frac_keep = (new == old).mean()
    frac_random = 1 - frac_mask - frac_keep
    # Binomial standard error at n ~ 9.7k is ~0.004; allow 4 sigma.
    assert abs(frac_mask - 0.8) < 0.02, frac_mask
    assert abs(frac_keep - 0.1) < 0.015, frac_keep  # includes random draws that hit the same id (~0.01%)
    assert abs(frac_random - 0.1) < 0.015, frac_random
    assert n == 512 * 19


def test_position_choice_is_uniform_over_candidates():
    ids = _batch(b=2000, length=32, seed=2)
    mb = _mask(ids, key=5, mask_probability=0.25)
    pos = np.asarray(mb.positions)[np.asarray(mb.weights) > 0]
    hist = np.bincount(pos, minlength=32)[1:31]
    expected = len(pos) / 30
    chi2 = ((hist - expected) ** 2 / expected).sum()
    assert chi2 < 60, chi2  # 29 degrees of freedom: p < 1e-3 at ~58


def test_rows_with_few_candidates_and_determinism():
    ids = np.full((3, 16), 1, np.int32)  # padding only
    ids[1, 1:4] = [10, 11, 12]
    ids[2, 1:16] = 20
    mb = _mask(jnp.asarray(ids))
    assert np.asarray(mb.weights.sum(1)).tolist() == [0.0, 1.0, 2.0]  # round(.15*3)=0 -> at least 1; round(2.25)=2
    again = _mask(jnp.asarray(ids))
    np.testing.assert_array_equal(np.asarray(mb.input_ids), np.asarray(again.input_ids))
    other = _mask(jnp.asarray(ids), key=1)
    assert not np.array_equal(np.asarray(_mask(_batch(), key=0).positions), np.asarray(_mask(_batch(), key=1).positions))
    del other


def test_unmask_and_random_probability_zero_gives_all_mask_tokens():
    ids = _batch(b=8)
    mb = _mask(ids, random_probability=0.0, unmask_probability=0.0)
    new = np.take_along_axis(np.asarray(mb.input_ids), np.asarray(mb.positions), 1)[np.asarray(mb.weights) > 0]
    assert (new == MASK_ID).all()
