"""Curricula inside the compiled step: one compile across a whole curriculum, exact resume in the middle
of each kind (vocabulary, data with a re-scoring in between, objective with a switch in between), an
inactive head that does not move, and all three combined in one run."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from climb_jax.train.checkpoint import load_run
from tests.helpers import checkpoint_meta, params_equal, read_metrics, tiny_config, train

VOCAB = {"vocab_curriculum": dict(kind="token_ids"), "vocab_curriculum.pacing": dict(name="linear")}
DATA = {"data_curriculum": dict(scorer="self_perplexity", update_every=15, n_gram=1, rescore_batch_size=32),
        "data_curriculum.pacing": dict(name="linear")}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("data_cache")


def _resume_equal(c, tmp_path, *stops):
    """The run straight through in `a`, and stopped at each of `stops` then resumed in `b`: equal bit for bit.
    Returns both results."""
    a = train(c, tmp_path / "a")
    for stop in stops:
        assert train(c, tmp_path / "b", stop_at=stop)["step"] == stop
    b = train(c, tmp_path / "b")
    assert a["stop_reason"] == b["stop_reason"] == "done"
    assert params_equal(a["state"], b["state"])  # every leaf: step, parameters, optimizer states, key
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")
    return a, b


def test_vocabulary_curriculum_compiles_once_and_resumes_exactly(cache, tmp_path):
    # Frequency order: the ids hidden last are the rarest, so the last interval (pace 0.86 to 1) hides none.
    c = tiny_config(cache, data=dict(token_order="frequency"), **VOCAB)
    a, b = _resume_equal(c, tmp_path, 20)
    assert b["train_step_compiles"] == 1
    m = read_metrics(tmp_path / "a")
    paces = [r["vocab_pace"] for r in m]
    unk = [r["unk_fraction"] for r in m]
    assert paces == sorted(paces) and paces[0] < 0.5 and paces[-1] == 1.0
    assert unk[0] > 0.05 and unk[-1] == 0.0  # the unk fraction falls as the vocabulary opens
    assert a["train_step_compiles"] == 1  # the straight run crossed the whole curriculum with one compile


def test_data_curriculum_resumes_exactly_across_a_rescoring(cache, tmp_path):
    c = tiny_config(cache, **DATA)
    a, b = _resume_equal(c, tmp_path, 20)  # re-scorings at 15 and 30
    assert a["train_step_compiles"] == b["train_step_compiles"] == 1
    m = read_metrics(tmp_path / "a")
    fractions = [r["data_fraction"] for r in m]
    assert fractions == sorted(fractions) and fractions[0] < fractions[-1]
    assert all(abs(sum(r["source_mix"].values()) - 1) < 1e-6 for r in m)
    assert checkpoint_meta(tmp_path / "a", 40)["sampler"]["version"] == 2  # re-scored at 15 and at 30


def test_objective_curriculum_switch_inactive_head_and_exact_resume(cache, tmp_path):
    c = tiny_config(cache, name="objective_cl", arg="pos_nv_mlm,smoke",  # switch at step 5 of 40
                    trainer=dict(keep_checkpoints=5))  # keep the checkpoints of steps 1 and 3
    a, b = _resume_equal(c, tmp_path, 1, 3)
    assert b["train_step_compiles"] == 1
    m = read_metrics(tmp_path / "a")
    assert m[0]["pos_nv_active"] == 0.0 and m[0]["mlm_active"] == 1.0  # at step 10 the switch is behind
    # The noun/verb head stopped moving at the switch: equal at step 20 and at the end.
    mid = load_run(str(tmp_path / "a"), step=20)
    assert params_equal(mid.params["pos_nv_head"], a["state"].params["pos_nv_head"])
    # Before the switch the MLM head is inactive: it does not move between steps 1 and 3, while the
    # noun/verb head does, and the MLM head does once it is active.
    step1, step3 = load_run(str(tmp_path / "b"), step=1), load_run(str(tmp_path / "b"), step=3)
    assert params_equal(step1.params["mlm_head"], step3.params["mlm_head"])
    assert not params_equal(step1.params["pos_nv_head"], step3.params["pos_nv_head"])
    assert not params_equal(step3.params["mlm_head"], mid.params["mlm_head"])


def test_all_three_curricula_in_one_run(cache, tmp_path):
    c = tiny_config(cache, name="objective_cl", arg="multitask_pos_nv_mlm_0,smoke", **VOCAB,
                    **{"data_curriculum": dict(scorer="ngram_perplexity", n_gram=2),
                       "data_curriculum.pacing": dict(name="root")})
    result = train(c, tmp_path / "run")
    assert result["train_step_compiles"] == 1
    m = read_metrics(tmp_path / "run")
    for key in ("vocab_pace", "unk_fraction", "data_fraction", "source_mix", "pos_nv_loss", "mlm_loss"):
        assert key in m[-1], key
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(result["state"].params))
