"""Find a corpus's train/dev/test sources and stream their lines.

A corpus is a set of *sources* (one text file per source and split, one utterance or sentence per
line) in one of the BabyLM layouts, the sample shipped with the package (`"embedded"`), a Hugging
Face dataset (`"hf:<name>"`, `hf_corpus.py`), or a BabyLM folder at a URI (`gs://...`: listed here
through `etils.epath`, read from a local copy, `remote.py`). Files are streamed: a source is read line
by line, in bounded pieces, so neither a large corpus nor a single line of megabytes is ever held as
one Python string.

Cleaning rules, applied the same way on every pass over a source:
  * bytes that are not UTF-8 are replaced by U+FFFD and counted (`on_decode_error="skip"`), or stop
    the preparation with a `DataError` naming the file and line (`"fail"`);
  * lines longer than `max_line_chars` are split at whitespace into pieces of at most that size
    (a piece is cut mid-word only when it holds no whitespace at all);
  * blank lines are dropped; a "line" everywhere below means a non-blank piece after splitting.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from absl import logging

from climb_jax import uri

from climb_jax.config import choices
from climb_jax.errors import DataError

SPLITS = ("train", "dev", "test")
EMBEDDED_DIR = Path(__file__).resolve().parent / "sample"

# Directory layouts, tried in this order: (layout name, train folder, dev folder, test folder).
LAYOUTS = (
    ("babylm-2023", "babylm_10M", "babylm_dev", "babylm_test"),
    ("babylm-2024", "train_10M", "dev", "test"),
    ("babylm-2023-100M", "babylm_100M", "babylm_dev", "babylm_test"),
    ("babylm-2024-100M", "train_100M", "dev", "test"),
    ("split-folders", "train", "dev", "test"),
)

_READ_BYTES = 1 << 20  # the most bytes read from a file at once
_WHITESPACE = (" ", "\t", "\u00a0", "\u3000", "\x0b", "\x0c", "\u2009", "\u2002", "\u2003")
_SURROGATES = re.compile("[\udc80-\udcff]+")


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How raw text becomes lines (the `data.on_decode_error` and `data.max_line_chars` settings)."""

    on_decode_error: str = choices.DEFAULT_DECODE_ERROR_POLICY
    max_line_chars: int = 20_000

    def __post_init__(self):
        if self.on_decode_error not in choices.DECODE_ERROR_POLICIES:
            raise DataError(f"data.on_decode_error='{self.on_decode_error}' is not valid; use one of: "
                            f"{', '.join(choices.DECODE_ERROR_POLICIES)}.")
        if self.max_line_chars < 16:
            raise DataError(f"data.max_line_chars={self.max_line_chars} is too small; use at least 16.")


@dataclasses.dataclass
class DecodeReport:
    """Undecodable bytes found while reading, per origin (file path)."""

    bad_bytes: dict[str, int] = dataclasses.field(default_factory=dict)
    bad_lines: dict[str, int] = dataclasses.field(default_factory=dict)

    def add(self, origin: str, nbytes: int) -> None:
        self.bad_bytes[origin] = self.bad_bytes.get(origin, 0) + nbytes
        self.bad_lines[origin] = self.bad_lines.get(origin, 0) + 1

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {k: {"bytes": v, "lines": self.bad_lines[k]} for k, v in sorted(self.bad_bytes.items())}


# --------------------------------------------------------------------------------------------
# Line cleaning.


def split_long_text(text: str, limit: int, final: bool = True) -> tuple[list[str], str]:
    """Cuts `text` into pieces of at most `limit` characters at whitespace.

    Returns (pieces, rest): with `final=False` the tail after the last cut is returned as `rest`
    (more text of the same line follows); with `final=True` it becomes the last piece. Linear time.
    """
    pieces: list[str] = []
    start, n = 0, len(text)
    while n - start > limit:
        end = start + limit
        # The last whitespace at or before `end` (a piece may end right before it).
        cut = max(text.rfind(ws, start, end + 1) for ws in _WHITESPACE)
        if cut <= start:
            piece, start = text[start:end], end  # no whitespace: a hard cut
        else:
            piece, start = text[start:cut], cut + 1
        piece = piece.strip()
        if piece:
            pieces.append(piece)
    rest = text[start:]
    if final:
        rest = rest.strip()
        if rest:
            pieces.append(rest)
        rest = ""
    return pieces, rest


def clean_lines(texts: Iterable[str], opts: ReadOptions) -> Iterator[str]:
    """Lines from already-decoded rows (e.g. a dataset's text column): split long rows, drop blanks."""
    for text in texts:
        if text is None:
            continue
        for row in str(text).splitlines():
            if len(row) > opts.max_line_chars:
                yield from split_long_text(row, opts.max_line_chars)[0]
            else:
                row = row.strip()
                if row:
                    yield row


def _complete_prefix_length(data: bytes) -> int:
    """Length of `data` without an incomplete UTF-8 sequence at its end (cut by a bounded read)."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        b = data[n - back]
        if b < 0x80:  # ASCII: nothing pending
            return n
        if b >= 0xC0:  # a lead byte: how long should its sequence be?
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return n - back if back < need else n
    return n


def _decode(data: bytes, origin: str, lineno: int, opts: ReadOptions, report: DecodeReport | None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if opts.on_decode_error == "fail":
            raise DataError(
                f"{origin}, line {lineno}: bytes {data[e.start:e.end + 3]!r} are not valid UTF-8 ({e.reason}). "
                "Re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or set "
                "data.on_decode_error=skip to replace undecodable bytes and report how many there were."
            ) from None
    # surrogateescape maps each undecodable byte to one lone surrogate: count them, then replace each
    # run by U+FFFD. Linear, however many errors the piece holds.
    text = data.decode("utf-8", "surrogateescape")
    bad = sum(len(m) for m in _SURROGATES.findall(text))
    if report is not None:
        report.add(origin, bad)
    return _SURROGATES.sub("\ufffd", text)


def read_file_lines(path: Path, opts: ReadOptions, report: DecodeReport | None = None) -> Iterator[str]:
    """Streams the cleaned lines of one UTF-8 text file (see the module docstring for the rules)."""
    origin = str(path)
    chunk = max(_READ_BYTES, 4 * opts.max_line_chars)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot read corpus file {path}: {e.strerror}. Check that it exists and is readable.") from None
    with f:
        lineno, pending, carry, first = 1, "", b"", True
        while True:
            raw = f.readline(chunk)
            if not raw:
                break
            ends_line = raw.endswith(b"\n")
            data = carry + raw
            if ends_line:
                carry = b""
            else:
                keep = _complete_prefix_length(data)
                data, carry = data[:keep], data[keep:]
            text = _decode(data, origin, lineno, opts, report)
            if first:
                text, first = text.removeprefix("\ufeff"), False
            if ends_line:
                text = text[:-2] if text.endswith("\r\n") else text[:-1]
                line = pending + text if pending else text
                pending = ""
                if len(line) > opts.max_line_chars:
                    yield from split_long_text(line, opts.max_line_chars)[0]
                else:
                    line = line.strip()
                    if line:
                        yield line
                lineno += 1
            else:
                pending += text
                if len(pending) > opts.max_line_chars:
                    pieces, pending = split_long_text(pending, opts.max_line_chars, final=False)
                    yield from pieces
        if carry:
            pending += _decode(carry, origin, lineno, opts, report)
        if pending:
            yield from split_long_text(pending, opts.max_line_chars)[0]


def take_words(lines: Iterable[str], limit: int) -> Iterator[str]:
    """The prefix of `lines` that holds about `limit` words (whole lines; 0 = everything)."""
    if limit <= 0:
        yield from lines
        return
    kept = 0
    for line in lines:
        if kept >= limit:
            return
        kept += len(line.split())
        yield line


# --------------------------------------------------------------------------------------------
# Sources and corpora.


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

    def raw_lines(self, opts: ReadOptions, report: DecodeReport | None = None) -> Iterator[str]:
        """All cleaned lines, ignoring `word_limit`."""
        if self.path is not None:
            yield from read_file_lines(self.path, opts, report)
        else:
            for batch in self.rows.iter(batch_size=1000):
                yield from clean_lines(batch[self.text_column], opts)

    def lines(self, opts: ReadOptions, report: DecodeReport | None = None) -> Iterator[str]:
        """The cleaned lines this corpus uses (a prefix when `word_limit` is set)."""
        return take_words(self.raw_lines(opts, report), self.word_limit)


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

    @property
    def sources(self) -> tuple[str, ...]:
        """Source names of every split, sorted: a source's id is its index here."""
        return tuple(sorted({s.name for split in self.splits.values() for s in split}))

    def approx_bytes(self, split: str) -> int:
        return sum(s.approx_bytes for s in self.splits.get(split, []))


def _split_files(folder: Path, split: str) -> list[Path]:
    """A split folder's text files: `*.<split>` if there are any, else `*.txt`, else every file."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    for pick in (lambda p: p.suffix == f".{split}", lambda p: p.suffix == ".txt"):
        chosen = [p for p in files if pick(p)]
        if chosen:
            return chosen
    return files


def _looked_for(root: Path) -> str:
    folders = ", ".join(f"{t}/" for _, t, _, _ in LAYOUTS)
    return (f"in {root} looked for a training folder ({folders}, each beside its dev/test folders) "
            "or flat files named <source>.train (with <source>.dev, <source>.test)")


def _directory_layout(root: Path) -> tuple[str, dict[str, list[Path]]]:
    if not root.is_dir():
        raise DataError(
            f"data.corpus='{root}' is not a directory. Use 'embedded', a directory in a BabyLM layout "
            "(babylm_10M/ babylm_dev/ babylm_test/, or train_10M/ dev/ test/, or train/ dev/ test/), "
            "or 'hf:<dataset name>'."
        )
    if (root / "babylm_data").is_dir() and not any((root / t).is_dir() for _, t, _, _ in LAYOUTS):
        root = root / "babylm_data"  # the BabyLM 2023 archive's top folder
    for layout, *folders in LAYOUTS:
        if (root / folders[0]).is_dir():
            found = {}
            for split, folder in zip(SPLITS, folders):
                path = root / folder
                found[split] = _split_files(path, split) if path.is_dir() else []
            if not found["train"]:
                raise DataError(f"the training folder {root / folders[0]} holds no text files; "
                                f"{_looked_for(root)}.")
            return layout, found
    flat = {split: sorted(p for p in root.glob(f"*.{split}") if p.is_file()) for split in SPLITS}
    if flat["train"]:
        return "flat", flat
    raise DataError(f"no training split found: {_looked_for(root)}.")


def _size(path) -> int:
    """A file's size in bytes, for a `pathlib.Path` or an `etils.epath.Path` (whose stat says `length`)."""
    st = path.stat()
    return int(st.st_size if hasattr(st, "st_size") else st.length)


def _file_sources(split: str, files: Sequence[Path], skipped: list[str]) -> list[Source]:
    out = []
    for path in files:
        size = _size(path)
        if size == 0:
            logging.warning("corpus file %s is empty; it is skipped.", path)
            skipped.append(str(path))
            continue
        name = path.name[: -len(f".{split}")] if path.name.endswith(f".{split}") else path.stem
        out.append(Source(name=name, split=split, origin=str(path), path=path, approx_bytes=size))
    names = [s.name for s in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"the {split} split has several files for source(s) {', '.join(dup)}; "
                        "keep one file per source and split.")
    return out


def _count_words(source: Source, opts: ReadOptions) -> int:
    return sum(len(line.split()) for line in source.raw_lines(opts))


def apply_word_budget(sources: list[Source], max_words: int, opts: ReadOptions,
                      progress: Callable[[Iterable], Iterable] = iter) -> None:
    """Sets each source's `word_limit` so that the total is about `max_words`, shared in proportion
    to the sources' sizes (in words). `max_words <= 0` or a budget above the total keeps everything."""
    if max_words <= 0 or not sources:
        return
    counts = [_count_words(s, opts) for s in progress(sources)]
    total = sum(counts)
    if total <= max_words:
        return
    for source, n in zip(sources, counts):
        source.word_limit = max(1, round(max_words * n / total)) if n else 0


def remote_uri(spec: str) -> bool:
    """`gs://...`, `s3://...`: a location only `etils.epath` can read (not `hf:` nor a local path)."""
    return uri.is_uri(spec) and not spec.startswith(choices.HF_CORPUS_PREFIX)


def find_corpus(data_cfg) -> Corpus:
    """Resolves `data.corpus` to its sources, with empty files skipped. Cheap: it lists files and reads
    no text, so the sources can be checked against the config before any expensive work (a remote
    corpus is listed where it is).

    Word budgets (`max_train_words`, `max_eval_words`) need a pass over the text, so they are applied
    separately (`apply_word_budget`), only when the data is actually built."""
    spec = str(data_cfg.corpus).strip()
    read_options(data_cfg)  # bad settings fail before anything is read
    if spec.startswith(choices.HF_CORPUS_PREFIX):
        name = spec[len(choices.HF_CORPUS_PREFIX):].strip()
        if not name:
            raise DataError("data.corpus='hf:' names no dataset; use 'hf:<dataset name>'.")
        from climb_jax.data.hf_corpus import hf_corpus  # late: it imports `datasets` when used

        corpus = hf_corpus(spec, name, str(data_cfg.get("hf_subset", "") or ""))
    else:
        if not spec:
            raise DataError("data.corpus is empty; use 'embedded', a corpus directory or 'hf:<dataset name>'.")
        if spec == choices.EMBEDDED_CORPUS:
            root = EMBEDDED_DIR
        elif remote_uri(spec):  # listed through etils.epath; `prepare_data` reads a local copy
            from climb_jax.data.remote import open_uri

            root = open_uri(spec)
        else:
            root = Path(spec).expanduser().resolve()
        layout, found = _directory_layout(root)
        skipped: list[str] = []
        splits = {split: _file_sources(split, found[split], skipped) for split in SPLITS}
        files = [s.path for split in SPLITS for s in splits[split]]
        corpus = Corpus(spec=spec, root=str(root), layout=layout, splits=splits, files=files, identity=[],
                        skipped=skipped)
    if not corpus.splits["train"]:
        raise DataError(
            f"the corpus {corpus.root} has no training text: every training file is empty"
            + (f" ({', '.join(corpus.skipped)})" if corpus.skipped else "") + "."
        )
    if not corpus.splits["dev"]:
        logging.warning("the corpus %s has no dev split; the dev set is empty.", corpus.root)
    return corpus


def read_options(data_cfg) -> ReadOptions:
    return ReadOptions(on_decode_error=str(data_cfg.on_decode_error), max_line_chars=int(data_cfg.max_line_chars))
