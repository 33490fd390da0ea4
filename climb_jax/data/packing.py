"""Pack a source's lines into fixed-length training rows (`data.packing`).

Two layouts (choices.PACKINGS):

  reference     the reference's `join_sentences` (CLIMB (PyTorch) `DatasetPreprocessor`): every line
                is tokenized as `<s> line </s>`, the lines are concatenated into one stream and cut
                into rows of exactly `seq_len` tokens, so a row holds the boundaries of the lines it
                spans and need not start with `<s>`. The reference packs each batch of 1,000 lines of
                its preprocessing `datasets.map` separately (the library's default batch) and drops
                the last partial row of each; so does this layout, per source. (The reference's
                batches also cross file boundaries and restart at the shard boundaries of its 64
                preprocessing processes; here a group never mixes sources.)
  concatenated  the lines joined with no separator and cut into chunks of `seq_len - 2` tokens, each
                row `<s> chunk </s>`; the last partial chunk of each source is dropped.

Either way every row is full (no padding is ever needed) and rows never mix sources.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from climb_jax.constants import BOS_ID, EOS_ID, POS_X
from climb_jax.errors import DataError

REFERENCE_GROUP_LINES = 1000  # lines per packing group: `datasets.map(batched=True)`'s default batch


@dataclasses.dataclass
class PackedRows:
    """The rows of one source (or several, concatenated)."""

    input_ids: np.ndarray  # [N, seq_len] int32
    pos_ids: np.ndarray  # [N, seq_len] int8
    positions: np.ndarray  # [N] float32: line index of the row's first token / lines in the source
    dropped_tokens: int  # tokens (special tokens included) of the dropped partial rows

    def __len__(self) -> int:
        return len(self.input_ids)


def _check(token_ids, pos_ids, line_lengths, seq_len: int):
    if seq_len < 3:
        raise DataError(f"data.seq_len must be at least 3, got {seq_len}")
    token_ids, pos_ids = np.asarray(token_ids), np.asarray(pos_ids)
    line_lengths = np.asarray(line_lengths, np.int64)
    if token_ids.shape != pos_ids.shape or token_ids.ndim != 1:
        raise DataError(f"token_ids {token_ids.shape} and pos_ids {pos_ids.shape} must be equal 1-d shapes")
    if int(line_lengths.sum()) != len(token_ids):
        raise DataError(f"line lengths sum to {int(line_lengths.sum())}, but there are {len(token_ids)} tokens")
    return token_ids, pos_ids, line_lengths


def _line_of(starts: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The line holding each stream offset: the last line starting at or before it (empty lines share
    their start with the next line, and `side="right"` skips past them)."""
    return np.searchsorted(starts, offsets, side="right") - 1


def pack_source(token_ids: np.ndarray, pos_ids: np.ndarray, line_lengths: np.ndarray, seq_len: int,
                layout: str = "reference") -> PackedRows:
    """Rows of one source from its tokens (flat, in line order, no specials) and each line's token count."""
    token_ids, pos_ids, line_lengths = _check(token_ids, pos_ids, line_lengths, seq_len)
    if layout == "concatenated":
        return _pack_concatenated(token_ids, pos_ids, line_lengths, seq_len)
    if layout == "reference":
        return _pack_reference(token_ids, pos_ids, line_lengths, seq_len)
    raise DataError(f"unknown packing layout '{layout}'")


def _pack_concatenated(token_ids, pos_ids, line_lengths, seq_len: int) -> PackedRows:
    body = seq_len - 2
    n = len(token_ids) // body
    kept = n * body
    ids = np.empty((n, seq_len), np.int32)
    ids[:, 0] = BOS_ID
    ids[:, -1] = EOS_ID
    ids[:, 1:-1] = token_ids[:kept].reshape(n, body)
    pos = np.full((n, seq_len), POS_X, np.int8)
    pos[:, 1:-1] = pos_ids[:kept].reshape(n, body)
    line_starts = np.concatenate([[0], np.cumsum(line_lengths)[:-1]])
    line_idx = _line_of(line_starts, np.arange(n, dtype=np.int64) * body)
    positions = (line_idx / max(len(line_lengths), 1)).astype(np.float32)
    return PackedRows(ids, pos, positions, len(token_ids) - kept)


def _pack_reference(token_ids, pos_ids, line_lengths, seq_len: int,
                    group_lines: int = REFERENCE_GROUP_LINES) -> PackedRows:
    num_lines = len(line_lengths)
    framed = line_lengths + 2  # `<s> line </s>`
    starts = np.concatenate([[0], np.cumsum(framed)]).astype(np.int64)  # stream offset of each line (+ end)
    total = int(starts[-1])
    stream = np.empty(total, np.int32)
    stream_pos = np.full(total, POS_X, np.int8)
    if num_lines:
        stream[starts[:-1]] = BOS_ID
        stream[starts[1:] - 1] = EOS_ID
        line_of_token = np.repeat(np.arange(num_lines, dtype=np.int64), line_lengths)
        within = np.arange(len(token_ids), dtype=np.int64) - np.repeat(starts[:-1] - 2 * np.arange(num_lines),
                                                                       line_lengths)
        where = starts[line_of_token] + 1 + within
        stream[where] = token_ids
        stream_pos[where] = pos_ids
    # Groups of `group_lines` lines, each cut into whole rows.
    group_starts = starts[0:num_lines:group_lines] if num_lines else np.zeros(0, np.int64)
    group_ends = np.append(group_starts[1:], total)
    per_group = (group_ends - group_starts) // seq_len
    n = int(per_group.sum())
    row_starts = np.repeat(group_starts, per_group) + seq_len * (
        np.arange(n, dtype=np.int64) - np.repeat(np.cumsum(per_group) - per_group, per_group))
    take = row_starts[:, None] + np.arange(seq_len, dtype=np.int64)[None, :]
    positions = (_line_of(starts[:-1], row_starts) / max(num_lines, 1)).astype(np.float32)
    return PackedRows(stream[take].reshape(n, seq_len), stream_pos[take].reshape(n, seq_len), positions,
                      total - n * seq_len)
