"""Reading corpus text files: bytes -> decoded, cleaned lines, streamed.

Files are streamed: a file is read line by line, in bounded pieces, so neither a large corpus nor a
single line of megabytes is ever held as one Python string.

Cleaning rules, applied the same way on every pass over a file:
  * bytes that are not UTF-8 are replaced by U+FFFD and counted (`on_decode_error="skip"`), or stop
    the preparation with a `DataError` naming the file and line (`"fail"`);
  * lines longer than `max_line_chars` are split at whitespace into pieces of at most that size
    (a piece is cut mid-word only when it holds no whitespace at all);
  * blank lines are dropped; a "line" everywhere below means a non-blank piece after splitting.

A file that is mostly not UTF-8 (random bytes, an archive, an image, a text in a legacy 8-bit
encoding of a non-Latin script) is not text to train on: replacing its bytes would silently turn it
into noise. `check_decodable` measures each file's undecodable fraction before anything is trained
and refuses a file above `data.max_undecodable_fraction` (default 20 %: a Latin-1 file of English or
French has a few percent of such bytes, its accented letters; random or compressed data about 43 %, a
text in a legacy encoding of Greek or Chinese more than half).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Iterable, Iterator

from climb_jax.config import choices
from climb_jax.errors import DataError

_READ_BYTES = 1 << 20  # the most bytes read from a file at once
_WHITESPACE = (" ", "\t", "\u00a0", "\u3000", "\x0b", "\x0c", "\u2009", "\u2002", "\u2003")
_SURROGATES = re.compile("[\udc80-\udcff]+")


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How raw text becomes lines (the `data.on_decode_error` and `data.max_line_chars` settings)."""

    on_decode_error: str = choices.DEFAULT_DECODE_ERROR_POLICY
    max_line_chars: int = 20_000
    max_undecodable_fraction: float = choices.DEFAULT_MAX_UNDECODABLE_FRACTION

    def __post_init__(self):
        if self.on_decode_error not in choices.DECODE_ERROR_POLICIES:
            raise DataError(f"data.on_decode_error='{self.on_decode_error}' is not valid; use one of: "
                            f"{', '.join(choices.DECODE_ERROR_POLICIES)}.")
        if self.max_line_chars < 16:
            raise DataError(f"data.max_line_chars={self.max_line_chars} is too small; use at least 16.")
        if not 0 <= self.max_undecodable_fraction <= 1:
            raise DataError(f"data.max_undecodable_fraction={self.max_undecodable_fraction} is not a fraction; "
                            "use a number from 0 to 1 (1 accepts any file).")


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
# Files that are not UTF-8 text.


def undecodable_bytes(path: Path) -> tuple[int, int]:
    """(bytes that are not valid UTF-8, all bytes) of a file, read in bounded pieces."""
    bad = total = 0
    carry = b""
    with open(path, "rb") as f:
        while True:
            raw = f.read(_READ_BYTES)
            data = carry + raw
            keep = _complete_prefix_length(data) if raw else len(data)
            data, carry = data[:keep], data[keep:]
            total += len(data)
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:  # surrogateescape: one lone surrogate per undecodable byte
                bad += sum(len(m) for m in _SURROGATES.findall(data.decode("utf-8", "surrogateescape")))
            if not raw:
                return bad, total


def check_decodable(paths: Iterable[Path], opts: ReadOptions) -> None:
    """Refuses the first file whose undecodable fraction is above `opts.max_undecodable_fraction`
    (DataError naming the file, its fraction and the ways out). Under `on_decode_error="fail"` the
    read itself stops at the first bad byte, with its line, so nothing is scanned here."""
    limit = opts.max_undecodable_fraction
    if opts.on_decode_error == "fail" or limit >= 1:
        return
    for path in paths:
        bad, total = undecodable_bytes(path)
        if total and bad / total > limit:
            raise DataError(
                f"corpus file {path}: {bad / total:.1%} of its bytes ({bad:,} of {total:,}) are not valid UTF-8, "
                f"more than data.max_undecodable_fraction={limit:g}: it does not look like UTF-8 text. Remove it "
                "from the corpus, re-encode it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or set "
                "data.max_undecodable_fraction=1 to train on it with those bytes replaced by U+FFFD.")
