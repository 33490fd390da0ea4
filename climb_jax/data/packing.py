"""Pack a source's token stream into fixed-length training rows `<s> chunk </s>`.

Consecutive lines of one source are concatenated (no separators) and cut into chunks of
`seq_len - 2` tokens; the last, partial chunk of each source is dropped so that every row is full
and no padding is ever needed. Rows never mix sources.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from climb_jax.constants import BOS_ID, EOS_ID, POS_X


@dataclasses.dataclass
class PackedRows:
    """The rows of one source (or several, concatenated)."""

    input_ids: np.ndarray  # [N, seq_len] int32
    pos_ids: np.ndarray  # [N, seq_len] int8
    positions: np.ndarray  # [N] float32: line index of the row's first token / lines in the source
    dropped_tokens: int  # tokens of the final partial chunk

    def __len__(self) -> int:
        return len(self.input_ids)


def pack_source(token_ids: np.ndarray, pos_ids: np.ndarray, line_lengths: np.ndarray, seq_len: int) -> PackedRows:
    """Rows of one source from its tokens (flat, in line order) and the number of tokens of each line."""
    if seq_len < 3:
        raise ValueError(f"seq_len must be at least 3, got {seq_len}")
    token_ids = np.asarray(token_ids)
    pos_ids = np.asarray(pos_ids)
    line_lengths = np.asarray(line_lengths, np.int64)
    if token_ids.shape != pos_ids.shape or token_ids.ndim != 1:
        raise ValueError(f"token_ids {token_ids.shape} and pos_ids {pos_ids.shape} must be equal 1-d shapes")
    if int(line_lengths.sum()) != len(token_ids):
        raise ValueError(f"line lengths sum to {int(line_lengths.sum())}, but there are {len(token_ids)} tokens")
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
    first = np.arange(n, dtype=np.int64) * body
    # The line holding each row's first token: the last line starting at or before it (empty lines
    # share their start with the next line, and `side="right"` skips past them).
    line_idx = np.searchsorted(line_starts, first, side="right") - 1
    positions = (line_idx / max(len(line_lengths), 1)).astype(np.float32)
    return PackedRows(ids, pos, positions, len(token_ids) - kept)
