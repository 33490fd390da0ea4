"""Finding corpus files in every supported layout, and reading them safely."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from ml_collections import ConfigDict

from climb_jax.config import schema
from climb_jax.data import corpus as corpus_lib, sources as sources_lib
from climb_jax.data.text import DecodeReport, ReadOptions, read_file_lines, split_long_text
from climb_jax.errors import DataError


def data_cfg(corpus, **kw) -> ConfigDict:
    c = schema.base_config().data
    c.corpus = str(corpus)
    for k, v in kw.items():
        c[k] = v
    return c


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def names(c: sources_lib.Corpus, split: str) -> list[str]:
    return [s.name for s in c.splits[split]]


@pytest.mark.parametrize("layout, folders", [
    ("babylm-2023", ("babylm_10M", "babylm_dev", "babylm_test")),
    ("babylm-2024", ("train_10M", "dev", "test")),
    ("split-folders", ("train", "dev", "test")),
])
def test_folder_layouts(tmp_path, layout, folders):
    for split, folder in zip(sources_lib.SPLITS, folders):
        for src in ("bnc_spoken", "aochildes"):
            write(tmp_path / folder / f"{src}.{split}", f"{src} {split} line one\nline two\n")
    write(tmp_path / folders[0] / ".DS_Store", "junk")
    c = corpus_lib.find_corpus(data_cfg(tmp_path))
    assert c.layout == layout
    for split in sources_lib.SPLITS:
        assert names(c, split) == ["aochildes", "bnc_spoken"]
    assert c.sources == ("aochildes", "bnc_spoken")
    assert list(c.splits["dev"][0].lines(ReadOptions())) == ["aochildes dev line one", "line two"]
    assert len(c.files) == 6


def test_flat_layout_and_babylm_data_parent(tmp_path):
    for split in ("train", "dev"):
        write(tmp_path / "flat" / f"wiki.{split}", "some text\n")
    c = corpus_lib.find_corpus(data_cfg(tmp_path / "flat"))
    assert c.layout == "flat" and names(c, "train") == ["wiki"] and names(c, "test") == []
    write(tmp_path / "archive" / "babylm_data" / "babylm_10M" / "a.train", "x y\n")
    c = corpus_lib.find_corpus(data_cfg(tmp_path / "archive"))
    assert c.layout == "babylm-2023" and names(c, "train") == ["a"] and c.splits["dev"] == []


def test_embedded_sample():
    c = corpus_lib.find_corpus(data_cfg("embedded"))
    expected = ["aochildes", "brown_fiction", "brown_nonfiction", "overheard", "scripts", "switchboard"]
    for split in sources_lib.SPLITS:
        assert names(c, split) == expected
    total = sum(p.stat().st_size for p in c.files)
    assert 1_000_000 < total < 3_000_000
    assert (corpus_lib.EMBEDDED_DIR / "NOTICE.md").is_file()


def test_missing_directory_and_missing_train_split(tmp_path):
    with pytest.raises(DataError, match="is not a directory"):
        corpus_lib.find_corpus(data_cfg(tmp_path / "nope"))
    write(tmp_path / "c" / "dev" / "a.dev", "text\n")
    with pytest.raises(DataError) as e:
        corpus_lib.find_corpus(data_cfg(tmp_path / "c"))
    msg = str(e.value)
    assert "no training split" in msg
    for looked in ("babylm_10M/", "train_10M/", "train/", "<source>.train"):
        assert looked in msg
    (tmp_path / "d" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no text files"):
        corpus_lib.find_corpus(data_cfg(tmp_path / "d"))
    with pytest.raises(DataError, match="names no dataset"):
        corpus_lib.find_corpus(data_cfg("hf:"))


def test_empty_files_are_skipped_and_no_training_text_is_an_error(tmp_path, caplog):
    write(tmp_path / "train" / "a.train", "hello world\n")
    write(tmp_path / "train" / "b.train", b"")
    with caplog.at_level(logging.WARNING):
        c = corpus_lib.find_corpus(data_cfg(tmp_path))
    assert names(c, "train") == ["a"]
    assert c.skipped == [str(tmp_path / "train" / "b.train")]
    assert "b.train is empty" in caplog.text
    write(tmp_path / "train" / "a.train", b"")
    with pytest.raises(DataError, match="no training text.*a.train"):
        corpus_lib.find_corpus(data_cfg(tmp_path))


def test_undecodable_bytes_skip_counts_and_replaces(tmp_path):
    path = write(tmp_path / "x.train", b"good line\nbad \xff\xfe here\n\xe9t\xe9 latin1\nfine \xc3\xa9t\xc3\xa9\n")
    report = DecodeReport()
    lines = list(read_file_lines(path, ReadOptions("skip"), report))
    assert lines == ["good line", "bad \ufffd here", "\ufffdt\ufffd latin1", "fine \u00e9t\u00e9"]
    assert report.as_dict() == {str(path): {"bytes": 4, "lines": 2}}


def test_undecodable_bytes_fail_names_file_and_line(tmp_path):
    path = write(tmp_path / "x.train", b"good line\nstill good\nbad \xff here\n")
    with pytest.raises(DataError) as e:
        list(read_file_lines(path, ReadOptions("fail")))
    msg = str(e.value)
    assert f"{path}, line 3" in msg and "on_decode_error=skip" in msg and "iconv" in msg


def test_bom_crlf_and_blank_lines(tmp_path):
    path = write(tmp_path / "x.train", "\ufeffone\r\n\r\n   \r\ntwo  \r\nthree".encode())
    assert list(read_file_lines(path, ReadOptions())) == ["one", "two", "three"]


def test_split_long_text_at_whitespace():
    pieces, rest = split_long_text("aaa bbb ccc ddd", 7)
    assert pieces == ["aaa bbb", "ccc ddd"] and rest == ""
    pieces, _ = split_long_text("abcdefghij klm", 4)  # no whitespace in the first window: hard cut
    assert pieces == ["abcd", "efgh", "ij", "klm"]
    pieces, rest = split_long_text("aaa bbb cc", 5, final=False)
    assert pieces == ["aaa", "bbb"] and rest == "cc"


def test_three_megabyte_line_is_streamed_in_pieces(tmp_path):
    words = [f"w{i}\u00e9" for i in range(400_000)]  # multi-byte characters straddle read boundaries
    path = write(tmp_path / "big.train", ("first line\n" + " ".join(words) + "\nlast line\n").encode())
    assert path.stat().st_size > 3_000_000
    report = DecodeReport()
    opts = ReadOptions("fail", max_line_chars=20_000)
    lines = list(read_file_lines(path, opts, report))
    assert lines[0] == "first line" and lines[-1] == "last line"
    middle = lines[1:-1]
    assert len(middle) > 100 and max(map(len, middle)) <= 20_000
    assert " ".join(middle).split() == words  # cut only at whitespace, nothing lost
    assert report.as_dict() == {}
    # One line of 3 MB with no whitespace at all: hard cuts of exactly max_line_chars.
    path = write(tmp_path / "nospace.train", b"x" * 3_000_000)
    pieces = list(read_file_lines(path, ReadOptions(max_line_chars=50_000)))
    assert [len(p) for p in pieces] == [50_000] * 60


def test_word_budget_is_proportional(tmp_path):
    write(tmp_path / "train" / "big.train", "one two three four five\n" * 600)  # 3000 words
    write(tmp_path / "train" / "small.train", "one two three four five\n" * 200)  # 1000 words
    write(tmp_path / "dev" / "big.dev", "a b\n" * 100)
    c = corpus_lib.find_corpus(data_cfg(tmp_path))
    corpus_lib.apply_word_budget(c.splits["train"], 400, ReadOptions())
    got = {s.name: sum(len(x.split()) for x in s.lines(ReadOptions())) for s in c.splits["train"]}
    assert got == {"big": 300, "small": 100}
    corpus_lib.apply_word_budget(c.splits["dev"], 1000, ReadOptions())  # budget above the total: all
    assert c.splits["dev"][0].word_limit == 0


def test_bad_read_options():
    with pytest.raises(DataError, match="on_decode_error='ignore'"):
        ReadOptions("ignore")


def test_hugging_face_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    files = {s: write(tmp_path / "txt" / f"{s}.txt", f"{s} one\n\n{s} two\n") for s in ("train", "validation")}
    dd = datasets.load_dataset("text", data_files={k: str(v) for k, v in files.items()},
                               cache_dir=str(tmp_path / "hf_cache"))
    dd.save_to_disk(str(tmp_path / "saved"))
    c = corpus_lib.find_corpus(data_cfg(f"hf:{tmp_path / 'saved'}"))
    assert c.layout == "huggingface" and names(c, "train") == ["saved"] and names(c, "test") == []
    assert list(c.splits["train"][0].lines(ReadOptions())) == ["train one", "train two"]
    assert list(c.splits["dev"][0].lines(ReadOptions())) == ["validation one", "validation two"]
    assert c.identity[1]["fingerprint"]

    # A `source` column splits rows into sources (file names lose their split suffix).
    ds = datasets.Dataset.from_dict({"text": ["a1", "b1", "a2", "x" * 50], "source": ["a.train", "b.train", "a.train", "b.train"]})
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "with_sources"))
    c = corpus_lib.find_corpus(data_cfg(f"hf:{tmp_path / 'with_sources'}", max_line_chars=20))
    assert names(c, "train") == ["a", "b"] and names(c, "test") == ["a", "b"]
    assert list(c.splits["train"][0].lines(ReadOptions(max_line_chars=20))) == ["a1", "a2"]
    assert list(c.splits["train"][1].lines(ReadOptions(max_line_chars=20))) == ["b1"] + ["x" * 20] * 2 + ["x" * 10]


def test_hugging_face_load_failure_is_explained(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def offline(name, subset=None, **kw):  # what an unreachable hub looks like, without the wait
        calls.append((name, subset, kw))
        raise ConnectionError("Couldn't reach 'some/dataset' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as e:
        corpus_lib.find_corpus(data_cfg("hf:some/dataset", hf_subset="strict_small"))
    msg = str(e.value)
    assert "could not load the Hugging Face dataset 'some/dataset'" in msg
    assert "strict_small" in msg and "network" in msg and "ConnectionError" in msg
    assert calls == [("some/dataset", "strict_small", {})]  # no trust_remote_code or other options


def test_line_of_exactly_max_chars_is_not_split(tmp_path):
    line = "ab " * 6 + "abcd"  # 22 characters
    path = write(tmp_path / "x.train", (line + "\r\n" + line + "\n").encode())
    assert list(read_file_lines(path, ReadOptions(max_line_chars=22))) == [line, line]


def test_a_corpus_uri_that_cannot_be_opened_is_one_clear_error(tmp_path):
    from climb_jax.config import schema

    c = schema.base_config().data
    c.corpus = "nosuchscheme://bucket/babylm"
    with pytest.raises(DataError, match=r"data.corpus=.nosuchscheme://bucket/babylm.: .nosuchscheme://. is not a location"):
        corpus_lib.find_corpus(c)
