"""The train step on synthetic batches (no corpus): a whole objective + vocabulary curriculum in one compile."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from climb_jax.config import schema
from climb_jax.constants import BOS_ID, EOS_ID, NUM_SPECIAL
from climb_jax.train.compile_count import CompileCounter
from climb_jax.train.setup import RunSetup
from climb_jax.curriculum import source as source_lib

TOTAL = 16  # the POS unit covers steps 0-4 (head moves 0-3), MLM 4-15 (its head from step 4)
VOCAB = 300
NAME = "synthetic_train_step"


def _config():
    c = schema.base_config()
    schema.apply_smoke(c)
    c.model.num_layers, c.model.hidden_size, c.model.num_heads, c.model.intermediate_size = 1, 64, 2, 128
    c.trainer.total_steps, c.trainer.warmup_steps = TOTAL, 2
    c.objective_curriculum.units = ConfigDict(dict(mlm=schema.unit_config("mlm", 0.25, 1.0),
                                                   nv=schema.unit_config("pos", 0.0, 0.25, "pos_noun_verb")))
    c.vocab_curriculum.kind = "token_ids"
    return c


def _batch(step):
    rng = np.random.default_rng(step)
    ids = rng.integers(NUM_SPECIAL, VOCAB, size=(4, 32)).astype(np.int32)
    ids[:, 0], ids[:, 15], ids[:, 16] = BOS_ID, EOS_ID, BOS_ID
    return {"input_ids": jnp.asarray(ids), "pos_ids": jnp.asarray(rng.integers(0, 12, size=ids.shape), jnp.int8)}


@pytest.fixture(scope="module")
def run():
    setup = RunSetup.from_config(_config(), vocab_size=VOCAB)
    source = source_lib.from_config(setup.config, setup.settings)
    fn = setup.train_step()
    fn.__name__ = NAME
    step = jax.jit(fn)
    state = jax.jit(lambda: setup.init_state(0))()
    states, metrics = [jax.device_get(state)], []
    with CompileCounter() as counter:
        for k in range(TOTAL):
            state, m = step(state, _batch(k), source.at(k))
            states.append(jax.device_get(state))
            metrics.append(jax.device_get(m))
    return setup, states, metrics, counter.count(NAME)


def _same(a, b) -> bool:
    return all(bool(np.array_equal(x, y)) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_one_compile_across_the_whole_curriculum(run):
    setup, _, metrics, compiles = run
    assert compiles == 1
    # ... although the objective switched and the vocabulary widened inside it.
    assert metrics[0]["objective_weights"].tolist() == [0.0, 1.0]
    assert metrics[TOTAL - 1]["objective_weights"].tolist() == [1.0, 0.0]
    assert metrics[0]["vocab_pace"] < metrics[TOTAL - 1]["vocab_pace"] == 1.0


def test_loss_finite_and_targets_counted(run):
    _, _, metrics, _ = run
    for k, m in enumerate(metrics):
        assert math.isfinite(float(m["loss"])) and math.isfinite(float(m["grad_norm"])), k
        stats = np.asarray(m["unit_stats"])
        np.testing.assert_array_equal(stats[:, 1] > 0, np.asarray(m["objective_weights"]) > 0)
        assert float(m["mlm_overflow"]) == 0.0


def test_inactive_heads_unchanged_bit_for_bit(run):
    _, states, _, _ = run
    # states[k] is the state before step k. The MLM head is frozen through step 3 ...
    for k in range(1, 5):
        assert _same(states[k].params["mlm_head"], states[0].params["mlm_head"]), k
        assert _same(states[k].opt_state["mlm_head"], states[0].opt_state["mlm_head"]), k
    assert not _same(states[6].params["mlm_head"], states[0].params["mlm_head"])
    # ... the POS head moves at steps 0-3 and never after step 3, although its loss still counts at
    # step 4 (the window's end is inclusive).
    assert not _same(states[4].params["nv_head"], states[3].params["nv_head"])
    for k in range(5, TOTAL + 1):
        assert _same(states[k].params["nv_head"], states[4].params["nv_head"]), k
        assert _same(states[k].opt_state["nv_head"], states[4].opt_state["nv_head"]), k


def test_vocabulary_pace_is_monotone(run):
    _, _, metrics, _ = run
    paces = [float(m["vocab_pace"]) for m in metrics]
    assert all(b >= a for a, b in zip(paces, paces[1:]))
    replaced = [float(m["unk_replaced"]) for m in metrics]
    assert replaced[0] > 0 and replaced[-1] == 0.0


def test_learning_rates_are_what_the_optimizer_applied(run):
    setup, states, metrics, _ = run
    for k, m in enumerate(metrics):
        expect = setup.settings.learning_rates.at(k)  # the schedule's one definition
        assert set(m["learning_rates"]) == {"encoder", "mlm_head", "nv_head"}
        for group, value in expect.items():
            assert float(m["learning_rates"][group]) == pytest.approx(float(value), rel=1e-6, abs=1e-12), (k, group)
    # A zero learning rate moves nothing: the encoder at step 0 (its warm-up starts at 0), though its
    # AdamW moments move. The POS unit's N = 4 gives no warm-up (4 // 10 = 0): full rate at step 0.
    assert float(metrics[0]["learning_rates"]["encoder"]) == 0.0
    assert _same(states[1].params["encoder"], states[0].params["encoder"])
    assert not _same(states[1].opt_state["encoder"], states[0].opt_state["encoder"])
    assert float(metrics[0]["learning_rates"]["nv_head"]) == pytest.approx(1e-3)
    assert not _same(states[1].params["nv_head"], states[0].params["nv_head"])
    # The MLM unit starts at step 4 one scheduler step in: N = 12, warm-up 1, so its first rate is the peak.
    assert float(metrics[4]["learning_rates"]["mlm_head"]) == pytest.approx(1e-3)
    assert float(metrics[4]["learning_rates"]["nv_head"]) == 0.0


def test_hidden_targets_predicted_as_unk_or_excluded():
    """`predict_unk` (the reference) keeps the positions the vocabulary curriculum hid among the MLM
    candidates; `exclude` drops them. Same key, same draws: exclude's targets are a strict subset."""
    counts = {}
    for mode in ("predict_unk", "exclude"):
        c = _config()
        c.objective_curriculum.units = ConfigDict(dict(mlm=schema.unit_config("mlm", 0.0, 1.0)))
        c.vocab_curriculum.unk_targets = mode
        setup = RunSetup.from_config(c, vocab_size=VOCAB)
        state = setup.init_state(0)
        _, m = jax.jit(setup.train_step())(state, _batch(0), source_lib.from_config(c, setup.settings).at(0))
        counts[mode] = float(np.asarray(m["unit_stats"])[0, 1])
        hidden = float(m["unk_replaced"])
    assert hidden > 0 and 0 < counts["exclude"] < counts["predict_unk"]


def test_rows_above_the_threshold_have_no_loss_weight():
    """A row scored above the curriculum's threshold contributes no target to any unit: the unit's
    target count and loss sum equal those of the same step with that row's targets removed by hand
    (the same key draws the same masks), and a threshold below every score leaves no target at all."""
    c = _config()
    c.objective_curriculum.units = ConfigDict(dict(mlm=schema.unit_config("mlm", 0.0, 1.0),
                                                   nv=schema.unit_config("pos", 0.0, 1.0, "pos_noun_verb")))
    c.vocab_curriculum.kind = "none"
    setup = RunSetup.from_config(c, vocab_size=VOCAB)
    source = source_lib.from_config(c, setup.settings)
    step = jax.jit(setup.train_step())
    batch = dict(_batch(3), score=jnp.asarray([0.1, 0.5, 0.9, 0.2], jnp.float32))

    def stats(threshold, b=batch):
        _, m = step(setup.init_state(0), b, source.at(3, threshold))
        return np.asarray(m["unit_stats"]), float(m["rows_above_threshold"])

    every, above = stats(1.0)
    assert above == 0 and every[:, 1].min() > 0
    none, above = stats(0.05)
    assert above == 4 and none[:, 1].tolist() == [0.0, 0.0] and none[:, 0].tolist() == [0.0, 0.0]
    partial, above = stats(0.5)  # rows 0, 1 and 3 allowed, row 2 (0.9) not
    assert above == 1
    assert 0 < partial[0, 1] < every[0, 1] and 0 < partial[1, 1] < every[1, 1]
    # The step without the threshold, on the batch whose row 2 is all padding for MLM: the same MLM targets
    # in the other rows (MLM draws per position), so the MLM counts must agree exactly.
    from climb_jax.constants import PAD_ID
    ids = np.asarray(batch["input_ids"]).copy()
    ids[2] = PAD_ID
    padded, _ = stats(1.0, dict(batch, input_ids=jnp.asarray(ids)))
    assert padded[0, 1] == partial[0, 1] and padded[0, 0] == pytest.approx(partial[0, 0], rel=1e-6)


def test_total_loss_is_the_sum_of_the_active_units_mean_losses():
    """The reference's `compute_loss`: `total_loss += unit.compute_loss(...)` over the active units, each
    unit's loss a mean over its own targets. Each unit's mean is computed here on its own (a step in which
    only that unit is active: a unit draws its masks and dropout from its own key, so it sees the same
    draws), and the step with both active must report their sum: not their average, not one mean over
    the pooled targets."""
    setup = RunSetup.from_config(_config(), vocab_size=VOCAB)
    state = setup.init_state(0)
    cur = source_lib.from_config(setup.config, setup.settings).at(4)  # the POS window's last step, MLM's first
    assert np.asarray(cur.unit_weights).tolist() == [1.0, 1.0]
    step = jax.jit(setup.train_step())

    def run_with(weights):
        _, m = step(state, _batch(4), cur.replace(unit_weights=jnp.asarray(weights, jnp.float32)))
        return float(m["loss"]), np.asarray(m["unit_stats"], np.float64)

    total, stats = run_with([1.0, 1.0])
    mlm, mlm_stats = run_with([1.0, 0.0])
    nv, nv_stats = run_with([0.0, 1.0])
    assert mlm == pytest.approx(mlm_stats[0, 0] / mlm_stats[0, 1], rel=1e-5)  # a mean over its targets
    assert nv == pytest.approx(nv_stats[1, 0] / nv_stats[1, 1], rel=1e-5)
    np.testing.assert_allclose(stats[:, :2], [mlm_stats[0, :2], nv_stats[1, :2]], rtol=1e-5)  # the same draws
    assert total == pytest.approx(mlm + nv, rel=1e-5)
    assert abs(total - stats[:, 0].sum() / stats[:, 1].sum()) > 0.1  # not one pooled mean
