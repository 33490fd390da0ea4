"""Packing a source's lines into rows: the reference's `<s> line </s>` stream, and `<s> chunk </s>` rows."""

from __future__ import annotations

import numpy as np
import pytest

from climb_jax.constants import BOS_ID, EOS_ID, POS_X
from climb_jax.data.packing import REFERENCE_GROUP_LINES, pack_source
from climb_jax.errors import DataError


def test_every_token_but_the_final_partial_chunk_is_kept_in_order():
    rng = np.random.default_rng(0)
    line_lengths = rng.integers(0, 30, size=200)
    n = int(line_lengths.sum())
    ids = rng.integers(5, 1000, size=n).astype(np.int32)
    pos = rng.integers(0, 11, size=n).astype(np.int8)
    seq_len = 16
    rows = pack_source(ids, pos, line_lengths, seq_len, "concatenated")
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
    rows = pack_source(np.arange(10, 19), np.arange(9, dtype=np.int8), np.array([3, 0, 4, 2]), 4, "concatenated")
    assert rows.input_ids.tolist() == [[0, 10, 11, 2], [0, 12, 13, 2], [0, 14, 15, 2], [0, 16, 17, 2]]
    assert rows.pos_ids[:, 1:-1].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert rows.dropped_tokens == 1
    # First tokens 10, 12, 14, 16 sit on lines 0, 0 (token 12 is line 0's last), 2 (line 1 is empty), 2.
    assert rows.positions.tolist() == [0.0, 0.0, 0.5, 0.5]


@pytest.mark.parametrize("layout,dropped", [("concatenated", 5), ("reference", 7)])
def test_too_short_source_gives_no_rows(layout, dropped):
    rows = pack_source(np.arange(5, 10), np.zeros(5, np.int8), np.array([5]), 8, layout)
    assert len(rows) == 0 and rows.input_ids.shape == (0, 8) and rows.dropped_tokens == dropped
    rows = pack_source(np.zeros(0, np.int32), np.zeros(0, np.int8), np.zeros(0, np.int64), 8, layout)
    assert len(rows) == 0 and rows.positions.shape == (0,)


def test_reference_layout_by_hand():
    """Every line framed `<s> line </s>`, one stream cut into rows of seq_len, the partial row dropped."""
    # Lines of 3, 1, 2 and 1 tokens: <s> 10 11 12 </s> <s> 13 </s> <s> 14 15 </s> <s> 16 </s> = 15 tokens.
    rows = pack_source(np.arange(10, 17), np.arange(1, 8, dtype=np.int8), np.array([3, 1, 2, 1]), 4)
    assert rows.input_ids.tolist() == [[0, 10, 11, 12], [2, 0, 13, 2], [0, 14, 15, 2]]
    x = POS_X
    assert rows.pos_ids.tolist() == [[x, 1, 2, 3], [x, x, 4, x], [x, 5, 6, x]]
    assert rows.dropped_tokens == 3  # <s> 16 </s>
    # The line holding each row's first token: 0, 0 (its </s>), 2.
    np.testing.assert_allclose(rows.positions, [0, 0, 2 / 4])


def test_reference_rows_hold_every_line_boundary():
    rng = np.random.default_rng(3)
    line_lengths = rng.integers(1, 9, size=300)
    n = int(line_lengths.sum())
    ids = rng.integers(5, 1000, size=n).astype(np.int32)
    rows = pack_source(ids, np.zeros(n, np.int8), line_lengths, 32)
    stream = np.concatenate([[BOS_ID, *ids[s - l:s], EOS_ID] for s, l in zip(np.cumsum(line_lengths), line_lengths)])
    assert len(rows) == len(stream) // 32 and rows.dropped_tokens == len(stream) % 32
    np.testing.assert_array_equal(rows.input_ids.ravel(), stream[: len(rows) * 32])
    flat = rows.input_ids.ravel()
    assert (flat == BOS_ID).sum() == (flat == EOS_ID).sum() + (flat[-1] != EOS_ID) - (flat[0] != BOS_ID)


def test_reference_packs_each_group_of_lines_separately():
    """The reference packs each 1,000-line batch of its preprocessing map on its own: a group's
    partial last row is dropped and the next group starts a new row."""
    lines = 2 * REFERENCE_GROUP_LINES + 10
    line_lengths = np.full(lines, 3)  # 5 tokens per framed line
    ids = np.arange(5, 5 + 3 * lines).astype(np.int32)
    rows = pack_source(ids, np.zeros(len(ids), np.int8), line_lengths, 12)
    per_group = [REFERENCE_GROUP_LINES * 5 // 12] * 2 + [10 * 5 // 12]
    assert len(rows) == sum(per_group)
    second = rows.input_ids[per_group[0]]
    assert second[0] == BOS_ID and second[1] == 5 + 3 * REFERENCE_GROUP_LINES  # the group's first line
    assert rows.positions[per_group[0]] == REFERENCE_GROUP_LINES / lines


def test_inconsistent_inputs_are_rejected():
    with pytest.raises(DataError, match="line lengths sum to 4"):
        pack_source(np.arange(5), np.zeros(5, np.int8), np.array([4]), 8)
    with pytest.raises(DataError, match="must be equal"):
        pack_source(np.arange(5), np.zeros(4, np.int8), np.array([5]), 8)
