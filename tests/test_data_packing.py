"""Packing a source's token stream into rows `<s> chunk </s>`."""

from __future__ import annotations

import numpy as np
import pytest

from climb_jax.constants import BOS_ID, EOS_ID, POS_X
from climb_jax.data.packing import pack_source


def test_every_token_but_the_final_partial_chunk_is_kept_in_order():
    rng = np.random.default_rng(0)
    line_lengths = rng.integers(0, 30, size=200)
    n = int(line_lengths.sum())
    ids = rng.integers(5, 1000, size=n).astype(np.int32)
    pos = rng.integers(0, 11, size=n).astype(np.int8)
    seq_len = 16
    rows = pack_source(ids, pos, line_lengths, seq_len)
    body = seq_len - 2
    assert len(rows) == n // body and rows.dropped_tokens == n % body
    assert rows.input_ids.dtype == np.int32 and rows.pos_ids.dtype == np.int8 and rows.positions.dtype == np.float32
    assert np.all(rows.input_ids[:, 0] == BOS_ID) and np.all(rows.input_ids[:, -1] == EOS_ID)
    assert np.all(rows.pos_ids[:, [0, -1]] == POS_X)
    np.testing.assert_array_equal(rows.input_ids[:, 1:-1].ravel(), ids[: len(rows) * body])
    np.testing.assert_array_equal(rows.pos_ids[:, 1:-1].ravel(), pos[: len(rows) * body])
    # Position: the line of the row's first token, over the number of lines (reference loop).
    line_of_token = np.repeat(np.arange(len(line_lengths)), line_lengths)
    expected = [line_of_token[r * body] / len(line_lengths) for r in range(len(rows))]
    np.testing.assert_allclose(rows.positions, expected, rtol=1e-6)
    assert np.all(np.diff(rows.positions) >= 0) and 0 <= rows.positions.min() and rows.positions.max() < 1


def test_small_example_by_hand():
    # Lines of 3, 0, 4 and 2 tokens; rows of 2 + 2 tokens.
    rows = pack_source(np.arange(10, 19), np.arange(9, dtype=np.int8), np.array([3, 0, 4, 2]), 4)
    assert rows.input_ids.tolist() == [[0, 10, 11, 2], [0, 12, 13, 2], [0, 14, 15, 2], [0, 16, 17, 2]]
    assert rows.pos_ids[:, 1:-1].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert rows.dropped_tokens == 1
    # First tokens 10, 12, 14, 16 sit on lines 0, 0 (token 12 is line 0's last), 2 (line 1 is empty), 2.
    assert rows.positions.tolist() == [0.0, 0.0, 0.5, 0.5]


def test_too_short_source_gives_no_rows():
    rows = pack_source(np.arange(5, 10), np.zeros(5, np.int8), np.array([5]), 8)
    assert len(rows) == 0 and rows.input_ids.shape == (0, 8) and rows.dropped_tokens == 5
    rows = pack_source(np.zeros(0, np.int32), np.zeros(0, np.int8), np.zeros(0, np.int64), 8)
    assert len(rows) == 0 and rows.positions.shape == (0,)


def test_inconsistent_inputs_are_rejected():
    with pytest.raises(ValueError, match="line lengths sum to 4"):
        pack_source(np.arange(5), np.zeros(5, np.int8), np.array([4]), 8)
    with pytest.raises(ValueError, match="must be equal"):
        pack_source(np.arange(5), np.zeros(4, np.int8), np.array([5]), 8)
