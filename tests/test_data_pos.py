"""Part-of-speech tags: words, the fast engine against NLTK, subword alignment, a missing tagger."""

from __future__ import annotations

import numpy as np
import pytest

from climb_jax.constants import POS_INDEX, POS_TAGS, POS_X
from climb_jax.data import pos as pos_lib
from climb_jax.data import tokenizer as tok_lib
from climb_jax.errors import DataError


def names(ids) -> list[str]:
    return [POS_TAGS[i] for i in ids]


@pytest.fixture(scope="module")
def tagger(nltk_data):
    return pos_lib.load_tagger(str(nltk_data))


@pytest.fixture(scope="module")
def mini_lines(babylm_mini):
    out = []
    for path in sorted((babylm_mini / "train").glob("*.train")):
        with open(path, encoding="utf-8") as f:
            out += [next(f).strip() for _ in range(150)]
    return out


def test_known_sentences(tagger):
    assert names(tagger.tag_sents([["The", "dog", "runs", "quickly", "."]])) == ["DET", "NOUN", "VERB", "ADV", "."]
    _, _, tags = tagger.tag_lines(["The dog runs quickly.", "She ate an apple"])
    assert names(tags) == ["DET", "NOUN", "VERB", "ADV", ".", "PRON", "VERB", "DET", "NOUN"]


def test_split_words_follows_treebank_conventions():
    words, starts, ends = pos_lib.split_words("I don't know, John's dog can't \"run\"... 3.5 well-known")
    assert words == ["I", "do", "n't", "know", ",", "John", "'s", "dog", "ca", "n't", "''", "run", "''", "...",
                     "3.5", "well-known"]
    text = "I don't know, John's dog can't \"run\"... 3.5 well-known"
    assert [text[a:b] for a, b in zip(starts, ends)][:3] == ["I", "do", "n't"]
    assert pos_lib.split_words("It\u2019s \u201cgood\u201d")[0] == ["It", "'s", "``", "good", "''"]


def test_fast_engine_matches_nltk(tagger, nltk_data, mini_lines):
    ref = pos_lib.PosTagger(str(nltk_data), engine="nltk")
    extra = ["", "1999 was 3-4 -- no", "- dash first", "A" * 50, "\u00e9t\u00e9 na\u00efve caf\u00e9s", "42"]
    lines = mini_lines + extra
    a = ref.tag_lines(lines)
    b = tagger.tag_lines(lines)
    assert len(a[2]) > 5000
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # The raw NLTK call, tag for tag.
    sents = [pos_lib.split_words(x)[0] for x in lines[:100]]
    from nltk.tag.mapping import map_tag

    expected = [POS_INDEX[map_tag("en-ptb", "universal", t)] for s in ref.tagger.tag_sents(sents) for _, t in s]
    assert tagger.tag_sents(sents).tolist() == expected


def test_subwords_get_their_words_tag(tagger, mini_lines):
    tok = tok_lib.train_bpe(iter(mini_lines), 400)
    text = "The dog runs unbelievably quickly ."
    enc = tok.encode(text)  # with <s> ... </s>
    tags = tagger.tag_encoding(text, enc)
    assert tags[0] == POS_X and tags[-1] == POS_X
    by_word = {}
    for (a, b), t in zip(enc.offsets[1:-1], tags[1:-1]):
        by_word.setdefault(text[a:b], t)
    pieces = [(text[a:b], POS_TAGS[t]) for (a, b), t in zip(enc.offsets[1:-1], tags[1:-1])]
    adverb_pieces = [p for p, t in pieces if t == "ADV"]
    assert "".join(adverb_pieces) == "unbelievablyquickly"
    assert len(adverb_pieces) > 2  # a word of several subwords, all tagged as the word
    assert pieces[0] == ("The", "DET") and pieces[-1] == (".", ".")


def test_align_tags():
    starts, ends, tags = np.array([0, 4, 10]), np.array([3, 9, 11]), np.array([5, 0, 10], np.int8)
    tok = np.array([0, 1, 3, 4, 6, 9, 10, 12])
    assert pos_lib.align_tags(tok, starts, ends, tags).tolist() == [5, 5, POS_X, 0, 0, POS_X, 10, POS_X]
    assert pos_lib.align_tags(tok, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8)).tolist() == [POS_X] * 8


def test_missing_tagger_says_how_to_install(tmp_path, monkeypatch, nltk_data):
    import nltk

    monkeypatch.delenv("NLTK_DATA", raising=False)
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty")])
    # Without the package's bundled copy too (a build that strips package data), the error says what to install.
    monkeypatch.setattr(pos_lib, "BUNDLED_TAGGER", tmp_path / "no_bundled_tagger.tar.xz")
    with pytest.raises(DataError) as e:
        pos_lib.PosTagger(str(tmp_path / "empty"))
    msg = str(e.value)
    assert "NLTK_DATA" in msg and "averaged_perceptron_tagger_eng" in msg
    assert "python -m nltk.downloader averaged_perceptron_tagger_eng universal_tagset" in msg
    # The tagger without the universal tagset map.
    only = tmp_path / "only_tagger" / "taggers"
    only.mkdir(parents=True)
    (only / "averaged_perceptron_tagger_eng").symlink_to(nltk_data / "taggers" / "averaged_perceptron_tagger_eng")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "only_tagger")])
    with pytest.raises(DataError, match="universal_tagset"):
        pos_lib.PosTagger(str(tmp_path / "only_tagger"))
