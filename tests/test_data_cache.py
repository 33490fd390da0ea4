"""`prepare_data` end to end: rows, the prepared dataset (reuse, new versions, rebuild, atomicity, locking),
bad corpora."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from climb_jax.config import schema
from climb_jax.constants import BOS_ID, EOS_ID, NUM_POS, NUM_SPECIAL, POS_X, UNK_ID
from climb_jax.data import build as build_lib, cache, corpus as corpus_lib, encoding, prepared, remote
from climb_jax.data.dataset import prepare_data
from climb_jax.errors import DataError

SOURCES = {"aochildes": 400, "switchboard": 150, "brown_fiction": 150}


def copy_head(src: Path, dst: Path, n: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, encoding="utf-8") as f:
        dst.write_text("".join(next(f) for _ in range(n)), encoding="utf-8")


@pytest.fixture
def corpus(tmp_path, babylm_mini) -> Path:
    """A few hundred lines of three babylm_mini sources, in the BabyLM 2023 layout."""
    root = tmp_path / "corpus"
    mini = babylm_mini
    for split, folder, scale in (("train", "babylm_10M", 1), ("dev", "babylm_dev", 4), ("test", "babylm_test", 4)):
        for source, n in SOURCES.items():
            copy_head(mini / split / f"{source}.{split}", root / folder / f"{source}.{split}", n // scale)
    return root


@pytest.fixture
def cfg(corpus, nltk_data):
    c = schema.base_config().data
    c.corpus = str(corpus)
    c.vocab_size = 500
    c.seq_len = 32
    c.nltk_data = str(nltk_data)
    c.num_workers = 1
    return c


def check_split(split, seq_len, n_sources, layout="reference"):
    n = len(split)
    assert split.input_ids.shape == (n, seq_len) and split.input_ids.dtype == np.int32
    assert split.pos_ids.shape == (n, seq_len) and split.pos_ids.dtype == np.int8
    ids, pos = np.asarray(split.input_ids), np.asarray(split.pos_ids)
    assert ids.shape == (n, seq_len) and ids.dtype == np.int32 and pos.dtype == np.int8
    assert split.source_ids.shape == (n,) and split.source_ids.dtype == np.int16
    assert split.positions.shape == (n,) and split.positions.dtype == np.float32
    if layout == "concatenated":
        assert np.all(ids[:, 0] == BOS_ID) and np.all(ids[:, -1] == EOS_ID)
        assert np.all(ids[:, 1:-1] >= NUM_SPECIAL)  # no specials, no padding inside rows
    else:  # line boundaries inside rows, never padding or another special
        special = ids < NUM_SPECIAL
        assert np.all((ids[special] == BOS_ID) | (ids[special] == EOS_ID)) and special.any()
    assert np.all(pos[ids < NUM_SPECIAL] == POS_X) and pos.max() < NUM_POS
    assert split.source_ids.min() >= 0 and split.source_ids.max() < n_sources
    assert np.all((split.positions >= 0) & (split.positions < 1))


def test_prepare_builds_then_reuses(cfg, tmp_path, monkeypatch):
    cfg.packing = "concatenated"
    cfg.token_order = "frequency"  # checked below: ids re-numbered by count
    data = prepare_data(cfg, tmp_path / "cache", progress=False)
    assert data.sources == ("aochildes", "brown_fiction", "switchboard")
    for split in (data.train, data.dev, data.test):
        check_split(split, 32, 3, "concatenated")
    assert len(data.train) > 100 and len(data.dev) > 10 and len(data.test) > 10
    assert set(np.unique(data.train.source_ids)) == {0, 1, 2}
    # Rows are in source order and, within a source, in text order.
    assert np.all(np.diff(data.train.source_ids) >= 0)
    for s in range(3):
        assert np.all(np.diff(data.train.positions[data.train.source_ids == s]) >= 0)
    # The first row is the first text of the first source.
    tok = data.tokenizer
    first_line = (Path(cfg.corpus) / "babylm_10M" / "aochildes.train").read_text().splitlines()[0]
    assert tok.decode(data.train.input_ids[0, 1:-1].tolist()).strip().startswith(first_line)
    assert len(tok) == 500 and tok.mask_token_id == 4
    # Every split is numbered by the saved tokenizer: re-encoding the text gives the stored ids.
    for split, folder in ((data.train, "babylm_10M"), (data.dev, "babylm_dev"), (data.test, "babylm_test")):
        lines = (Path(cfg.corpus) / folder / f"aochildes.{split.name}").read_text().splitlines()[:40]
        ids = [i for line in lines for i in tok(line.strip(), add_special_tokens=False)["input_ids"]]
        assert split.input_ids[0, 1:-1].tolist() == ids[:30]
    # Frequency order: token_counts are the training rows' counts, non-increasing after the specials.
    V = len(tok)
    np.testing.assert_array_equal(data.token_counts, np.bincount(np.asarray(data.train.input_ids).ravel(), minlength=V))
    assert np.all(np.diff(data.token_counts[NUM_SPECIAL:]) <= 0)
    assert data.token_counts[BOS_ID] == data.token_counts[EOS_ID] == len(data.train)
    # Tagged text: the whole word "the" (not the start of "they", "there") is a determiner.
    ids = np.asarray(data.train.input_ids)
    starts_word = np.array([t.startswith("\u0120") for t in tok.convert_ids_to_tokens(list(range(V)))])
    the = (ids[:, :-1] == tok.convert_tokens_to_ids("\u0120the")) & starts_word[ids[:, 1:]]
    assert the.sum() > 50 and np.mean(data.train.pos_ids[:, :-1][the] == 5) > 0.98  # DET
    m = data.manifest
    assert m["fingerprint"] == data.fingerprint and m["seq_len"] == 32 and m["vocab_size"] == 500
    assert m["splits"]["train"]["rows"] == len(data.train)
    assert m["splits"]["train"]["words"] > 5000 and set(m["splits"]["train"]["per_source"]) == set(SOURCES)
    assert data.directory == prepared.version_dir(tmp_path / "cache" / "prepared", data.fingerprint)

    # A second call maps the same files without building anything.
    def no_build(*a, **k):
        raise AssertionError("rebuilt a valid cache entry")

    monkeypatch.setattr(build_lib, "build", no_build)
    again = prepare_data(cfg, tmp_path / "cache", progress=False)
    assert again.directory == data.directory and again.manifest == data.manifest
    np.testing.assert_array_equal(again.train.input_ids, data.train.input_ids)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == ["prepared"]
    assert [p.name for p in data.directory.parent.parent.iterdir()] == [data.directory.parent.name]


def test_changed_corpus_or_setting_gets_a_new_entry(cfg, tmp_path):
    first = prepare_data(cfg, tmp_path / "cache", progress=False)
    with open(Path(cfg.corpus) / "babylm_10M" / "switchboard.train", "a", encoding="utf-8") as f:
        f.write("A: one more line about the weather.\n")
    changed = prepare_data(cfg, tmp_path / "cache", progress=False)
    assert changed.fingerprint != first.fingerprint and changed.directory != first.directory
    assert changed.manifest["splits"]["train"]["lines"] == first.manifest["splits"]["train"]["lines"] + 1
    cfg.seq_len = 24
    shorter = prepare_data(cfg, tmp_path / "cache", progress=False)
    assert shorter.fingerprint != changed.fingerprint and shorter.train.input_ids.shape[1] == 24
    cfg.packing = "concatenated"
    packed = prepare_data(cfg, tmp_path / "cache", progress=False)
    assert packed.fingerprint != shorter.fingerprint and packed.manifest["settings"]["packing"] == "concatenated"
    cfg.packing = "reference"
    cfg.num_workers = 3  # does not change the result: same entry
    cfg.prefetch = 7
    assert prepare_data(cfg, tmp_path / "cache", progress=False).fingerprint == shorter.fingerprint


@pytest.mark.parametrize("damage", ["manifest", "tokenizer", "shard", "token_counts"])
def test_damaged_entry_is_reported_and_rebuilt(cfg, tmp_path, caplog, damage):
    data = prepare_data(cfg, tmp_path / "cache", progress=False)
    d = data.directory
    expected = np.array(data.train.input_ids)
    del data
    if damage == "manifest":  # what a preparation killed before its last write would leave
        (d / prepared.MARKER).unlink()
        why = f"has no {prepared.MARKER}"
    elif damage == "tokenizer":
        (d / "tokenizer" / "tokenizer.json").unlink()
        why = "tokenizer.json is missing"
    elif damage == "shard":  # the error names the shard
        shard = sorted(d.glob("climb_corpus-train.array_record-*"))[1]
        with open(shard, "r+b") as f:
            f.truncate(os.path.getsize(shard) - 128)
        why = f"{shard.name} has"
    else:
        np.save(d / "token_counts.npy", np.zeros(500, np.int64))
        why = "token_counts.npy does not match its checksum"
    rebuilt = prepare_data(cfg, tmp_path / "cache", progress=False)
    assert "will be rebuilt" in caplog.text and why in caplog.text
    assert rebuilt.directory == d
    np.testing.assert_array_equal(rebuilt.train.input_ids, expected)
    assert prepared.check_version(d, rebuilt.fingerprint)[0] is not None


def test_killed_preparation_leaves_no_complete_looking_entry(cfg, tmp_path, monkeypatch):
    calls = []

    def killed(data_cfg, corpus, files, key, settings, tmp, progress):
        (tmp / "train").mkdir()
        np.save(tmp / "train" / "input_ids.npy", np.zeros((3, 32), np.int32))
        calls.append(tmp)
        raise KeyboardInterrupt  # stopped half-way

    real_build = build_lib.build
    monkeypatch.setattr(build_lib, "build", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg, tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache" / "prepared").iterdir()) == [] and not calls[0].exists()
    # A temporary folder left by a process that was killed outright is cleared on the next build.
    monkeypatch.setattr(build_lib, "build", real_build)
    data = prepare_data(cfg, tmp_path / "cache", progress=False)
    leftover = tmp_path / "cache" / f".tmp-data-{data.fingerprint[:16]}-999-deadbeef"
    leftover.mkdir()
    (data.directory / prepared.MARKER).unlink()
    prepare_data(cfg, tmp_path / "cache", progress=False)
    assert not leftover.exists()


def test_lock_serialises_preparations(tmp_path):
    events = []
    with cache.locked(tmp_path, "k" * 16):
        def other():
            with cache.locked(tmp_path, "k" * 16):
                events.append("other")

        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.3)
        events.append("first done")
    t.join(10)
    assert events == ["first done", "other"]


def test_concurrent_preparations_build_once(cfg, tmp_path, monkeypatch):
    builds = []
    real_build = build_lib.build

    def counting(*a, **k):
        builds.append(1)
        return real_build(*a, **k)

    monkeypatch.setattr(build_lib, "build", counting)
    results = [None, None]

    def run(i):
        results[i] = prepare_data(cfg, tmp_path / "cache", progress=False)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(builds) == 1
    assert results[0].directory == results[1].directory
    np.testing.assert_array_equal(results[0].train.input_ids, results[1].train.input_ids)


def test_bpe_order_keeps_merge_ids(cfg, tmp_path):
    cfg.token_order = "frequency"
    freq = prepare_data(cfg, tmp_path / "cache", progress=False)
    cfg.token_order = "bpe"
    bpe = prepare_data(cfg, tmp_path / "cache", progress=False)
    assert bpe.fingerprint != freq.fingerprint
    # Same tokens, different numbering; the BPE ids are not sorted by count.
    as_tokens = lambda d: d.tokenizer.convert_ids_to_tokens(np.asarray(d.train.input_ids[:5]).ravel().tolist())
    assert as_tokens(bpe) == as_tokens(freq)
    assert not np.all(np.diff(bpe.token_counts[NUM_SPECIAL:]) <= 0)
    vocab = json.loads((bpe.directory / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert vocab["!"] == NUM_SPECIAL  # byte tokens first, in byte order, as the BPE trainer numbers them


def test_token_ids_curriculum_ranks_by_the_references_ids_by_default(cfg, tmp_path):
    """The reference's `token_ids` map (src/vocabulary_curriculum/vocabulary_map/token_id_map.py)
    replaces every id above pace * V, on its BPE tokenizer's own ids: earliest merges lowest. The
    default order is those ids, so our `id <= pace * V` rule is the reference's, token for token."""
    from climb_jax.config import choices
    from climb_jax.curriculum import vocabulary
    from tests.helpers import load_config

    assert cfg.token_order == choices.DEFAULT_TOKEN_ORDER == "bpe"
    assert load_config("vocab_cl").data.token_order == "bpe"
    data = prepare_data(cfg, tmp_path / "cache", progress=False)
    spec = json.loads((data.directory / "tokenizer" / "tokenizer.json").read_text())["model"]
    vocab, merges = spec["vocab"], [m.split(" ") if isinstance(m, str) else m for m in spec["merges"]]
    # Raw merge ids: the specials, the byte alphabet, then merge k's token at id (alphabet end + k).
    first_merge = len(vocab) - len(merges)
    assert [vocab[a + b] for a, b in merges] == list(range(first_merge, len(vocab)))
    assert sorted(vocab[t] for t in vocab if len(t) == 1 and vocab[t] >= NUM_SPECIAL) == list(
        range(NUM_SPECIAL, first_merge))
    V = len(data.tokenizer)
    ids = np.asarray(data.train.input_ids)
    pos = np.asarray(data.train.pos_ids)
    for pace in (0.1, 0.25, 0.5, 0.9):
        # The reference: masked_fill(ids > pace * V, unk); its pacing starts at 0.1, so pace * V
        # always covers the specials (ids 0-4), which ours keeps at any pace.
        reference = np.where(ids > np.float32(pace) * V, UNK_ID, ids)
        ours, _ = vocabulary.apply_vocab_curriculum("token_ids", ids, pos, pace, V)
        np.testing.assert_array_equal(np.asarray(ours), reference)
        assert 0 < (reference == UNK_ID).mean() < 1


def test_word_budgets(cfg, tmp_path):
    cfg.max_train_words = 3000
    cfg.max_eval_words = 600
    data = prepare_data(cfg, tmp_path / "cache", progress=False)
    s = data.manifest["splits"]
    # Each source stops at the line that reaches its share: a little over the budget, never under.
    assert 3000 <= s["train"]["words"] < 3300 and 600 <= s["dev"]["words"] < 800
    # Shared in proportion to each source's size, within one line.
    full = {src: len((Path(cfg.corpus) / "babylm_10M" / f"{src}.train").read_text().split()) for src in SOURCES}
    longest = {src: max(len(x.split()) for x in (Path(cfg.corpus) / "babylm_10M" / f"{src}.train").read_text().splitlines())
               for src in SOURCES}
    for src, rec in s["train"]["per_source"].items():
        share = round(3000 * full[src] / sum(full.values()))
        assert rec["word_limit"] == share and share <= rec["words"] < share + longest[src]


def test_decode_errors_skip_and_fail(cfg, tmp_path):
    path = Path(cfg.corpus) / "babylm_10M" / "switchboard.train"
    path.write_bytes(path.read_bytes() + b"A: caf\xe9 au lait \xff\n")
    data = prepare_data(cfg, tmp_path / "cache", progress=False)
    assert data.manifest["decode_errors"] == {str(path): {"bytes": 2, "lines": 1}}
    cfg.on_decode_error = "fail"
    with pytest.raises(DataError, match=r"switchboard.train, line 151: .*not valid UTF-8"):
        prepare_data(cfg, tmp_path / "cache", progress=False)


def test_corpus_without_training_text(cfg, tmp_path):
    for p in (Path(cfg.corpus) / "babylm_10M").iterdir():
        p.write_text("\n  \n")
    with pytest.raises(DataError, match="no training text"):
        prepare_data(cfg, tmp_path / "cache", progress=False)
    for p in (Path(cfg.corpus) / "babylm_10M").iterdir():
        p.write_text("")
    with pytest.raises(DataError, match="no training text: every training file is empty"):
        prepare_data(cfg, tmp_path / "cache", progress=False)


def test_too_little_text_for_one_sequence(cfg, tmp_path):
    for p in (Path(cfg.corpus) / "babylm_10M").iterdir():
        p.write_text("Just a few words here.\n")
    with pytest.raises(DataError, match="yields no sequence of data.seq_len=32"):
        prepare_data(cfg, tmp_path / "cache", progress=False)


def test_unwritable_cache_dir(cfg, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cannot create the data cache folder"):
        prepare_data(cfg, blocker / "cache", progress=False)


def test_worker_processes_give_identical_arrays(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(encoding, "CHUNK_LINES", 64)  # several work items per source
    one = prepare_data(cfg, tmp_path / "one", progress=False)
    cfg.num_workers = 2
    two = prepare_data(cfg, tmp_path / "two", progress=False)
    assert two.manifest["workers"] == 2 and one.fingerprint == two.fingerprint
    for name in ("train", "dev", "test"):
        a, b = getattr(one, name), getattr(two, name)
        for field in ("input_ids", "pos_ids", "source_ids", "positions"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert (one.directory / "tokenizer" / "tokenizer.json").read_bytes() == \
        (two.directory / "tokenizer" / "tokenizer.json").read_bytes()


def test_hugging_face_corpus(tmp_path, nltk_data, corpus):
    datasets = pytest.importorskip("datasets")
    rows = {"train": [], "validation": []}
    for split, folder in (("train", "babylm_10M"), ("validation", "babylm_dev")):
        for p in sorted((corpus / folder).iterdir()):
            for line in p.read_text().splitlines():
                rows[split].append({"text": line, "source": p.name})
    dd = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in rows.items()})
    dd.save_to_disk(str(tmp_path / "hf"))
    c = schema.base_config().data
    c.corpus = f"hf:{tmp_path / 'hf'}"
    c.vocab_size, c.seq_len, c.nltk_data, c.num_workers = 500, 32, str(nltk_data), 1
    data = prepare_data(c, tmp_path / "cache", progress=False)
    assert data.sources == ("aochildes", "brown_fiction", "switchboard")
    assert data.test is None and len(data.dev) > 0 and len(data.train) > 100
    assert data.manifest["corpus"]["layout"] == "huggingface"


def test_worker_start_failure_is_a_data_error():
    class Broken:
        def to_str(self):
            return "{not a tokenizer"

    encoder = encoding.Encoder(Broken(), None, workers=2)
    with pytest.raises(DataError, match="worker process failed to start.*data.num_workers=1"):
        list(encoder.run([(0, ["some text"])]))
    assert encoder._pool is None


def test_reference_packing_rows_hold_the_line_boundaries(cfg, tmp_path):
    """The default layout: each line `<s> line </s>`, a source's lines one stream cut into rows."""
    data = prepare_data(cfg, tmp_path / "cache", progress=False)
    assert data.manifest["packing"] == "reference"
    for split in (data.train, data.dev, data.test):
        check_split(split, 32, 3)
    tok = data.tokenizer
    lines = (Path(cfg.corpus) / "babylm_10M" / "aochildes.train").read_text().splitlines()
    stream = [i for line in lines if line.strip() for i in tok(line.strip())["input_ids"]]  # adds <s> ... </s>
    rows = np.asarray(data.train.input_ids)[np.asarray(data.train.source_ids) == 0]
    assert len(rows) == len(stream) // 32  # 400 lines: one packing group, its partial row dropped
    np.testing.assert_array_equal(rows.ravel(), stream[: len(rows) * 32])
    assert (rows == BOS_ID).sum() >= len(lines) - 32  # every line kept has its boundary tokens


def test_corpus_at_a_uri_is_copied_once_through_epath(cfg, tmp_path, monkeypatch):
    """A `gs://` corpus goes through `etils.epath` into the local cache; here a local folder takes the
    same path (the URI test is the only thing patched)."""
    local = Path(cfg.corpus)
    monkeypatch.setattr(corpus_lib, "remote_uri", lambda spec: spec == str(local))
    copies = []
    real_copy = remote.local_copy
    monkeypatch.setattr(remote, "local_copy", lambda *a, **k: copies.append(1) or real_copy(*a, **k))
    data = prepare_data(cfg, tmp_path / "cache", progress=False)
    copy_dir = Path(data.manifest["corpus"]["root"])
    assert copy_dir.parent == tmp_path / "cache" and copy_dir.name.startswith("corpus-")
    assert (copy_dir / "babylm_10M" / "aochildes.train").read_bytes() == \
        (local / "babylm_10M" / "aochildes.train").read_bytes()
    assert data.sources == ("aochildes", "brown_fiction", "switchboard")
    mtime = (copy_dir / remote.MARKER).stat().st_mtime_ns
    again = prepare_data(cfg, tmp_path / "cache", progress=False)  # the copy and the entry are re-used
    assert again.fingerprint == data.fingerprint and (copy_dir / remote.MARKER).stat().st_mtime_ns == mtime
    with open(local / "babylm_10M" / "switchboard.train", "a", encoding="utf-8") as f:
        f.write("A: a line added at the source.\n")
    changed = prepare_data(cfg, tmp_path / "cache", progress=False)  # a changed listing: copied again
    assert changed.fingerprint != data.fingerprint
    assert (copy_dir / "babylm_10M" / "switchboard.train").read_text().endswith("added at the source.\n")
