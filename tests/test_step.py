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
from climb_jax.train.step import curriculum_at

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
    fn = setup.train_step()
    fn.__name__ = NAME
    step = jax.jit(fn)
    state = jax.jit(lambda: setup.init_state(0))()
    states, metrics = [jax.device_get(state)], []
    with CompileCounter() as counter:
        for k in range(TOTAL):
            state, m = step(state, _batch(k))
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
        expect = curriculum_at(setup.settings, k).learning_rates
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
        _, m = jax.jit(setup.train_step())(state, _batch(0))
        counts[mode] = float(np.asarray(m["unit_stats"])[0, 1])
        hidden = float(m["unk_replaced"])
    assert hidden > 0 and 0 < counts["exclude"] < counts["predict_unk"]
