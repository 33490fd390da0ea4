"""Which training rows make up each step's batch: a pure function of (seed, step, scores version).

Because a batch depends on nothing but those three values, a run that is killed and resumed draws
exactly the batches of one that was not, with no iterator position to save; every process computes the
same global batch and takes its own contiguous slice, so process shares are disjoint by construction.

Without a data curriculum the sampler shuffles epoch by epoch without replacement (epoch e is a
permutation seeded by (seed, e)). With difficulty scores it follows CLIMB's data curriculum: at step t
only rows whose score is at most the `pace(t)`-th percentile of all scores may be drawn (ties included,
as the reference's `np.percentile` threshold does), and the batch is drawn from that set uniformly or
with probability proportional to the score (the reference's weighted mode: among allowed rows, harder
rows are drawn more often).

The sampler is the only owner of the data pace: `pace(step)` is the pacing function's value and
`fraction(step)` the fraction of the training rows a batch at `step` may actually be drawn from, which
is larger whenever ties enter whole (with `source_order`, a whole tier of equal score enters at once)
or the allowed set is widened to one batch. Both are logged as the sampler computes them.

The reference recomputes the percentile and a multinomial over all N scores for every batch. Here the
scores are sorted once (again only after a re-scoring), the percentile is read from the sorted scores
in O(1), the allowed set is a prefix of the sorted order (found by binary search), and a weighted draw
is a binary search in precomputed cumulative sums: O(batch * log N) per batch, whatever the corpus
size. Difference from the reference: rows are drawn with replacement inside a batch (the reference
draws without), which is indistinguishable once the allowed set is much larger than a batch.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

from climb_jax.curriculum import pacing as pacing_lib
from climb_jax.errors import CheckpointError, ConfigError, DataError

_EPOCH_CACHE = 2  # permutations kept: the current epoch and the one a batch may spill into


def _digest(scores: np.ndarray | None) -> str | None:
    if scores is None:
        return None
    return hashlib.blake2b(np.ascontiguousarray(scores, np.float32).tobytes(), digest_size=16).hexdigest()


class BatchSampler:
    """Row indices of each step's batch for one process (see the module docstring)."""

    def __init__(self, num_examples: int, global_batch: int, seed: int, *, process_index: int = 0,
                 process_count: int = 1, scores: np.ndarray | None = None,
                 pacing: pacing_lib.PacingParams | None = None, total_steps: int = 0, uniform: bool = True):
        if num_examples <= 0:
            raise DataError("the training split is empty: there is nothing to sample; check data.corpus.")
        if global_batch <= 0:
            raise ConfigError(f"trainer.batch_size={global_batch} must be positive.")
        if process_count <= 0 or not 0 <= process_index < process_count:
            raise ConfigError(f"process_index={process_index} must lie in [0, process_count={process_count}).")
        if global_batch % process_count:
            raise ConfigError(
                f"trainer.batch_size={global_batch} is not divisible by the {process_count} processes; "
                f"choose a multiple of {process_count}."
            )
        if pacing is not None:
            pacing.validate()
            if total_steps <= 0:
                raise ConfigError("a data curriculum needs trainer.total_steps > 0 to pace its difficulty.")
        self.num_examples = int(num_examples)
        self.global_batch = int(global_batch)
        self.seed = int(seed)
        self.process_index = int(process_index)
        self.process_count = int(process_count)
        self.local_batch = self.global_batch // self.process_count
        self.pacing = pacing
        self.total_steps = int(total_steps)
        self.uniform = bool(uniform)
        self._epochs: dict[int, np.ndarray] = {}
        # A host-driven pace (curriculum.source=adaptive) replaces the pacing function when set: a
        # function of the step that changes only between the pipeline's segments.
        self.pace_override = None
        self.scores: np.ndarray | None = None
        self.version = 0
        self._order = self._sorted = self._cumsum = None
        if scores is not None:
            self.set_scores(scores, version=0)

    # -- scores ------------------------------------------------------------------------------
    def set_scores(self, scores: np.ndarray | None, version: int) -> None:
        """Installs new difficulty scores (e.g. after a self-perplexity re-scoring) and sorts them once.

        `version` enters the random stream of every later batch; it must grow with every re-scoring.
        `None` switches the curriculum off (epoch shuffling).
        """
        self.version = int(version)
        if scores is None:
            self.scores = self._order = self._sorted = self._cumsum = None
            return
        s = np.asarray(scores, np.float32).reshape(-1)
        if s.shape[0] != self.num_examples:
            raise DataError(f"got {s.shape[0]} difficulty scores for {self.num_examples} training sequences.")
        if not np.all(np.isfinite(s)):
            raise DataError(f"{int(np.sum(~np.isfinite(s)))} difficulty scores are not finite; "
                            "every training sequence needs a finite score.")
        if not self.uniform and s.min() < 0:
            raise DataError("weighted sampling (data_curriculum.uniform_sampling=False) draws rows with probability "
                            f"proportional to their score, but the lowest score is {float(s.min())} < 0; "
                            "use uniform sampling for this scorer.")
        self.scores = s.copy()
        self._order = np.argsort(self.scores, kind="stable").astype(np.int64)
        self._sorted = self.scores[self._order].astype(np.float64)
        self._cumsum = None if self.uniform else np.cumsum(self._sorted)

    @property
    def curriculum(self) -> bool:
        return self.scores is not None

    # -- the schedule ------------------------------------------------------------------------
    def pace(self, step: int) -> float:
        """The pacing value at `step` (1.0 without a curriculum or pacing function)."""
        if not self.curriculum or (self.pacing is None and self.pace_override is None):
            return 1.0
        value = (self.pace_override(int(step)) if self.pace_override is not None
                 else pacing_lib.pace(self.pacing, int(step), self.total_steps))
        return float(np.clip(value, 0.0, 1.0))

    def allowed_count(self, step: int) -> int:
        """How many of the easiest rows may be drawn at `step` (at least one batch worth, at most N)."""
        n = self.num_examples
        if not self.curriculum:
            return n
        p = self.pace(step)
        if p >= 1.0:
            return n
        # np.percentile's linear interpolation, read from the sorted scores.
        position = p * (n - 1)
        lo = int(math.floor(position))
        hi = min(lo + 1, n - 1)
        threshold = self._sorted[lo] + (self._sorted[hi] - self._sorted[lo]) * (position - lo)
        count = int(np.searchsorted(self._sorted, threshold, side="right"))
        return int(min(n, max(count, lo + 1, min(self.global_batch, n))))

    def threshold(self, step: int) -> float:
        """The highest score among the rows allowed at `step` (inf without a curriculum): every row the
        sampler draws at `step` scores at most this, and the train step gives no loss weight to a row
        above it."""
        if not self.curriculum:
            return math.inf
        return float(self._sorted[self.allowed_count(step) - 1])

    def row_scores(self, rows: np.ndarray) -> np.ndarray:
        """float32 scores of `rows` (0 without a curriculum)."""
        if not self.curriculum:
            return np.zeros(len(rows), np.float32)
        return self.scores[rows]

    def fraction(self, step: int) -> float:
        """The fraction of the training rows that may be drawn at `step` (`data_fraction` in the log):
        every row of a tier of equal scores counts once the tier's first row is allowed."""
        return self.allowed_count(step) / self.num_examples

    # -- batches -----------------------------------------------------------------------------
    def _epoch(self, epoch: int) -> np.ndarray:
        perm = self._epochs.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples).astype(np.int64)
            self._epochs[epoch] = perm
            while len(self._epochs) > _EPOCH_CACHE:
                self._epochs.pop(min(self._epochs))
        return perm

    def _local(self) -> slice:
        return slice(self.process_index * self.local_batch, (self.process_index + 1) * self.local_batch)

    def indices(self, step: int) -> np.ndarray:
        """This process's rows of the global batch for `step` (int64 [global_batch / process_count])."""
        step = int(step)
        if step < 0:
            raise ConfigError(f"step must be >= 0, got {step}")
        local = self._local()
        if not self.curriculum:
            positions = step * self.global_batch + np.arange(local.start, local.stop, dtype=np.int64)
            epochs, offsets = np.divmod(positions, self.num_examples)
            out = np.empty(positions.shape, np.int64)
            for e in np.unique(epochs):
                sel = epochs == e
                out[sel] = self._epoch(int(e))[offsets[sel]]
            return out
        count = self.allowed_count(step)
        rng = np.random.default_rng([self.seed, step, self.version, 1])
        u = rng.random(self.global_batch)[local]  # the whole global batch's draws: shares are slices of it
        if self.uniform:
            ranks = np.minimum((u * count).astype(np.int64), count - 1)
        else:
            total = self._cumsum[count - 1]
            if total > 0:
                ranks = np.minimum(np.searchsorted(self._cumsum, u * total, side="right"), count - 1)
            else:  # every allowed row has score 0: nothing to weight by
                ranks = np.minimum((u * count).astype(np.int64), count - 1)
        return self._order[ranks]

    # -- checkpointing -----------------------------------------------------------------------
    def ordering_id(self) -> str:
        """Which difficulty ordering batches are drawn from: '<version>:<digest of the scores>' ('epochs'
        without a curriculum). Every process of a run must hold the same one (`data.hosts`)."""
        if not self.curriculum:
            return "epochs"
        return f"{self.version}:{_digest(self.scores)[:24]}"

    def state_dict(self) -> dict[str, Any]:
        """{'meta': JSON-able settings and scores version, 'scores': float32 [N] or None}.

        The batches need no RNG state or position: they are recomputed from (seed, step, version).
        """
        return {
            "meta": {
                "num_examples": self.num_examples,
                "global_batch": self.global_batch,
                "seed": self.seed,
                "uniform": self.uniform,
                "version": self.version,
                "curriculum": self.curriculum,
                "scores_digest": _digest(self.scores),
            },
            "scores": None if self.scores is None else self.scores.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the scores version (and the scores, when saved). Without saved scores the scores given
        at construction are kept, and must be the ones the checkpointed run used."""
        meta = dict(state.get("meta") or {})
        scores = state.get("scores")
        if not meta and scores is None:
            return
        saved_n = meta.get("num_examples", self.num_examples)
        if saved_n != self.num_examples:
            raise CheckpointError(
                f"the checkpoint was written for {saved_n} training sequences but the data has "
                f"{self.num_examples}; resume with the same data settings or start a new workdir."
            )
        for key in ("global_batch", "seed"):
            if key in meta and meta[key] != getattr(self, key):
                raise CheckpointError(
                    f"the checkpoint's sampler used {key}={meta[key]} but this run has {getattr(self, key)}; "
                    "resume with the same trainer.batch_size and seed, or start a new workdir."
                )
        version = int(meta.get("version", self.version))
        if scores is not None:
            self.set_scores(np.asarray(scores, np.float32), version=version)
            return
        digest = meta.get("scores_digest")
        if digest is not None and digest != _digest(self.scores):
            raise CheckpointError(
                "the difficulty scores of this run differ from those of the checkpointed run (different data "
                "or data_curriculum settings), so resuming would not draw the same batches; restore the "
                "original settings or start a new workdir."
            )
        self.version = version
