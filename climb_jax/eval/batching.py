"""Which masked copies go into which batch: the pure (numpy) half of dev-set and BLiMP scoring.

The pseudo-log-likelihood of a sequence (Salazar et al., 2020) masks each non-special token in
turn and sums log p(token | rest); with word ids, scoring a token also masks the rest of its word
to its right (PLL-word-l2r, Kauf & Ivanova, 2023). Every masked copy is one row of a device batch.
This module decides the batches, so that one jitted function (eval/perplexity.py) sees only a few
fixed shapes however many sentences are scored:

* sequences are grouped by length into padded lengths (`buckets`);
* each bucket's copies run in full batches of `batch_size`; the copies left over move on to the
  next bucket (padded to its length) when that costs less than a partial batch now; a partial
  batch runs at the smallest of `batch_sizes` (batch_size, /2, /4, /8) that holds it.

So at most `len(buckets) * len(batch_sizes)` shapes are ever compiled. `MLMPlan` does the same for
the cheap dev MLM loss (a fixed mask per row, one pass per row). Nothing here touches JAX, so the
plans are testable on their own and the executor (eval/perplexity.py) only runs what it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from climb_jax.constants import EOS_ID, MASK_ID, NUM_SPECIAL, PAD_ID
from climb_jax.errors import DataError

# Padded lengths of masked copies. The cost of a copy is linear in its padded length, so short
# lengths (where BLiMP sentences lie: 6-40 tokens) are finely spaced (padding adds ~10% work
# there, against ~24% with powers of two); longer ones grow by ~1.5x to bound the number of
# compiled shapes (15 at most). Lengths above the model's limit are dropped.
DEFAULT_BUCKETS = (8, 12, 16, 20, 24, 32, 40, 48, 64, 96, 128, 192, 256, 384, 512)
# A partial batch runs at the smallest of batch_size, /2, /4, /8 that holds it.
TAIL_HALVINGS = 3


def scorable(ids: np.ndarray) -> np.ndarray:
    """Positions that PLL scores: every token that is not one of the special tokens (ids 0-4)."""
    return np.asarray(ids) >= NUM_SPECIAL


def truncation_index(ids: np.ndarray, max_len: int) -> np.ndarray:
    """Positions kept when a sequence is cut to `max_len`: the first ones, and a final `</s>`."""
    n = len(ids)
    if n <= max_len:
        return np.arange(n)
    if ids[-1] == EOS_ID:
        return np.concatenate([np.arange(max_len - 1), [n - 1]])
    return np.arange(max_len)


def truncate(ids: np.ndarray, max_len: int) -> np.ndarray:
    """The first `max_len` tokens, keeping a final `</s>` if the sequence had one."""
    ids = np.asarray(ids, dtype=np.int32)
    return ids if len(ids) <= max_len else ids[truncation_index(ids, max_len)]


def bucket_lengths(buckets: Sequence[int], max_len: int) -> tuple[int, ...]:
    """The padded lengths in use: those below the model's limit, and the limit itself."""
    return tuple(sorted({int(b) for b in buckets if 0 < b < max_len} | {int(max_len)}))


def tail_sizes(batch_size: int, shards: int = 1) -> tuple[int, ...]:
    """Batch sizes a bucket's last, partial batch may run at; each must split over `shards` devices."""
    sizes = {batch_size >> k for k in range(TAIL_HALVINGS + 1)}
    return tuple(sorted(s for s in sizes if s > 0 and s % shards == 0))


@dataclass(frozen=True)
class Batch:
    """One device call: the masked copies (sequence index, masked column) padded to `width`.

    Rows past `count` repeat the first copy to fill the batch; their results are dropped."""

    seq_ids: np.ndarray  # [size] int64
    cols: np.ndarray  # [size] int64
    count: int
    width: int

    @property
    def size(self) -> int:
        return len(self.seq_ids)


class PLLPlan:
    """The masked copies of a set of sequences and the batches that run them.

    Args:
      sequences: token ids, each `<s> … </s>`; cut to `max_len` (counted in `truncated`).
      word_ids: optional, same lengths, -1 for special tokens: switches to PLL-word-l2r.
      buckets: padded lengths (see `bucket_lengths`).
      batch_size: copies per full batch; `batch_sizes` the sizes a partial batch may use.
    """

    def __init__(self, sequences: Sequence[np.ndarray], word_ids: Sequence[np.ndarray] | None, *,
                 buckets: Sequence[int], batch_size: int, batch_sizes: Sequence[int], max_len: int):
        n = len(sequences)
        if word_ids is not None and len(word_ids) != n:
            raise ValueError(f"word_ids has {len(word_ids)} entries for {n} sequences")
        self.buckets = tuple(buckets)
        self.batch_size = int(batch_size)
        self.batch_sizes = tuple(batch_sizes)
        self.word_level = word_ids is not None
        seqs, wids, truncated = [], [], 0
        for i, s in enumerate(sequences):
            s = np.asarray(s, dtype=np.int32)
            keep = truncation_index(s, max_len)
            truncated += len(keep) < len(s)
            seqs.append(s[keep])
            if word_ids is not None:
                w = np.asarray(word_ids[i], dtype=np.int32)
                if len(w) != len(s):
                    raise ValueError(f"word_ids[{i}] has {len(w)} entries for a sequence of {len(s)} tokens")
                wids.append(w[keep])
        self.sequences = seqs
        self.truncated = truncated
        self.lengths = np.array([len(s) for s in seqs], dtype=np.int32)
        if n and self.lengths.min() == 0:
            raise DataError("cannot score an empty token sequence; every sequence needs at least <s> </s>.")
        # Where each sequence's per-position log-probabilities start in one flat array.
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.num_tokens = np.array([int(scorable(s).sum()) for s in seqs], dtype=np.int64)
        self._bucket_of = np.array([self.bucket_length(int(l)) for l in self.lengths], dtype=np.int32)
        self._local_of = np.zeros(n, dtype=np.int64)  # row of each sequence inside its bucket's matrix
        self._matrices: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        copies: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # bucket -> (sequence ids, positions)
        for b in self.buckets:
            members = np.nonzero(self._bucket_of == b)[0]
            if not len(members):
                continue
            self._local_of[members] = np.arange(len(members))
            rows = np.full((len(members), b), PAD_ID, dtype=np.int32)
            wrows = np.full((len(members), b), -1, dtype=np.int32)
            for j, i in enumerate(members):
                rows[j, : self.lengths[i]] = seqs[i]
                if word_ids is not None:
                    wrows[j, : self.lengths[i]] = wids[i]
            self._matrices[b] = (rows, wrows)
            local, cols = np.nonzero(scorable(rows))  # one masked copy per scorable token
            copies[b] = (members[local], cols)
        self.num_copies = int(sum(len(c[0]) for c in copies.values()))
        self.batches = self._schedule(copies)

    def bucket_length(self, length: int) -> int:
        for b in self.buckets:
            if length <= b:
                return b
        return self.buckets[-1]

    def _tail_size(self, count: int) -> int:
        return next(size for size in self.batch_sizes if size >= count)

    def _batch(self, seq_ids: np.ndarray, cols: np.ndarray, width: int) -> Batch:
        count = len(seq_ids)
        size = self._tail_size(count)
        if count < size:  # pad with copies of the first row (results dropped)
            seq_ids = np.concatenate([seq_ids, np.full(size - count, seq_ids[0])])
            cols = np.concatenate([cols, np.full(size - count, cols[0])])
        return Batch(seq_ids=seq_ids, cols=cols, count=count, width=width)

    def _schedule(self, copies: dict[int, tuple[np.ndarray, np.ndarray]]) -> list[Batch]:
        """Buckets shortest first; a bucket's leftovers run now or join the next bucket, whichever
        costs less padded work."""
        out: list[Batch] = []
        used = sorted(copies)
        carry_ids = carry_cols = np.zeros(0, dtype=np.int64)
        for k, b in enumerate(used):
            seq_ids = np.concatenate([carry_ids, copies[b][0]])
            cols = np.concatenate([carry_cols, copies[b][1]])
            full = len(seq_ids) - len(seq_ids) % self.batch_size
            for start in range(0, full, self.batch_size):
                out.append(self._batch(seq_ids[start:start + self.batch_size], cols[start:start + self.batch_size], b))
            carry_ids, carry_cols = seq_ids[full:], cols[full:]
            rest = len(carry_ids)
            if rest and (k + 1 == len(used) or rest * used[k + 1] >= self._tail_size(rest) * b):
                out.append(self._batch(carry_ids, carry_cols, b))  # cheaper than carrying them on
                carry_ids = carry_cols = np.zeros(0, dtype=np.int64)
        return out

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)

    @property
    def shapes(self) -> set[tuple[int, int]]:
        return {(b.size, b.width) for b in self.batches}

    def inputs(self, batch: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(masked ids [size, width], lengths [size], masked column [size], target ids [size])."""
        size, width, seq_ids, cols = batch.size, batch.width, batch.seq_ids, batch.cols
        ids = np.full((size, width), PAD_ID, dtype=np.int32)
        words = np.full((size, width), -1, dtype=np.int32)
        src = self._bucket_of[seq_ids]
        for b in np.unique(src):
            sel = src == b
            rows, wrows = self._matrices[int(b)]
            ids[sel, :b] = rows[self._local_of[seq_ids[sel]]]
            words[sel, :b] = wrows[self._local_of[seq_ids[sel]]]
        arange = np.arange(size)
        targets = ids[arange, cols]
        if self.word_level:  # the rest of the target's word, to its right
            same_word = (words == words[arange, cols][:, None]) & (words >= 0)
            ids[same_word & (np.arange(width)[None, :] > cols[:, None])] = MASK_ID
        ids[arange, cols] = MASK_ID
        return ids, self.lengths[seq_ids], cols.astype(np.int32), targets

    def output_index(self, batch: Batch) -> np.ndarray:
        """Where the batch's real rows go in the flat per-position array."""
        return self.offsets[batch.seq_ids[: batch.count]] + batch.cols[: batch.count]

    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        """Per-sequence log-probabilities (0 at special positions) from the flat array."""
        return [flat[self.offsets[i]:self.offsets[i + 1]] for i in range(len(self.sequences))]


# -------------------------------------------------------------------------------------------
# The dev MLM loss: one fixed mask per row.


def mlm_masks(input_ids: np.ndarray, *, mask_probability: float, seed: int) -> np.ndarray:
    """Which positions to mask: each non-special token with `mask_probability`, at least one per row.

    Depends only on the seed and the rows, so the same dev rows get the same masks in every
    evaluation of a run and across runs.
    """
    ids = np.asarray(input_ids)
    rng = np.random.default_rng(seed)
    chosen = (rng.random(ids.shape) < mask_probability) & scorable(ids)
    for r in np.nonzero(~chosen.any(axis=1) & scorable(ids).any(axis=1))[0]:
        candidates = np.nonzero(scorable(ids[r]))[0]
        chosen[r, candidates[rng.integers(len(candidates))]] = True
    return chosen


class MLMPlan:
    """Masked rows, target slots and batches for the dev MLM loss.

    Every chosen token becomes `<mask>`; the K target slots of a row (K = the largest count of
    chosen tokens, rounded up to a multiple of 8, so one compiled shape serves every evaluation)
    hold its masked positions with weight 1 and padding with weight 0. The last batch is filled
    with weight-0 copies of the first row.
    """

    def __init__(self, input_ids: np.ndarray, *, mask_probability: float, seed: int, batch_size: int):
        ids = np.ascontiguousarray(input_ids, dtype=np.int32)
        chosen = mlm_masks(ids, mask_probability=mask_probability, seed=seed)
        counts = chosen.sum(axis=1)
        n = len(ids)
        k = int(-(-max(int(counts.max()), 1) // 8) * 8)
        positions = np.zeros((n, k), dtype=np.int32)
        weights = np.zeros((n, k), dtype=np.float32)
        for r in range(n):
            cols = np.nonzero(chosen[r])[0]
            positions[r, : len(cols)] = cols
            weights[r, : len(cols)] = 1.0
        self.batch_size = int(batch_size)
        self.num_sequences = n
        self.num_masked = int(counts.sum())
        self._parts = [np.where(chosen, MASK_ID, ids).astype(np.int32), positions,
                       np.take_along_axis(ids, positions, axis=1), weights]

    def __len__(self) -> int:
        return -(-self.num_sequences // self.batch_size)

    def __iter__(self) -> Iterator[list[np.ndarray]]:
        """(masked ids, target positions, target ids, weights), `batch_size` rows each."""
        for start in range(0, self.num_sequences, self.batch_size):
            parts = [p[start:start + self.batch_size] for p in self._parts]
            fill = self.batch_size - len(parts[0])
            if fill:
                parts = [np.concatenate([p, np.repeat(p[:1], fill, axis=0)]) for p in parts]
                parts[3][-fill:] = 0.0
            yield parts
