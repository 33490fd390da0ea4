"""BatchSampler: epoch coverage, the allowed set against the reference's percentile rule, uniform vs weighted
frequencies, exact resume across a re-scoring, and disjoint process shares."""

import numpy as np
import pytest

from climb_jax.curriculum.pacing import PacingParams, pace
from climb_jax.data.sampler import BatchSampler
from climb_jax.errors import CheckpointError, ConfigError, DataError

LINEAR = PacingParams("linear", 0.1, 0.8, 0.1, 1.0)
CHI2_DF19_P001 = 43.82  # chi-square critical value, 19 degrees of freedom, p = 0.001


def reference_allowed(scores, p):
    """The reference's allowed set: scores at most the p-th percentile (np.percentile, linear)."""
    return np.nonzero(scores <= np.percentile(scores, p * 100))[0]


# -- vanilla -----------------------------------------------------------------------------------


def test_epochs_cover_every_row_once():
    n, b = 50, 8
    s = BatchSampler(n, b, seed=3)
    stream = np.concatenate([s.indices(t) for t in range(40)])  # 320 draws: 6 full epochs and a bit
    for e in range(6):
        np.testing.assert_array_equal(np.sort(stream[e * n:(e + 1) * n]), np.arange(n))
    assert not np.array_equal(stream[:n], stream[n:2 * n])  # reshuffled every epoch


def test_batches_larger_than_the_data():
    s = BatchSampler(5, 12, seed=0)
    stream = np.concatenate([s.indices(0), s.indices(1)])
    for e in range(4):
        np.testing.assert_array_equal(np.sort(stream[e * 5:(e + 1) * 5]), np.arange(5))


def test_pure_function_of_seed_and_step():
    a, b = BatchSampler(1000, 16, seed=1), BatchSampler(1000, 16, seed=1)
    first = [a.indices(t) for t in (0, 70, 3, 500)]
    again = [b.indices(t) for t in (500, 3, 70, 0)][::-1]  # another order, another instance
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.indices(0), BatchSampler(1000, 16, seed=2).indices(0))
    assert a.fraction(0) == 1.0


# -- the allowed set ---------------------------------------------------------------------------


def test_allowed_count_matches_the_reference_percentile_rule():
    rng = np.random.default_rng(0)
    for scores in (rng.random(997), rng.integers(1, 7, 1000).astype(np.float32), rng.lognormal(3, 1, 500)):
        s = BatchSampler(len(scores), 1, seed=0, scores=scores, pacing=LINEAR, total_steps=1000)
        for step in range(0, 1001, 37):
            p = float(pace(LINEAR, step, 1000))
            expect = reference_allowed(np.asarray(scores, np.float32), p)
            assert s.allowed_count(step) == len(expect), (step, p)
            np.testing.assert_array_equal(np.sort(s._order[:s.allowed_count(step)]), expect)


def test_sources_enter_whole_like_the_reference():
    scores = np.repeat(np.array([1, 2, 3, 4], np.float32), [400, 300, 200, 100])
    s = BatchSampler(1000, 32, seed=0, scores=scores, pacing=LINEAR, total_steps=1000)
    assert s.allowed_count(0) == 400  # the 10th percentile is 1: every score-1 row
    assert s.allowed_count(1000) == 1000
    assert s.fraction(0) == 0.4


def test_data_fraction_is_what_the_sampler_allows_beside_the_pace():
    """The logged `data_fraction` is the share of rows a batch can come from; the pace is logged beside it."""
    scores = np.repeat(np.array([1, 2, 3, 4], np.float32), [400, 300, 200, 100])
    s = BatchSampler(1000, 32, seed=0, scores=scores, pacing=LINEAR, total_steps=1000)
    for step in range(0, 1001, 50):
        p = float(pace(LINEAR, step, 1000))
        assert s.pace(step) == pytest.approx(p)
        assert s.fraction(step) == len(reference_allowed(scores, p)) / 1000  # whole tiers: >= the pace
        assert s.fraction(step) >= p
        drawn = s.indices(step)
        assert scores[drawn].max() <= np.sort(scores)[int(s.fraction(step) * 1000) - 1]
    assert s.pace(0) == pytest.approx(0.1) and s.fraction(0) == 0.4  # the log said 0.1; 40% is drawable
    plain = BatchSampler(1000, 32, seed=0)
    assert plain.pace(5) == 1.0 and plain.fraction(5) == 1.0


@pytest.mark.parametrize("uniform", [True, False])
def test_never_outside_the_allowed_set(uniform):
    rng = np.random.default_rng(1)
    scores = rng.lognormal(0, 1, 5000).astype(np.float32)
    s = BatchSampler(5000, 64, seed=0, scores=scores, pacing=LINEAR, total_steps=400, uniform=uniform)
    for step in range(0, 400, 7):
        allowed = set(reference_allowed(scores, float(pace(LINEAR, step, 400))).tolist())
        assert set(s.indices(step).tolist()) <= allowed
    counts = [s.allowed_count(t) for t in range(0, 401, 20)]
    assert counts == sorted(counts) and counts[-1] == 5000


def test_at_least_one_batch():
    scores = np.arange(10_000, dtype=np.float32)
    s = BatchSampler(10_000, 256, seed=0, scores=scores, pacing=PacingParams("linear", 0.1, 0.9, 0.0, 1.0),
                     total_steps=100)
    assert s.allowed_count(0) == 256
    assert s.indices(0).max() < 256


def test_uniform_and_weighted_frequencies():
    scores = np.arange(1, 21, dtype=np.float32)  # 20 rows, row i has score i + 1
    full = PacingParams("none")
    expected_uniform = np.full(20, 1 / 20)
    expected_weighted = scores / scores.sum()

    def frequencies(uniform):
        s = BatchSampler(20, 50, seed=7, scores=scores, pacing=full, total_steps=10, uniform=uniform)
        draws = np.concatenate([s.indices(t) for t in range(400)])
        return np.bincount(draws, minlength=20), len(draws)

    def chi2(counts, total, probs):
        e = probs * total
        return float(((counts - e) ** 2 / e).sum())

    u, nu = frequencies(True)
    w, nw = frequencies(False)
    assert chi2(u, nu, expected_uniform) < CHI2_DF19_P001
    assert chi2(w, nw, expected_weighted) < CHI2_DF19_P001
    assert chi2(w, nw, expected_uniform) > 10 * CHI2_DF19_P001  # the test can tell them apart
    assert chi2(u, nu, expected_weighted) > 10 * CHI2_DF19_P001


def test_weighted_inside_the_allowed_prefix_and_zero_weights():
    scores = np.array([0, 0, 0, 5, 1, 9, 9, 9], np.float32)
    # Pace 0.6 until step 500: the 60th percentile is 5.8, so rows 0-4 are allowed.
    pacing = PacingParams("step", 0.0, 0.5, 0.6, 1.0)
    s = BatchSampler(8, 4, seed=0, scores=scores, pacing=pacing, total_steps=1000, uniform=False)
    assert s.allowed_count(0) == 5
    drawn = np.bincount(np.concatenate([s.indices(t) for t in range(300)]), minlength=8)
    assert drawn[[0, 1, 2]].sum() == 0  # zero weight: never drawn
    assert drawn[[5, 6, 7]].sum() == 0  # above the percentile
    assert drawn[4] > 0 and drawn[3] > 3 * drawn[4]  # weights 5 : 1
    zero = BatchSampler(4, 2, seed=0, scores=np.zeros(4), pacing=pacing, total_steps=1000, uniform=False)
    assert set(np.concatenate([zero.indices(t) for t in range(50)]).tolist()) == {0, 1, 2, 3}  # ties: all allowed, drawn uniformly


# -- processes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("curriculum", [False, True])
def test_process_shares_are_disjoint_slices_of_one_batch(curriculum):
    kwargs = {}
    if curriculum:
        kwargs = dict(scores=np.random.default_rng(0).random(300), pacing=LINEAR, total_steps=50, uniform=False)
    whole = BatchSampler(300, 24, seed=5, **kwargs)
    for count in (2, 3, 4, 8):
        parts = [BatchSampler(300, 24, seed=5, process_index=i, process_count=count, **kwargs) for i in range(count)]
        for step in (0, 11, 12, 49):
            shares = [p.indices(step) for p in parts]
            assert all(len(x) == 24 // count for x in shares)
            np.testing.assert_array_equal(np.concatenate(shares), whole.indices(step))
    if not curriculum:  # without replacement: the shares of one step share no row
        shares = [BatchSampler(300, 24, seed=5, process_index=i, process_count=4).indices(3) for i in range(4)]
        assert len(set(np.concatenate(shares).tolist())) == 24


# -- resume ------------------------------------------------------------------------------------


def test_exact_resume_across_rescoring():
    n, total = 2000, 60
    rng = np.random.default_rng(0)
    initial = rng.random(n).astype(np.float32)
    rescored = {20: rng.random(n).astype(np.float32), 40: rng.random(n).astype(np.float32)}

    def run(sampler, start, stop):
        out = []
        for step in range(start, stop):
            if step in rescored and sampler.version < step // 20:
                sampler.set_scores(rescored[step], version=step // 20)
            out.append(sampler.indices(step))
        return out

    make = lambda: BatchSampler(n, 32, seed=9, scores=initial, pacing=LINEAR, total_steps=total, uniform=False)
    straight = run(make(), 0, total)

    first = make()
    head = run(first, 0, 30)
    saved = first.state_dict()
    assert saved["meta"]["version"] == 1 and saved["scores"] is not None
    import json

    json.dumps(saved["meta"])  # the metadata is JSON-able
    resumed = make()  # built from the initial scores, as a restarted run is
    resumed.load_state_dict({"meta": json.loads(json.dumps(saved["meta"])), "scores": saved["scores"]})
    tail = run(resumed, 30, total)
    for a, b in zip(head + tail, straight):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(straight[19], make().indices(19))  # before the re-scoring: unchanged
    assert not np.array_equal(straight[25], make().indices(25))  # the re-scoring changed later batches


def test_resume_with_static_scores_checks_them():
    scores = np.arange(100, dtype=np.float32)
    a = BatchSampler(100, 8, seed=0, scores=scores, pacing=LINEAR, total_steps=10)
    meta = a.state_dict()["meta"]
    b = BatchSampler(100, 8, seed=0, scores=scores, pacing=LINEAR, total_steps=10)
    b.load_state_dict({"meta": meta, "scores": None})  # recomputed scores are the same: fine
    np.testing.assert_array_equal(a.indices(3), b.indices(3))
    c = BatchSampler(100, 8, seed=0, scores=scores[::-1].copy(), pacing=LINEAR, total_steps=10)
    with pytest.raises(CheckpointError, match="difficulty scores of this run differ"):
        c.load_state_dict({"meta": meta, "scores": None})
    with pytest.raises(CheckpointError, match="100 training sequences but the data has 101"):
        BatchSampler(101, 8, seed=0).load_state_dict({"meta": meta, "scores": None})
    with pytest.raises(CheckpointError, match="batch_size"):
        BatchSampler(100, 16, seed=0).load_state_dict({"meta": meta, "scores": None})
    BatchSampler(100, 8, seed=0).load_state_dict({"meta": {}, "scores": None})  # nothing saved: no-op


# -- errors ------------------------------------------------------------------------------------


def test_errors():
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        BatchSampler(100, 8, seed=0, process_count=3)
    with pytest.raises(ConfigError, match="process_index"):
        BatchSampler(100, 8, seed=0, process_index=2, process_count=2)
    with pytest.raises(DataError, match="empty"):
        BatchSampler(0, 8, seed=0)
    with pytest.raises(DataError, match="3 difficulty scores for 4"):
        BatchSampler(4, 2, seed=0, scores=np.ones(3), pacing=LINEAR, total_steps=10)
    with pytest.raises(DataError, match="not finite"):
        BatchSampler(2, 2, seed=0, scores=np.array([1, np.nan]), pacing=LINEAR, total_steps=10)
    with pytest.raises(DataError, match="uniform sampling"):
        BatchSampler(2, 2, seed=0, scores=np.array([1, -1]), pacing=LINEAR, total_steps=10, uniform=False)
    with pytest.raises(ConfigError, match="total_steps"):
        BatchSampler(2, 2, seed=0, scores=np.ones(2), pacing=LINEAR, total_steps=0)
    with pytest.raises(ConfigError, match="smaller than end_percent"):
        BatchSampler(2, 2, seed=0, scores=np.ones(2), pacing=PacingParams("linear", 0.5, 0.5), total_steps=5)
