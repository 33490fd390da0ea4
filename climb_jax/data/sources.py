"""What a corpus is once found: its sources, split by split (`Source`, `Corpus`).

A *source* is one file of one split (or the rows of a dataset with one source name); its lines are
cleaned by `text` and, with a word budget, cut to a prefix. Both the directory layouts (`corpus`) and
Hugging Face datasets (`hf_corpus`) build these; neither needs the other.

Carving a dev split. A folder of plain text files has no dev split, yet the run needs one (dev
pseudo-perplexity chooses the checkpoint the final evaluation scores). Each line of such a file goes to
dev when a hash of its text falls in the lowest `CARVED_DEV_FRACTION` of the hash range, else to
train: deterministic on every machine and pass, independent of line order, and a line repeated in the
corpus lands on one side only, so dev never scores a sentence the model trained on.
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path
from typing import Any, Iterator

from climb_jax.data.text import DecodeReport, ReadOptions, clean_lines, read_file_lines, take_words

SPLITS = ("train", "dev", "test")
CARVED_DEV_FRACTION = 0.05  # the share of a flat folder's lines that becomes its dev split
_HASH_RANGE = 1 << 32  # zlib.crc32's


def carved_to_dev(line: str) -> bool:
    """Whether a line of a corpus without a dev split belongs to the carved dev split."""
    return zlib.crc32(line.encode("utf-8", "surrogatepass")) < CARVED_DEV_FRACTION * _HASH_RANGE


@dataclasses.dataclass
class Source:
    """One source of one split: a file, or rows of a dataset."""

    name: str
    split: str
    origin: str  # the file path, or "hf:<name>/<split>/<source>"
    path: Path | None = None
    rows: Any = None  # a `datasets.Dataset` with the text column (Hugging Face corpora)
    text_column: str = "text"
    approx_bytes: int = 0
    word_limit: int = 0  # 0 = the whole source
    carve: str = ""  # "": every line; "train" / "dev": the lines `carved_to_dev` keeps out of / puts in dev

    def raw_lines(self, opts: ReadOptions, report: DecodeReport | None = None) -> Iterator[str]:
        """All cleaned lines, ignoring `word_limit`."""
        if self.path is not None:
            lines = read_file_lines(self.path, opts, report)
        else:
            lines = (line for batch in self.rows.iter(batch_size=1000)
                     for line in clean_lines(batch[self.text_column], opts))
        if not self.carve:
            yield from lines
        else:
            to_dev = self.carve == "dev"
            yield from (line for line in lines if carved_to_dev(line) == to_dev)

    def lines(self, opts: ReadOptions, report: DecodeReport | None = None) -> Iterator[str]:
        """The cleaned lines this corpus uses (a prefix when `word_limit` is set)."""
        return take_words(self.raw_lines(opts, report), self.word_limit)


def carve_dev(train: list[Source]) -> tuple[list[Source], list[Source]]:
    """(train, dev) sources of a corpus that has only training files: the same files, each line on the
    side `carved_to_dev` gives it."""
    f = CARVED_DEV_FRACTION
    keep = [dataclasses.replace(s, carve="train", approx_bytes=round(s.approx_bytes * (1 - f))) for s in train]
    dev = [dataclasses.replace(s, split="dev", carve="dev", approx_bytes=round(s.approx_bytes * f)) for s in train]
    return keep, dev


@dataclasses.dataclass
class Corpus:
    """Where a corpus's text is, split by split; `identity` feeds the cache fingerprint."""

    spec: str
    root: str
    layout: str
    splits: dict[str, list[Source]]
    files: list[Path]  # every file read (fingerprinted by content)
    identity: list[dict]  # extra identity for non-file corpora (dataset fingerprints)
    skipped: list[str]  # empty files left out
    carved_dev: bool = False  # the dev split is carved out of the training files (`carve_dev`)

    @property
    def sources(self) -> tuple[str, ...]:
        """Source names of every split, sorted: a source's id is its index here."""
        return tuple(sorted({s.name for split in self.splits.values() for s in split}))

    def approx_bytes(self, split: str) -> int:
        return sum(s.approx_bytes for s in self.splits.get(split, []))
