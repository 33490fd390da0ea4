"""Pseudo-log-likelihood scoring of token sequences, pseudo-perplexity and a cheap dev MLM loss.

`PLLScorer` is the engine behind BLiMP scoring and pseudo-perplexity. The pseudo-log-likelihood
of a sequence (Salazar et al., 2020) masks each non-special token in turn and sums
log p(token | rest). All masked copies are built on the host with numpy, grouped by length into
a fixed set of padded lengths (`DEFAULT_BUCKETS`) and run in batches of a fixed size, so one
jitted function compiles at most once per bucket however many sentences are scored. That
function projects only the masked position to the vocabulary (`target_positions`), because the
vocabulary head is the largest matmul of a small model and every other position is discarded.

With `word_ids` the scorer computes PLL-word-l2r (Kauf & Ivanova, 2023): scoring a token also
masks the tokens of the same word to its right, so a multi-token word cannot be completed from
its own later pieces.
"""

from __future__ import annotations

import collections
import functools
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from climb_jax.constants import EOS_ID, MASK_ID, NUM_SPECIAL, PAD_ID
from climb_jax.errors import ConfigError, DataError
from climb_jax.models.roberta import RobertaConfig, RobertaForMaskedLM

# Padded lengths of masked copies. The cost of a copy is linear in its padded length, so short
# lengths (where BLiMP sentences lie: 6-40 tokens) are finely spaced (padding adds ~10% work
# there, against ~24% with powers of two); longer ones grow by ~1.5x to bound the number of
# compiled shapes (15 at most). Lengths above the model's limit are dropped.
DEFAULT_BUCKETS = (8, 12, 16, 20, 24, 32, 40, 48, 64, 96, 128, 192, 256, 384, 512)
# Batches dispatched ahead of the one being read back: host work overlaps device work while
# memory for pending inputs stays bounded.
_MAX_IN_FLIGHT = 8
# A partial batch runs at the smallest of batch_size, /2, /4, /8 that holds it.
_TAIL_HALVINGS = 3
# Mesh axes a batch is split over when present (the training mesh's batch axes).
_BATCH_AXES = ("data", "fsdp")


def mlm_params(params: Mapping[str, Any]) -> dict:
    """The encoder and MLM head of a full-model tree (objective units add `pos_*` heads)."""
    missing = [k for k in ("encoder", "mlm_head") if k not in params]
    if missing:
        raise ConfigError(f"the parameter tree has no {', '.join(missing)}; pass RobertaForMaskedLM "
                          f"parameters (top-level keys found: {', '.join(map(str, params))}).")
    return {"encoder": params["encoder"], "mlm_head": params["mlm_head"]}


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


@dataclass
class PLLResult:
    """Per-sequence sums of log p (natural log) and the number of tokens scored."""

    scores: np.ndarray  # [N] float64
    num_tokens: np.ndarray  # [N] int64
    truncated: int  # sequences cut to the model's maximum length
    num_copies: int  # masked copies run (excluding batch padding)


class _Mesh:
    """Placement of batches and parameters on an optional mesh."""

    def __init__(self, mesh: Mesh | None, batch_size: int):
        self.mesh = mesh
        self.shards = 1
        if mesh is None:
            return
        axes = tuple(a for a in _BATCH_AXES if a in mesh.shape)
        if not axes:
            raise ConfigError(f"the mesh has no 'data' axis (axes: {', '.join(mesh.axis_names)}); "
                              "build it with climb_jax.parallel.mesh.create_mesh.")
        shards = math.prod(mesh.shape[a] for a in axes)
        if batch_size % shards:
            raise ConfigError(f"eval.batch_size={batch_size} is not divisible by the {shards} devices of the "
                              f"mesh's batch axes; use a multiple of {shards}.")
        self.shards = shards
        self.batch = NamedSharding(mesh, P(axes))
        self.replicated = NamedSharding(mesh, P())

    def put_batch(self, x: np.ndarray):
        if self.mesh is None:
            return x
        # Every process holds the whole (deterministic) batch; each device takes its slice.
        return jax.make_array_from_callback(x.shape, self.batch, lambda index: x[index])

    def put_params(self, params):
        if self.mesh is None:
            # Host (numpy) parameters would otherwise be copied to the device at every call.
            return jax.device_put(params)

        def place(leaf):
            sharding = getattr(leaf, "sharding", None)
            if isinstance(sharding, NamedSharding) and sharding.mesh == self.mesh:
                return leaf  # already on this mesh (replicated or split): keep it
            return jax.device_put(np.asarray(leaf), self.replicated)

        return jax.tree_util.tree_map(place, params)


@functools.lru_cache(maxsize=16)
def _token_logprob_fn(model_config: RobertaConfig, mesh: Mesh | None):
    """One jitted scoring function per (model shape, mesh), shared by every scorer: a training
    run that builds new evaluators at each evaluation reuses the shapes compiled before."""
    model = RobertaForMaskedLM(model_config)

    def pll_token_logprob(params, ids, lengths, positions, targets):
        """log p(targets | ids) at `positions`, one per row; padding keys are masked out."""
        attention_mask = jnp.arange(ids.shape[1])[None, :] < lengths[:, None]
        logits = model.apply({"params": params}, ids, attention_mask, deterministic=True,
                             target_positions=positions[:, None])[:, 0].astype(jnp.float32)
        target_logit = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
        return target_logit - jax.nn.logsumexp(logits, axis=-1)

    out_sharding = None if mesh is None else NamedSharding(mesh, P())
    return jax.jit(pll_token_logprob, out_shardings=out_sharding)


class PLLScorer:
    """Pseudo-log-likelihoods of token sequences with a bounded number of compiled shapes.

    Args:
      model_config: the encoder's shape; sequences longer than `max_position_embeddings` are
        truncated (counted in `PLLResult.truncated`).
      batch_size: masked copies per device call; a bucket's last, partial batch runs at
        batch_size/2, /4 or /8 when that holds it (see `token_logprobs`).
      buckets: padded lengths; the model's maximum length is always added so everything fits.
      mesh: when given, each batch is split over the mesh's 'data' (and 'fsdp') axes and the
        parameters are replicated unless they already live on the mesh.
    """

    def __init__(self, model_config: RobertaConfig, *, batch_size: int = 256,
                 buckets: Sequence[int] = DEFAULT_BUCKETS, mesh: Mesh | None = None):
        if batch_size <= 0:
            raise ConfigError(f"eval.batch_size must be positive, got {batch_size}.")
        self.model_config = model_config
        self.batch_size = int(batch_size)
        self.max_len = int(model_config.max_position_embeddings)
        self.buckets = tuple(sorted({int(b) for b in buckets if 0 < b < self.max_len} | {self.max_len}))
        self._placement = _Mesh(mesh, self.batch_size)
        # Smaller batch sizes for a bucket's last, partial batch (at most 4 sizes per bucket), so a
        # few leftover copies do not cost a whole batch. Each must still split over the mesh.
        shards = self._placement.shards
        self.batch_sizes = tuple(sorted({self.batch_size >> k for k in range(_TAIL_HALVINGS + 1)
                                         if (self.batch_size >> k) > 0 and (self.batch_size >> k) % shards == 0}))
        self.shapes_run: set[tuple[int, int]] = set()
        self._fn = _token_logprob_fn(model_config, mesh)

    # ---------------------------------------------------------------------------------------
    def bucket_length(self, length: int) -> int:
        for b in self.buckets:
            if length <= b:
                return b
        return self.max_len

    def token_logprobs(self, params, sequences: Sequence[np.ndarray],
                       word_ids: Sequence[np.ndarray] | None = None) -> tuple[list[np.ndarray], PLLResult]:
        """Per-position log p (0 at special positions) for every sequence, and the summary.

        `word_ids` (same lengths as `sequences`, -1 for special tokens) switches to PLL-word-l2r.

        Copies are run bucket by bucket, shortest first. The copies left over after the last
        full batch of a bucket move on to the next bucket (padded to its length) when that costs
        less than a partial batch now; a partial batch runs at the smallest of `batch_sizes`
        that holds it. The compiled shapes are at most `len(buckets) * len(batch_sizes)`.
        """
        n = len(sequences)
        if word_ids is not None and len(word_ids) != n:
            raise ValueError(f"word_ids has {len(word_ids)} entries for {n} sequences")
        seqs, wids, truncated = [], [], 0
        for i, s in enumerate(sequences):
            s = np.asarray(s, dtype=np.int32)
            keep = truncation_index(s, self.max_len)
            truncated += len(keep) < len(s)
            seqs.append(s[keep])
            if word_ids is not None:
                w = np.asarray(word_ids[i], dtype=np.int32)
                if len(w) != len(s):
                    raise ValueError(f"word_ids[{i}] has {len(w)} entries for a sequence of {len(s)} tokens")
                wids.append(w[keep])
        lengths = np.array([len(s) for s in seqs], dtype=np.int32)
        if n and lengths.min() == 0:
            raise DataError("cannot score an empty token sequence; every sequence needs at least <s> </s>.")
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.zeros(int(offsets[-1]), dtype=np.float64)  # log p of every position, sequence after sequence
        bucket_of = np.array([self.bucket_length(int(l)) for l in lengths], dtype=np.int32)
        local_of = np.zeros(n, dtype=np.int64)  # row of each sequence inside its bucket's matrix
        matrices: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        copies: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # bucket -> (sequence ids, positions)
        for b in self.buckets:
            members = np.nonzero(bucket_of == b)[0]
            if not len(members):
                continue
            local_of[members] = np.arange(len(members))
            rows = np.full((len(members), b), PAD_ID, dtype=np.int32)
            wrows = np.full((len(members), b), -1, dtype=np.int32)
            for j, i in enumerate(members):
                rows[j, : lengths[i]] = seqs[i]
                if word_ids is not None:
                    wrows[j, : lengths[i]] = wids[i]
            matrices[b] = (rows, wrows)
            local, cols = np.nonzero(scorable(rows))  # one masked copy per scorable token
            copies[b] = (members[local], cols)
        params = self._placement.put_params(mlm_params(params))
        pending: collections.deque = collections.deque()

        def drain(limit: int) -> None:
            while len(pending) > limit:
                out, index = pending.popleft()
                flat[index] = np.asarray(out)[: len(index)]

        def tail_size(count: int) -> int:
            return next(size for size in self.batch_sizes if size >= count)

        def run(seq_ids: np.ndarray, cols: np.ndarray, width: int) -> None:
            count = len(seq_ids)
            size = tail_size(count)
            if count < size:  # pad with copies of the first row (results dropped)
                seq_ids = np.concatenate([seq_ids, np.full(size - count, seq_ids[0])])
                cols = np.concatenate([cols, np.full(size - count, cols[0])])
            ids = np.full((size, width), PAD_ID, dtype=np.int32)
            words = np.full((size, width), -1, dtype=np.int32)
            src = bucket_of[seq_ids]
            for b in np.unique(src):
                sel = src == b
                rows, wrows = matrices[int(b)]
                ids[sel, :b] = rows[local_of[seq_ids[sel]]]
                words[sel, :b] = wrows[local_of[seq_ids[sel]]]
            arange = np.arange(size)
            targets = ids[arange, cols]
            if word_ids is not None:  # the rest of the target's word, to its right
                same_word = (words == words[arange, cols][:, None]) & (words >= 0)
                ids[same_word & (np.arange(width)[None, :] > cols[:, None])] = MASK_ID
            ids[arange, cols] = MASK_ID
            put = self._placement.put_batch
            out = self._fn(params, put(ids), put(lengths[seq_ids]), put(cols.astype(np.int32)), put(targets))
            self.shapes_run.add((size, width))
            pending.append((out, offsets[seq_ids[:count]] + cols[:count]))
            drain(_MAX_IN_FLIGHT)

        used = sorted(copies)
        carry_ids = carry_cols = np.zeros(0, dtype=np.int64)
        for k, b in enumerate(used):
            seq_ids = np.concatenate([carry_ids, copies[b][0]])
            cols = np.concatenate([carry_cols, copies[b][1]])
            full = len(seq_ids) - len(seq_ids) % self.batch_size
            for start in range(0, full, self.batch_size):
                run(seq_ids[start:start + self.batch_size], cols[start:start + self.batch_size], b)
            carry_ids, carry_cols = seq_ids[full:], cols[full:]
            rest = len(carry_ids)
            if rest and (k + 1 == len(used) or rest * used[k + 1] >= tail_size(rest) * b):
                run(carry_ids, carry_cols, b)  # cheaper than carrying them to a longer bucket
                carry_ids = carry_cols = np.zeros(0, dtype=np.int64)
        drain(0)
        logprobs = [flat[offsets[i]:offsets[i + 1]] for i in range(n)]
        result = PLLResult(
            scores=np.array([lp.sum() for lp in logprobs], dtype=np.float64),
            num_tokens=np.array([int(scorable(s).sum()) for s in seqs], dtype=np.int64),
            truncated=truncated,
            num_copies=int(sum(len(c[0]) for c in copies.values())),
        )
        return logprobs, result

    def score(self, params, sequences: Sequence[np.ndarray],
              word_ids: Sequence[np.ndarray] | None = None) -> PLLResult:
        """Summed pseudo-log-likelihood of each sequence (see `token_logprobs`)."""
        return self.token_logprobs(params, sequences, word_ids)[1]


# -------------------------------------------------------------------------------------------
# Dev-set measures.


def _dev_rows(input_ids: np.ndarray, num_sequences: int, what: str) -> list[np.ndarray]:
    """The first `num_sequences` rows, with any padding removed (rows are normally full)."""
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise DataError(f"{what} expects token ids of shape [N, L], got shape {ids.shape}.")
    if num_sequences < 0:
        raise ConfigError(f"{what}: num_sequences must be >= 0 (0 = all rows), got {num_sequences}.")
    n = len(ids) if num_sequences == 0 else min(num_sequences, len(ids))
    if n == 0:
        raise DataError(f"{what}: the dev split has no sequences to score.")
    return [np.asarray(row[row != PAD_ID], dtype=np.int32) for row in ids[:n]]


def pseudo_perplexity(params, model_config: RobertaConfig, input_ids: np.ndarray, *,
                      batch_size: int = 256, num_sequences: int = 64, mesh: Mesh | None = None,
                      scorer: PLLScorer | None = None) -> dict:
    """exp(-mean PLL per token) over the first `num_sequences` rows of a `<s> … </s>` split.

    Every non-special token is scored (one masked copy each), so this costs about L forward
    passes per row: keep `num_sequences` small during training. Pass `scorer` to reuse compiled
    shapes across calls.
    """
    rows = _dev_rows(input_ids, num_sequences, "pseudo_perplexity")
    scorer = scorer or PLLScorer(model_config, batch_size=batch_size, mesh=mesh)
    result = scorer.score(params, rows)
    tokens = int(result.num_tokens.sum())
    if tokens == 0:
        raise DataError("pseudo_perplexity: the selected rows contain no scorable (non-special) tokens.")
    mean = float(result.scores.sum() / tokens)
    return {
        "pseudo_perplexity": float(math.exp(-mean)),
        "pseudo_log_likelihood_per_token": mean,
        "num_sequences": len(rows),
        "num_tokens": tokens,
        "truncated": result.truncated,
    }


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


def mlm_loss(params, model_config: RobertaConfig, input_ids: np.ndarray, *, batch_size: int = 32,
             num_sequences: int = 256, mask_probability: float = 0.15, seed: int = 0,
             mesh: Mesh | None = None) -> dict:
    """Masked-LM cross-entropy on dev rows with a fixed masking (every chosen token -> <mask>).

    One forward pass per row instead of one per token: a cheap, comparable-across-steps signal.
    Unlike training there is no 80/10/10 replacement, so the number measures prediction from
    context alone. Returns the mean loss per masked token, its perplexity and top-1 accuracy.
    """
    if not 0 < mask_probability < 1:
        raise ConfigError(f"mlm_loss: mask_probability must lie in (0, 1), got {mask_probability}.")
    if batch_size <= 0:
        raise ConfigError(f"mlm_loss: batch_size must be positive, got {batch_size}.")
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise DataError(f"mlm_loss expects token ids of shape [N, L], got shape {ids.shape}.")
    n = len(ids) if num_sequences == 0 else min(num_sequences, len(ids))
    if n == 0:
        raise DataError("mlm_loss: the dev split has no sequences to score.")
    ids = np.ascontiguousarray(ids[:n], dtype=np.int32)
    chosen = mlm_masks(ids, mask_probability=mask_probability, seed=seed)
    counts = chosen.sum(axis=1)
    if counts.sum() == 0:
        raise DataError("mlm_loss: the selected rows contain no maskable (non-special) tokens.")
    # A fixed number of target slots K (rounded up to a multiple of 8) gives one compiled shape.
    k = int(-(-counts.max() // 8) * 8)
    positions = np.zeros((n, k), dtype=np.int32)
    weights = np.zeros((n, k), dtype=np.float32)
    for r in range(n):
        cols = np.nonzero(chosen[r])[0]
        positions[r, : len(cols)] = cols
        weights[r, : len(cols)] = 1.0
    targets = np.take_along_axis(ids, positions, axis=1)
    masked = np.where(chosen, MASK_ID, ids).astype(np.int32)
    placement = _Mesh(mesh, batch_size)
    model = RobertaForMaskedLM(model_config)

    def mlm_eval_sums(params, batch_ids, batch_pos, batch_targets, batch_weights):
        attention_mask = batch_ids != PAD_ID
        logits = model.apply({"params": params}, batch_ids, attention_mask, deterministic=True,
                             target_positions=batch_pos).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, batch_targets[..., None], axis=-1)[..., 0]
        correct = (jnp.argmax(logits, axis=-1) == batch_targets).astype(jnp.float32)
        return jnp.stack([(nll * batch_weights).sum(), (correct * batch_weights).sum()])

    fn = jax.jit(mlm_eval_sums, out_shardings=None if mesh is None else placement.replicated)
    placed = placement.put_params(mlm_params(params))
    totals = []
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        parts = [masked[sl], positions[sl], targets[sl], weights[sl]]
        fill = batch_size - len(parts[0])
        if fill:  # pad with weight-0 copies of the first row
            parts = [np.concatenate([p, np.repeat(p[:1], fill, axis=0)]) for p in parts]
            parts[3][-fill:] = 0.0
        totals.append(fn(placed, *(placement.put_batch(p) for p in parts)))
    nll_sum, correct_sum = np.sum([np.asarray(t, dtype=np.float64) for t in totals], axis=0)
    num_masked = int(counts.sum())
    loss = float(nll_sum / num_masked)
    return {
        "mlm_loss": loss,
        "mlm_perplexity": float(math.exp(min(loss, 700.0))),
        "mlm_accuracy": float(correct_sum / num_masked),
        "num_sequences": n,
        "num_masked": num_masked,
    }
