"""The data curriculum's model-based scores and its re-scoring schedule.

Both self-perplexity estimators are checked against a direct computation with the full masked-LM
model (every position's logits, one masked copy at a time), on a mesh of several CPU devices when the
test process has them; the schedule against its closed form; re-scoring against an exact resume.
"""

import math
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from climb_jax.config import schema
from climb_jax.constants import MASK_ID, NUM_SPECIAL
from climb_jax.curriculum.data_curriculum import DataCurriculum
from climb_jax.curriculum.pacing import PacingParams
from climb_jax.curriculum.self_perplexity import SelfPerplexityScorer
from climb_jax.data.dataset import Split
from climb_jax.data.sampler import BatchSampler
from climb_jax.models.roberta import RobertaConfig, RobertaForMaskedLM, init_params
from climb_jax.parallel.mesh import create_mesh

V, L = 64, 12
MODEL = RobertaConfig(vocab_size=V, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                      max_position_embeddings=32)


@pytest.fixture(scope="module")
def params():
    return init_params(jax.random.PRNGKey(0), MODEL)


def rows(n=7, seed=0):
    ids = np.random.default_rng(seed).integers(NUM_SPECIAL, V, (n, L)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 0, 2
    ids[1, 5:7] = [2, 0]  # a line boundary inside the row
    return ids


def mesh_or_none():
    n = jax.device_count()
    return create_mesh(schema.base_config().mesh) if n > 1 else None


def full_logprobs(params, ids):
    logits = RobertaForMaskedLM(MODEL).apply({"params": params}, ids, deterministic=True)
    return np.asarray(jax.nn.log_softmax(logits.astype(np.float32)))


def test_pll_estimator_is_the_reference_pseudo_perplexity(params):
    ids = rows()
    indices = np.array([5, 1, 0, 6])
    scorer = SelfPerplexityScorer(MODEL, "pll", mask_probability=0.15, batch_size=8, mesh=mesh_or_none())
    got = scorer(params, ids, ids.astype(np.int8), indices)
    copies = np.repeat(ids[indices], L, axis=0).reshape(len(indices), L, L)  # [row, masked position, L]
    copies[:, np.arange(L), np.arange(L)] = MASK_ID
    logp = full_logprobs(params, copies.reshape(-1, L)).reshape(len(indices), L, L, V)
    direct = []
    for r, i in enumerate(indices):
        nll = [-logp[r, p, p, ids[i, p]] for p in range(L) if ids[i, p] >= NUM_SPECIAL]
        direct.append(math.exp(np.mean(nll)))  # mean over the non-special positions
    np.testing.assert_allclose(got, direct, rtol=2e-5)
    # Batching does not change a row's score.
    other = SelfPerplexityScorer(MODEL, "pll", mask_probability=0.15, batch_size=2)
    np.testing.assert_allclose(other(params, ids, ids.astype(np.int8), indices), got, rtol=2e-5)


def test_one_mask_estimator_against_a_direct_computation(params):
    ids = rows(seed=1)
    indices = np.array([3, 0, 6])
    key = jax.random.PRNGKey(5)
    scorer = SelfPerplexityScorer(MODEL, "one_mask", mask_probability=0.3, batch_size=4, mesh=mesh_or_none())
    got = scorer(params, ids, ids.astype(np.int8), indices, key)
    direct = []
    for i in indices:
        row = ids[i]
        noise = np.asarray(jax.random.uniform(jax.random.split(jax.random.fold_in(key, i), 3)[0], (1, L)))[0]
        candidates = np.nonzero(row >= NUM_SPECIAL)[0]
        count = max(1, int(np.round(0.3 * len(candidates))))
        chosen = candidates[np.argsort(-noise[candidates], kind="stable")[:count]]
        masked = row.copy()
        masked[chosen] = MASK_ID
        logp = full_logprobs(params, masked[None])[0]
        direct.append(math.exp(-np.mean([logp[p, row[p]] for p in chosen])))
    np.testing.assert_allclose(got, direct, rtol=2e-5)
    # The mask of a row depends on its index, not on its batch.
    alone = scorer(params, ids, ids.astype(np.int8), indices[:1], key)
    np.testing.assert_allclose(alone, got[:1], rtol=1e-6)


def curriculum_config(estimator="pll", update_every=4, fraction=1.0):
    c = schema.base_config()
    c.data_curriculum.scorer = "self_perplexity"
    c.data_curriculum.update_every = update_every
    c.data_curriculum.rescore_fraction = fraction
    c.data_curriculum.self_perplexity_estimator = estimator
    c.data_curriculum.rescore_batch_size = 8
    c.data_curriculum.pacing.name = "linear"
    return c


def fake_data(n=12):
    ids = rows(n, seed=2)
    split = Split(name="train", input_ids=ids, pos_ids=np.zeros_like(ids, np.int8),
                  source_ids=np.zeros(n, np.int16), positions=np.linspace(0, 1, n, dtype=np.float32))
    return SimpleNamespace(train=split, sources=("a",), tokenizer=[0] * V)


def test_schedule_closed_form():
    dc = DataCurriculum.from_config(curriculum_config(update_every=4), fake_data(), MODEL, None)
    assert [dc.segment_end(s, 10) for s in (0, 3, 4, 7, 8, 9)] == [4, 4, 8, 8, 10, 10]
    static = schema.base_config()
    static.data_curriculum.scorer = "ngram_perplexity"
    fixed = DataCurriculum.from_config(static, fake_data(), MODEL, None)
    assert not fixed.rescoring and fixed.segment_end(3, 10) == 10
    sampler = SimpleNamespace(version=0)
    assert [s for s in range(13) if dc.due(s, sampler)] == [4, 8, 12]
    sampler.version = 2  # scores of step 8 restored from a checkpoint
    assert [s for s in range(13) if dc.due(s, sampler)] == [12]


def test_initial_scores_are_the_reference_unigram():
    data = fake_data()
    dc = DataCurriculum.from_config(curriculum_config(), data, MODEL, None)
    ids = data.train.input_ids
    counts = np.bincount(ids.ravel(), minlength=V)
    logp = np.log2(counts[ids] / ids.size)
    np.testing.assert_allclose(dc.initial_scores(), 2 ** (-logp.mean(1)), rtol=1e-5)


@pytest.mark.parametrize("estimator", ["pll", "one_mask"])
def test_rescoring_installs_versioned_scores_and_resumes_exactly(params, estimator):
    data = fake_data()
    config = curriculum_config(estimator, update_every=4, fraction=0.5)

    def fresh():
        dc = DataCurriculum.from_config(config, data, MODEL, None)
        sampler = BatchSampler(len(data.train), 4, config.seed, scores=dc.initial_scores(),
                               pacing=PacingParams("linear"), total_steps=20, uniform=True)
        return dc, sampler

    dc, sampler = fresh()
    before = sampler.scores.copy()
    assert not dc.maybe_rescore(params, 3, sampler)
    assert dc.maybe_rescore(params, 4, sampler) and sampler.version == 1
    changed = np.nonzero(sampler.scores != before)[0]
    np.testing.assert_array_equal(changed, dc.rows_to_rescore(4))
    assert len(changed) == 6  # rescore_fraction 0.5 of 12 rows
    assert not dc.maybe_rescore(params, 4, sampler)  # already holds this version
    # A run resumed at step 4 from a checkpoint saved before the re-scoring re-scores to the same values.
    dc2, sampler2 = fresh()
    assert dc2.maybe_rescore(params, 4, sampler2)
    np.testing.assert_array_equal(sampler2.scores, sampler.scores)
    np.testing.assert_array_equal(sampler2.indices(5), sampler.indices(5))
    assert dc2.maybe_rescore(params, 8, sampler2)
    assert dc2._model_scorer._fn._cache_size() == 1  # one compile for every re-scoring of a run


# -- the source order against the corpus, before any expensive work --------------------------------

EMBEDDED = ("aochildes", "brown_fiction", "brown_nonfiction", "overheard", "scripts", "switchboard")


def source_order_config(mapping):
    c = schema.base_config()
    c.data.corpus = "embedded"
    c.data_curriculum.scorer = "source_order"
    c.data_curriculum.source_order = "custom"
    c.data_curriculum.source_difficulty = mapping
    return c


@pytest.fixture
def no_text_read(monkeypatch):
    """Fails the test if any corpus text is read (only file listings are allowed)."""
    from climb_jax.data import sources

    def refuse(*a, **k):
        raise AssertionError("the corpus text was read")

    monkeypatch.setattr(sources, "read_file_lines", refuse)


def test_custom_source_order_is_checked_against_the_corpus_before_any_work(no_text_read):
    from climb_jax.curriculum.data_curriculum import check_corpus_sources
    from climb_jax.errors import ConfigError

    full = ",".join(f"{s}:{i}" for i, s in enumerate(EMBEDDED))
    check_corpus_sources(source_order_config(full))  # every source named: fine
    with pytest.raises(ConfigError) as missing:
        check_corpus_sources(source_order_config(full.replace(",scripts:4", "")))
    assert "no difficulty for the source(s) scripts" in str(missing.value)
    assert "Sources found in the corpus: " + ", ".join(EMBEDDED) in str(missing.value)
    with pytest.raises(ConfigError) as extra:
        check_corpus_sources(source_order_config(full + ",qed:7,Wikipedia.train:8"))
    message = str(extra.value)
    assert "names source(s) the corpus lacks: qed, wikipedia" in message
    assert "Sources found in the corpus: " + ", ".join(EMBEDDED) in message
    assert "Names given: " + ", ".join([*names_of(full), "qed", "wikipedia"]) in message
    # Named orders cover several corpora: names they hold beyond this corpus are fine.
    named = source_order_config("")
    named.data_curriculum.source_order = "spoken_first"
    check_corpus_sources(named)


def names_of(mapping):
    """The source names of a `name:difficulty,...` mapping, in order."""
    return [item.split(":")[0] for item in mapping.split(",")]


def test_sources_of_a_corpus_at_a_uri_are_listed_through_epath(monkeypatch, no_text_read):
    """A `gs://` corpus is listed where it is (no copy) for this check; a local folder takes the same path."""
    from climb_jax.curriculum.data_curriculum import check_corpus_sources
    from climb_jax.data import corpus
    from climb_jax.errors import ConfigError

    folder = str(corpus.EMBEDDED_DIR)
    monkeypatch.setattr(corpus, "remote_uri", lambda spec: spec == folder)
    config = source_order_config(",".join(f"{s}:{i}" for i, s in enumerate(EMBEDDED)))
    config.data.corpus = folder
    found = corpus.find_corpus(config.data)
    assert found.sources == EMBEDDED and type(found.files[0]).__module__.startswith("etils")
    check_corpus_sources(config)
    config.data_curriculum.source_difficulty += ",qed:9"
    with pytest.raises(ConfigError, match="lacks: qed"):
        check_corpus_sources(config)


def test_a_run_reports_a_bad_source_order_before_preparing_data(monkeypatch, tmp_path, no_text_read):
    from climb_jax.errors import ConfigError
    from climb_jax.train import loop

    def refuse(*a, **k):
        raise AssertionError("the data was prepared before the source order was checked")

    monkeypatch.setattr(loop, "prepare_data", refuse)
    config = source_order_config("aochildes:1,switchboard:2")
    config.data.cache_dir = str(tmp_path / "cache")
    with pytest.raises(ConfigError, match="gives no difficulty for the source"):
        loop.Trainer(config, str(tmp_path / "run"), progress=False)
