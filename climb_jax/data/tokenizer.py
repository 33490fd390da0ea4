"""A byte-level BPE vocabulary trained on the training split, optionally re-numbered by frequency.

The vocabulary curriculum ranks tokens by id. By default (`data.token_order="bpe"`, the reference's)
the ids are the BPE trainer's: specials, the byte alphabet, then one id per merge in merge order.
With `data.token_order="frequency"` the non-special ids are re-numbered by how often each token
occurs in the training data (ties: the original id).
Byte-level BPE merges name tokens by their strings, not their ids, so re-numbering only rewrites
the `vocab` table of the tokenizer JSON: encoding gives the same token strings before and after.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np
from tokenizers import AddedToken, Tokenizer
from tokenizers.implementations import ByteLevelBPETokenizer
from tokenizers.processors import RobertaProcessing

from climb_jax.constants import BOS_ID, EOS_ID, MASK_ID, NUM_SPECIAL, PAD_ID, SPECIAL_TOKENS, UNK_ID
from climb_jax.errors import DataError

MIN_FREQUENCY = 2  # a merge must occur at least twice in the training data


def _special_tokens() -> list:
    # RoBERTa's <mask> swallows the space before it, so "the <mask> sat" masks one word.
    return [AddedToken(t, lstrip=True, special=True) if t == "<mask>" else t for t in SPECIAL_TOKENS]


def train_bpe(lines: Iterable[str], vocab_size: int, *, length: int | None = None,
              show_progress: bool = False, min_frequency: int = MIN_FREQUENCY) -> Tokenizer:
    """Trains a byte-level BPE (prefix space added, specials <s> <pad> </s> <unk> <mask> as ids 0-4)
    whose `encode` adds <s> ... </s>. Ids are the raw merge order."""
    bpe = ByteLevelBPETokenizer(add_prefix_space=True)
    bpe.train_from_iterator(lines, vocab_size=vocab_size, min_frequency=min_frequency,
                            special_tokens=_special_tokens(), show_progress=show_progress, length=length)
    tok = bpe._tokenizer  # the underlying `tokenizers.Tokenizer`
    check_specials(tok)
    tok.post_processor = RobertaProcessing(("</s>", EOS_ID), ("<s>", BOS_ID), trim_offsets=True,
                                           add_prefix_space=True)
    return tok


def check_specials(tok: Tokenizer) -> None:
    for i, t in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(t) != i:
            raise DataError(f"tokenizer special token {t} has id {tok.token_to_id(t)}, expected {i}; "
                            "rebuild the data cache.")


def frequency_order(counts: np.ndarray) -> np.ndarray:
    """`new_id[old_id]`: specials keep ids 0-4, the rest sorted by descending count, ties by old id."""
    counts = np.asarray(counts, np.int64)
    rest = np.arange(NUM_SPECIAL, len(counts))
    order = rest[np.lexsort((rest, -counts[NUM_SPECIAL:]))]  # old ids in their new order
    new_id = np.arange(len(counts), dtype=np.int64)
    new_id[order] = np.arange(NUM_SPECIAL, len(counts))
    return new_id


def renumber(tok: Tokenizer, new_id: np.ndarray) -> Tokenizer:
    """The same tokenizer with token `old` re-numbered `new_id[old]` (a permutation fixing specials)."""
    new_id = np.asarray(new_id)
    size = tok.get_vocab_size(with_added_tokens=True)
    if new_id.shape != (size,) or not np.array_equal(np.sort(new_id), np.arange(size)):
        raise DataError(f"new_id must be a permutation of {size} ids")
    if not np.array_equal(new_id[:NUM_SPECIAL], np.arange(NUM_SPECIAL)):
        raise DataError("the special tokens must keep their ids")
    spec = json.loads(tok.to_str())
    if spec["model"]["type"] != "BPE":
        raise DataError(f"expected a BPE model, got {spec['model']['type']}")
    spec["model"]["vocab"] = {t: int(new_id[i]) for t, i in spec["model"]["vocab"].items()}
    for added in spec.get("added_tokens", []):
        added["id"] = int(new_id[added["id"]])
    return Tokenizer.from_str(json.dumps(spec))


def to_transformers(tok: Tokenizer, model_max_length: int = 512):
    """Wraps a trained tokenizer as a `PreTrainedTokenizerFast` with RoBERTa's special-token roles."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", model_max_length=model_max_length,
        padding_side="right",
    )


def check_transformers_tokenizer(hf_tok, origin: str) -> None:
    """The special ids every model and data array of this project assume."""
    expected = {"bos_token_id": BOS_ID, "pad_token_id": PAD_ID, "eos_token_id": EOS_ID,
                "unk_token_id": UNK_ID, "mask_token_id": MASK_ID}
    wrong = {k: getattr(hf_tok, k, None) for k, v in expected.items() if getattr(hf_tok, k, None) != v}
    if wrong:
        raise DataError(f"the tokenizer in {origin} has unexpected special token ids {wrong} "
                        f"(expected {expected}); it was not built by this project's data preparation.")


def load_tokenizer(directory):
    """The `PreTrainedTokenizerFast` saved in `directory` (by `save_pretrained`)."""
    from transformers import PreTrainedTokenizerFast

    path = Path(str(directory))
    if not (path / "tokenizer.json").is_file():
        raise DataError(f"{path} holds no tokenizer.json; prepare the data again (it is rebuilt "
                        "automatically when the data cache is incomplete).")
    try:
        hf_tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001 - a corrupt file must say where it is
        raise DataError(f"cannot load the tokenizer in {path}: {type(e).__name__}: {e}. "
                        "Delete the folder so that it is rebuilt.") from None
    check_transformers_tokenizer(hf_tok, str(path))
    return hf_tok
