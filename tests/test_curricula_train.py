"""Curricula inside the compiled step: one compile across a whole curriculum, exact resume in the middle
of each kind (vocabulary, data with a re-scoring in between, objective with a switch in between), an
inactive head that does not move, and all three combined in one run."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from climb_jax.train.checkpoint import load_run
from climb_jax.train.loop import Trainer
from tests.helpers import params_equal, read_metrics, tiny_config

VOCAB = {"vocab_curriculum": dict(kind="token_ids"), "vocab_curriculum.pacing": dict(name="linear")}
DATA = {"data_curriculum": dict(scorer="self_perplexity", update_every=15, n_gram=1, rescore_batch_size=32),
        "data_curriculum.pacing": dict(name="linear")}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("data_cache")


def _resume_equal(c, tmp_path, stop_at):
    a = Trainer(c, str(tmp_path / "a"), progress=False)
    a.run()
    Trainer(c, str(tmp_path / "b"), progress=False, stop_at=stop_at).run()
    b = Trainer(c, str(tmp_path / "b"), progress=False)
    result = b.run()
    assert params_equal(a.final_state.params, b.final_state.params)
    assert params_equal(a.final_state.curriculum, b.final_state.curriculum)
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")
    return a, result


def test_vocabulary_curriculum_compiles_once_and_resumes_exactly(shared_data, nltk_data, cache, tmp_path):
    c = tiny_config(shared_data, cache, **VOCAB)
    a, result = _resume_equal(c, tmp_path, stop_at=20)
    assert result["train_step_compiles"] == 1
    m = read_metrics(tmp_path / "a")
    paces = [r["vocab_pace"] for r in m]
    unk = [r["unk_fraction"] for r in m]
    assert paces == sorted(paces) and paces[0] < 0.5 and paces[-1] == 1.0
    assert unk[0] > 0.05 and unk[-1] == 0.0  # the unk fraction falls as the vocabulary opens
    assert a.counter.count("train_step") == 1  # the straight run crossed the whole curriculum with one compile


def test_data_curriculum_resumes_exactly_across_a_rescoring(shared_data, nltk_data, cache, tmp_path):
    c = tiny_config(shared_data, cache, **DATA)
    a, result = _resume_equal(c, tmp_path, stop_at=20)  # re-scorings at 15 and 30
    assert result["train_step_compiles"] == 1
    m = read_metrics(tmp_path / "a")
    fractions = [r["data_fraction"] for r in m]
    assert fractions == sorted(fractions) and fractions[0] < fractions[-1]
    assert all(abs(sum(r["source_mix"].values()) - 1) < 1e-6 for r in m)
    assert a.sampler.version == 2


def test_objective_curriculum_switch_inactive_head_and_exact_resume(shared_data, nltk_data, cache, tmp_path):
    c = tiny_config(shared_data, cache, name="objective_cl", arg="pos_nv_mlm,smoke")  # switch at step 5 of 40
    a, result = _resume_equal(c, tmp_path, stop_at=3)
    assert result["train_step_compiles"] == 1
    m = read_metrics(tmp_path / "a")
    assert m[0]["pos_nv_active"] == 0.0 and m[0]["mlm_active"] == 1.0  # at step 10 the switch is behind
    # The noun/verb head stopped moving at the switch: equal at step 20 and at the end.
    mid = load_run(str(tmp_path / "a"), step=20)
    assert params_equal(mid.params["pos_nv_head"], a.final_state.params["pos_nv_head"])
    # Before the switch the MLM head is inactive: after 3 steps it still equals its initial value.
    early = load_run(str(tmp_path / "b"), step=3)
    init = a.setup.init_state(c.seed)
    assert params_equal(early.params["mlm_head"], init.params["mlm_head"])
    assert not params_equal(early.params["pos_nv_head"], init.params["pos_nv_head"])


def test_all_three_curricula_in_one_run(shared_data, nltk_data, cache, tmp_path):
    c = tiny_config(shared_data, cache, name="objective_cl", arg="multitask_pos_nv_mlm_0,smoke", **VOCAB,
                    **{"data_curriculum": dict(scorer="ngram_perplexity", n_gram=2),
                       "data_curriculum.pacing": dict(name="root")})
    t = Trainer(c, str(tmp_path / "run"), progress=False)
    result = t.run()
    assert result["train_step_compiles"] == 1
    m = read_metrics(tmp_path / "run")
    for key in ("vocab_pace", "unk_fraction", "data_fraction", "source_mix", "pos_nv_loss", "mlm_loss"):
        assert key in m[-1], key
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(t.final_state.params))
