"""The prepared dataset (TFDS array_record shards in difficulty order): the same batches as the memory-mapped
cache drew, rows sorted by score, reuse and new versions, random reads of a process's rows only, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from climb_jax.data import build as build_lib, prepared
from climb_jax.data.dataset import prepare_data
from climb_jax.data.hosts import disagreement
from climb_jax.data.pipeline import InputPipeline
from climb_jax.data.sampler import BatchSampler
from climb_jax.errors import DataError
from tests import batch_driver
from tests.conftest import REPO
from tests.helpers import tiny_config


def _check_batches(name: str) -> None:
    ref = json.loads(batch_driver.FIXTURE.read_text())[name]
    with tempfile.TemporaryDirectory() as tmp:
        got = batch_driver.batches_and_losses(name, Path(tmp) / "cache", Path(tmp) / name)
    assert got["batches"] == ref["batches"]  # the same rows, step by step
    assert got["loss"] == ref["loss"]  # and the same losses, bit for bit


def test_data_curriculum_draws_the_batches_the_memory_mapped_cache_drew():
    _check_batches("ngram")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["source_order", "vanilla"])  # ties in the scores; the epoch shuffle
def test_other_runs_draw_the_batches_the_memory_mapped_cache_drew(name):
    _check_batches(name)


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """The embedded sample prepared twice: in corpus order (no curriculum) and by n-gram difficulty."""
    cache = tmp_path_factory.mktemp("prepared_cache")
    c = tiny_config(cache, name="data_cl", arg="ngram,linear,smoke", data=dict(shards=4))
    plain = prepare_data(c.data, cache, progress=False)
    ngram = prepare_data(c.data, cache, progress=False, curriculum=c.data_curriculum)
    return c, cache, plain, ngram


def test_rows_are_written_in_difficulty_order_across_shards(versions):
    c, _, plain, ngram = versions
    assert plain.fingerprint != ngram.fingerprint and plain.directory != ngram.directory
    assert ngram.manifest["data_fingerprint"] == plain.manifest["data_fingerprint"]  # same rows, other order
    scores = ngram.train.scores
    assert np.all(np.diff(scores) >= 0) and scores[0] < scores[-1]
    order = ngram.train.original_index
    assert sorted(order.tolist()) == list(range(len(plain.train)))
    # Ties keep the corpus order (stable), exactly the sampler's sorted order.
    ties = np.diff(scores) == 0
    assert np.all(np.diff(order)[ties] > 0)
    np.testing.assert_array_equal(np.asarray(ngram.train.input_ids), np.asarray(plain.train.input_ids)[order])
    np.testing.assert_array_equal(ngram.train.source_ids, plain.train.source_ids[order])
    np.testing.assert_array_equal(plain.train.original_index, np.arange(len(plain.train)))
    shards = sorted(p.name for p in ngram.directory.glob("climb_corpus-train.array_record-*"))
    assert len(shards) == 4 and shards[-1].endswith("-00003-of-00004")
    assert ngram.manifest["prepared"]["train_shards"] == 4
    # The stored scores are the ones the curriculum would compute: no pass over the rows at start-up.
    from climb_jax.curriculum.data_curriculum import initial_scores, score_rows

    np.testing.assert_array_equal(initial_scores(c, ngram), scores)
    np.testing.assert_allclose(score_rows(c.data_curriculum, plain.train, plain.sources, len(plain.tokenizer))[order],
                               scores, rtol=1e-6)
    assert "tensorflow" not in sys.modules  # prepared and read without TensorFlow


def test_same_inputs_reuse_the_version_other_scorers_get_their_own(versions, monkeypatch):
    c, cache, _, ngram = versions

    def no_build(*a, **k):
        raise AssertionError("tokenized again although the prepared dataset exists")

    monkeypatch.setattr(build_lib, "build", no_build)
    again = prepare_data(c.data, cache, progress=False, curriculum=c.data_curriculum)
    assert again.directory == ngram.directory and again.fingerprint == ngram.fingerprint
    c.data_curriculum.scorer = "self_perplexity"  # starts from the same n-gram scores: the same version
    assert prepare_data(c.data, cache, progress=False, curriculum=c.data_curriculum).fingerprint == ngram.fingerprint
    c.data_curriculum.scorer = "ngram_perplexity"
    c.data_curriculum.ngram_smoothing = 1.0  # other scores: a new version (this one would be built)
    with pytest.raises(AssertionError, match="tokenized again"):
        prepare_data(c.data, cache, progress=False, curriculum=c.data_curriculum)
    c.data_curriculum.ngram_smoothing = 0.0


def test_each_process_reads_only_its_own_rows(versions, monkeypatch):
    _, _, _, data = versions
    asked = []
    source = data.train._source.data_source  # the array_record reader under TFDS
    real = source.__getitems__
    monkeypatch.setattr(source, "__getitems__", lambda keys: asked.append(list(keys)) or real(keys))
    for process in range(2):
        sampler = BatchSampler(len(data.train), 16, 0, process_index=process, process_count=2,
                               scores=data.train.scores)
        batch = InputPipeline(data.train, sampler, prefetch=0).batch(3)
        rows = np.sort(sampler.indices(3))
        assert sorted(asked[-1]) == rows.tolist()  # 8 rows, one read: never the corpus
        np.testing.assert_array_equal(np.sort(batch["index"]), rows)
        np.testing.assert_array_equal(batch["input_ids"], data.train.input_ids[sampler.indices(3)])
        np.testing.assert_array_equal(batch["score"], data.train.scores[sampler.indices(3)])


def test_a_shard_that_disappears_is_named(tmp_path):
    c = tiny_config(tmp_path, data=dict(shards=2))
    data = prepare_data(c.data, tmp_path, progress=False)
    shard = sorted(data.directory.glob("climb_corpus-train.array_record-*"))[0]
    shard.unlink()
    with pytest.raises(DataError, match=str(data.directory)):
        data.train.read(np.arange(4))
    fp = data.fingerprint
    manifest, why = prepared.check_version(data.directory, fp)
    assert manifest is None and shard.name in why and "missing" in why


def test_hosts_disagreement_names_both():
    assert disagreement([("a" * 64, "0:x"), ("a" * 64, "0:x")]) is None
    line = disagreement([("a" * 64, "0:x"), ("b" * 64, "0:x")])
    assert "a" * 16 in line and "b" * 16 in line and "different prepared datasets" in line
    line = disagreement([("a" * 64, "0:x"), ("a" * 64, "1:y")])
    assert "different difficulty orderings" in line and "0:x" in line and "1:y" in line


def test_prepare_command_then_training_reads_without_tokenizing(tmp_path, monkeypatch):
    args = ["--config=configs/data_cl.py:ngram,smoke", f"--workdir={tmp_path / 'run'}", "--noprogress",
            "--config.data.max_train_words=30000", "--config.data.max_eval_words=3000",
            "--config.data.vocab_size=600", "--config.data.seq_len=32", "--config.data.shards=3"]
    proc = subprocess.run([sys.executable, "-m", "climb_jax.prepare", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "prepared " in proc.stdout and "in 3 shards" in proc.stdout
    c = tiny_config(tmp_path / "run" / "cache", name="data_cl", arg="ngram,linear,smoke")
    c.data.shards = 3
    monkeypatch.setattr(build_lib, "build", lambda *a, **k: pytest.fail("tokenized again"))
    data = prepare_data(c.data, tmp_path / "run" / "cache", progress=False, curriculum=c.data_curriculum)
    assert str(data.directory) in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "climb_jax.prepare", *args[:-1], "--config.data.shards=0"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: data.shards")
