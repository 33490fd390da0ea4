"""The byte-level BPE: specials, <s> ... </s>, frequency order, saving and loading."""

from __future__ import annotations

import json

import numpy as np
import pytest

from climb_jax.constants import NUM_SPECIAL, SPECIAL_TOKENS
from climb_jax.data import tokenizer as tok_lib
from climb_jax.errors import DataError


@pytest.fixture(scope="module")
def lines(babylm_mini):
    out = []
    for source in ("aochildes", "switchboard", "brown_fiction"):
        with open(babylm_mini / "train" / f"{source}.train", encoding="utf-8") as f:
            out += [next(f).strip() for _ in range(300)]
    return [x for x in out if x]


@pytest.fixture(scope="module")
def raw_tok(lines):
    return tok_lib.train_bpe(iter(lines), 500)


def counts_of(tok, lines):
    encs = tok.encode_batch(lines, add_special_tokens=False)
    ids = np.concatenate([e.ids for e in encs])
    return np.bincount(ids, minlength=tok.get_vocab_size())


def test_specials_and_post_processor(raw_tok, lines):
    assert raw_tok.get_vocab_size() == 500
    assert [raw_tok.id_to_token(i) for i in range(NUM_SPECIAL)] == list(SPECIAL_TOKENS)
    enc = raw_tok.encode("The dog runs.")
    assert enc.ids[0] == 0 and enc.ids[-1] == 2
    assert raw_tok.decode(enc.ids, skip_special_tokens=True).strip() == "The dog runs."
    # Deterministic: training again gives the same vocabulary and merges.
    assert tok_lib.train_bpe(iter(lines), 500).to_str() == raw_tok.to_str()


def test_frequency_order_sorts_ids_by_count(raw_tok, lines):
    counts = counts_of(raw_tok, lines)
    new_id = tok_lib.frequency_order(counts)
    tok = tok_lib.renumber(raw_tok, new_id)
    new_counts = counts_of(tok, lines)
    assert np.array_equal(new_counts[new_id], counts)  # the same tokens, moved
    assert np.all(np.diff(new_counts[NUM_SPECIAL:]) <= 0)  # monotone non-increasing
    assert [tok.id_to_token(i) for i in range(NUM_SPECIAL)] == list(SPECIAL_TOKENS)
    # Same token strings before and after, on every line and on unseen text.
    for text in lines[:200] + ["Unbelievably weird caf\u00e9 <mask> text!"]:
        before, after = raw_tok.encode(text), tok.encode(text)
        assert before.tokens == after.tokens
        assert after.ids == [int(new_id[i]) for i in before.ids]
    # Merges are untouched: they name tokens by string.
    assert json.loads(tok.to_str())["model"]["merges"] == json.loads(raw_tok.to_str())["model"]["merges"]


def test_frequency_order_breaks_ties_by_original_id():
    counts = np.array([9, 9, 9, 9, 9, 3, 7, 3, 0, 7])
    new_id = tok_lib.frequency_order(counts)
    # old ids in new order: 6 (7), 9 (7), 5 (3), 7 (3), 8 (0)
    assert new_id.tolist() == [0, 1, 2, 3, 4, 7, 5, 8, 9, 6]


def test_renumber_rejects_bad_permutations(raw_tok):
    size = raw_tok.get_vocab_size()
    with pytest.raises(DataError, match="permutation"):
        tok_lib.renumber(raw_tok, np.zeros(size, np.int64))
    swap = np.arange(size)
    swap[[0, 5]] = [5, 0]
    with pytest.raises(DataError, match="special"):
        tok_lib.renumber(raw_tok, swap)


def test_save_and_load_as_transformers_tokenizer(raw_tok, tmp_path):
    hf = tok_lib.to_transformers(raw_tok)
    hf.save_pretrained(str(tmp_path / "tok"))
    loaded = tok_lib.load_tokenizer(tmp_path / "tok")
    assert len(loaded) == 500
    assert (loaded.bos_token_id, loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id,
            loaded.mask_token_id) == (0, 1, 2, 3, 4)
    assert (loaded.cls_token, loaded.sep_token) == ("<s>", "</s>")
    text = "Do you want to look at that?"
    ids = loaded(text)["input_ids"]
    assert ids == raw_tok.encode(text).ids and ids[0] == 0 and ids[-1] == 2
    assert loaded.decode(ids, skip_special_tokens=True).strip() == text
    # <mask> takes the space before it, as RoBERTa's does.
    assert loaded.tokenize("the <mask> sat")[1].strip() == "<mask>"
    batch = loaded(["a b", "a b c d e"], padding=True)["input_ids"]
    assert batch[0][-1] == 1  # padded on the right with <pad>


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(DataError, match="holds no tokenizer.json"):
        tok_lib.load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot load the tokenizer"):
        tok_lib.load_tokenizer(tmp_path)
