"""A user's own corpus: a plain folder of text files (its dev split carved out), what the start-up lines
say about it (sources, carved dev, repetition), and a file that is not text at all."""

from __future__ import annotations

import random
import types
import zlib
from pathlib import Path

import pytest
from ml_collections import ConfigDict

from climb_jax.config import schema
from climb_jax.data import corpus as corpus_lib, sources as sources_lib, text as text_lib
from climb_jax.data.dataset import prepare_data, startup_notes
from climb_jax.data.text import ReadOptions
from climb_jax.errors import DataError
from climb_jax.train import report

WORDS = "the a dog cat ran sat on mat big small red blue and then saw it was happy sad home away".split()


def _lines(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n)]


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{x}\n" for x in lines))
    return path


def data_cfg(corpus, nltk_data=None, **kw) -> ConfigDict:
    c = schema.base_config().data
    c.update(dict(corpus=str(corpus), vocab_size=300, seq_len=32, num_workers=1))
    if nltk_data is not None:
        c.nltk_data = str(nltk_data)
    c.update(kw)
    return c


@pytest.fixture(scope="module")
def flat_folder(tmp_path_factory) -> Path:
    """Five plain .txt files in one folder (no train/ subfolder, no dev split), one line repeated."""
    root = tmp_path_factory.mktemp("own")
    for i, name in enumerate(("stories", "chat", "news", "letters", "songs")):
        _write(root / f"{name}.txt", _lines(300, i) + ["the dog sat on the mat"] * 5)
    return root


def test_a_flat_folder_of_text_files_is_a_corpus_with_a_carved_dev_split(flat_folder):
    c = corpus_lib.find_corpus(data_cfg(flat_folder))
    assert c.layout == "text-files" and c.carved_dev
    names = ["chat", "letters", "news", "songs", "stories"]
    assert [s.name for s in c.splits["train"]] == [s.name for s in c.splits["dev"]] == names
    assert c.splits["test"] == [] and len(c.files) == 5
    opts = ReadOptions()
    for train, dev in zip(c.splits["train"], c.splits["dev"]):
        lines = train.path.read_text().splitlines()
        # The reference rule: a line goes to dev when the CRC-32 of its UTF-8 text is in the lowest 5 %.
        to_dev = [zlib.crc32(x.encode()) < 0.05 * 2 ** 32 for x in lines]
        assert list(dev.lines(opts)) == [x for x, d in zip(lines, to_dev) if d]
        assert list(train.lines(opts)) == [x for x, d in zip(lines, to_dev) if not d]
        assert 0 < sum(to_dev) < 0.15 * len(lines)
    # A repeated line lands on one side only.
    repeated = "the dog sat on the mat"
    sides = {repeated in set(s.lines(opts)) for s in c.splits["dev"]}
    assert len(sides) == 1


def test_a_flat_folder_with_train_txt_names_its_splits(tmp_path):
    for name in ("train", "valid", "test", "README"):
        _write(tmp_path / "mydata" / f"{name}.txt", _lines(5, 0))
    c = corpus_lib.find_corpus(data_cfg(tmp_path / "mydata"))
    assert c.layout == "split-files" and not c.carved_dev
    assert {k: [(s.name, s.path.name) for s in v] for k, v in c.splits.items()} == {
        "train": [("mydata", "train.txt")], "dev": [("mydata", "valid.txt")], "test": [("mydata", "test.txt")]}


def test_files_a_split_folder_leaves_out_are_named(tmp_path, caplog):
    _write(tmp_path / "train" / "a.train", _lines(5, 0))
    _write(tmp_path / "train" / "extra.txt", _lines(5, 1))
    with caplog.at_level("WARNING"):
        c = corpus_lib.find_corpus(data_cfg(tmp_path))
    assert [s.name for s in c.splits["train"]] == ["a"]
    assert f"{tmp_path / 'train'}: only the .train files are read; left out: extra.txt" in caplog.text


def test_start_up_counts_training_sources_announces_the_carved_dev_and_warns_of_repetition(
        flat_folder, nltk_data, tmp_path):
    data = prepare_data(data_cfg(flat_folder, nltk_data), tmp_path / "cache", progress=False)
    assert data.manifest["settings"]["carved_dev_fraction"] == sources_lib.CARVED_DEV_FRACTION
    dev = data.manifest["splits"]["dev"]
    assert dev["lines"] > 0 and len(data.dev) == dev["rows"] > 0
    rows = len(data.train)
    trainer = ConfigDict(dict(total_steps=20 * rows // 8, batch_size=8))
    config = ConfigDict(dict(data=data_cfg(flat_folder), trainer=trainer, model=dict(size="tiny", dtype="float32")))
    model = types.SimpleNamespace(num_layers=2, hidden_size=128)
    lines = report.describe(config, data, model)
    assert f"{rows} training sequences of 32 tokens from 5 sources;" in lines[0]
    assert lines[2] == (f"dev split: {dev['lines']:,} lines (5%, chosen by a hash of each line) carved out of the "
                        f"training files, {dev['rows']:,} sequences; the training split keeps the other lines")
    drawn = trainer.total_steps * 8
    assert lines[3] == (
        f"warning: {trainer.total_steps:,} steps x 8 rows = {drawn:,} rows drawn from {rows:,} training sequences: "
        f"each is seen about {drawn / rows:,.0f} times (more than data.max_epochs_warning=10). Add text "
        "(data.corpus), train fewer steps (trainer.total_steps), or set data.max_epochs_warning=0 to silence this.")
    assert len(lines) == 4
    quiet = data_cfg(flat_folder, max_epochs_warning=0)
    assert not any(x.startswith("warning:") for x in startup_notes(data, quiet, trainer))
    few = ConfigDict(dict(total_steps=rows // 8, batch_size=8))  # one pass: nothing to warn about
    assert not any(x.startswith("warning:") for x in startup_notes(data, config.data, few))


def test_sources_only_dev_holds_are_not_counted_as_training_sources(tmp_path, nltk_data):
    for i, name in enumerate(("a", "b", "c", "d", "e")):
        _write(tmp_path / "c" / "train" / f"{name}.train", _lines(60, i))
        _write(tmp_path / "c" / "dev" / f"{name}.dev", _lines(20, i + 10))
    _write(tmp_path / "c" / "dev" / "extra.dev", _lines(20, 99))
    data = prepare_data(data_cfg(tmp_path / "c", nltk_data), tmp_path / "cache", progress=False)
    assert len(data.sources) == 6 and data.train_sources == ("a", "b", "c", "d", "e")
    config = ConfigDict(dict(data=data_cfg(tmp_path / "c"), trainer=dict(total_steps=1, batch_size=1),
                             model=dict(size="tiny", dtype="float32")))
    line = report.describe(config, data, types.SimpleNamespace(num_layers=2, hidden_size=128))[0]
    assert f"{len(data.train)} training sequences of 32 tokens from 5 sources;" in line


# --------------------------------------------------------------------------------------------
# A file that is not text.


@pytest.fixture(scope="module")
def junk_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("junk")
    _write(root / "train" / "good.txt", _lines(200, 1))
    (root / "train" / "junk.txt").write_bytes(random.Random(0).randbytes(200_000))
    return root


def test_undecodable_bytes_are_counted_exactly(tmp_path, monkeypatch):
    data = random.Random(1).randbytes(50_000) + "caf\u00e9 \u2603\n".encode() * 1000
    # Reference: decoding with "ignore" drops exactly the undecodable bytes.
    expected = len(data) - len(data.decode("utf-8", "ignore").encode("utf-8"))
    (tmp_path / "x.txt").write_bytes(data)
    monkeypatch.setattr(text_lib, "_READ_BYTES", 4093)  # reads that cut multi-byte characters
    assert text_lib.undecodable_bytes(tmp_path / "x.txt") == (expected, len(data))


def test_a_file_of_random_bytes_is_refused_with_its_name_and_fraction(junk_corpus, nltk_data, tmp_path):
    path = junk_corpus / "train" / "junk.txt"
    raw = path.read_bytes()
    bad = len(raw) - len(raw.decode("utf-8", "ignore").encode("utf-8"))
    assert 0.3 < bad / len(raw) < 0.6
    with pytest.raises(DataError) as e:
        prepare_data(data_cfg(junk_corpus, nltk_data), tmp_path / "cache", progress=False)
    assert str(e.value) == (
        f"corpus file {path}: {bad / len(raw):.1%} of its bytes ({bad:,} of {len(raw):,}) are not valid UTF-8, more "
        "than data.max_undecodable_fraction=0.2: it does not look like UTF-8 text. Remove it from the corpus, "
        "re-encode it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or set data.max_undecodable_fraction=1 to train "
        "on it with those bytes replaced by U+FFFD.")
    left = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.suffix != ".lock"]
    assert left == []  # refused before anything was built
    # The override: a limit above the file's fraction lets it through.
    text_lib.check_decodable([path], ReadOptions(max_undecodable_fraction=0.6))
    text_lib.check_decodable([path], ReadOptions(max_undecodable_fraction=1.0))
    with pytest.raises(DataError, match="max_undecodable_fraction=1.5 is not a fraction"):
        ReadOptions(max_undecodable_fraction=1.5)
