"""Runs the scoring plans on the device mesh: pseudo-log-likelihoods, pseudo-perplexity, dev MLM loss.

The plans (which masked copies go into which batch) are eval/batching.py's; this module owns the
jitted functions and runs them where the training state lives. Parameters are placed with
`parallel.mesh.Placement` (leaves already on the mesh stay where they are, split or replicated;
nothing is gathered to one device) and each batch is split over the mesh's batch axes.

Each jitted function is built once per (model shape, mesh) and shared by every scorer, so a run
that evaluates many checkpoints compiles each padded shape once. The PLL function projects only
the masked position to the vocabulary (`target_positions`): the vocabulary head is the largest
matmul of a small model and every other position would be discarded.
"""

from __future__ import annotations

import collections
import functools
import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from climb_jax.constants import PAD_ID
from climb_jax.errors import ConfigError, DataError
from climb_jax.eval.batching import (DEFAULT_BUCKETS, MLMPlan, PLLPlan, bucket_lengths, mlm_masks, scorable,
                                     tail_sizes, truncate, truncation_index)
from climb_jax.eval.progress import Progress
from climb_jax.models.roberta import RobertaConfig, RobertaForMaskedLM
from climb_jax.parallel.mesh import Placement

__all__ = ["DEFAULT_BUCKETS", "PLLResult", "PLLScorer", "MLMLoss", "mlm_loss", "mlm_masks", "mlm_params",
           "mlm_sums_fn", "perplexity_summary", "pseudo_perplexity", "row_perplexities", "scorable",
           "token_logprob_fn", "truncate", "truncation_index"]

# Batches dispatched ahead of the one being read back: host work overlaps device work while
# memory for pending inputs stays bounded. Few: a stop signal is heard when a batch is read back,
# and the batches already dispatched still run (seconds each for a CPU's large batches) before the
# run can save, within a preempted VM's ~30 s of grace.
_MAX_IN_FLIGHT = 2


def mlm_params(params: Mapping[str, Any]) -> dict:
    """The encoder and MLM head of a full-model tree (objective units add `pos_*` heads)."""
    missing = [k for k in ("encoder", "mlm_head") if k not in params]
    if missing:
        raise ConfigError(f"the parameter tree has no {', '.join(missing)}; pass RobertaForMaskedLM "
                          f"parameters (top-level keys found: {', '.join(map(str, params))}).")
    return {"encoder": params["encoder"], "mlm_head": params["mlm_head"]}


@dataclass
class PLLResult:
    """Per-sequence sums of log p (natural log) and the number of tokens scored."""

    scores: np.ndarray  # [N] float64
    num_tokens: np.ndarray  # [N] int64
    truncated: int  # sequences cut to the model's maximum length
    num_copies: int  # masked copies run (excluding batch padding)


def _replicated_out(mesh: Mesh | None):
    return None if mesh is None else Placement(mesh).replicated


@functools.lru_cache(maxsize=16)
def token_logprob_fn(model_config: RobertaConfig, mesh: Mesh | None):
    """One jitted scoring function per (model shape, mesh), shared by every scorer: a training
    run that builds new evaluators at each evaluation reuses the shapes compiled before. Arguments:
    (params, ids [B, L] int32, lengths [B], masked positions [B], target ids [B]) -> log p [B]; an
    ahead-of-time compile can lower it for a padded shape (eval/batching.py's buckets)."""
    model = RobertaForMaskedLM(model_config)

    def pll_token_logprob(params, ids, lengths, positions, targets):
        """log p(targets | ids) at `positions`, one per row; padding keys are masked out."""
        attention_mask = jnp.arange(ids.shape[1])[None, :] < lengths[:, None]
        logits = model.apply({"params": params}, ids, attention_mask, deterministic=True,
                             target_positions=positions[:, None])[:, 0].astype(jnp.float32)
        target_logit = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
        return target_logit - jax.nn.logsumexp(logits, axis=-1)

    # Replicated output: every process can read the whole result back.
    return jax.jit(pll_token_logprob, out_shardings=_replicated_out(mesh))


@functools.lru_cache(maxsize=16)
def mlm_sums_fn(model_config: RobertaConfig, mesh: Mesh | None):
    """The dev MLM loss's jitted function, once per (model shape, mesh)."""
    model = RobertaForMaskedLM(model_config)

    def mlm_eval_sums(params, ids, positions, targets, weights):
        """(summed NLL, number correct) over the weighted target slots of a batch."""
        logits = model.apply({"params": params}, ids, ids != PAD_ID, deterministic=True,
                             target_positions=positions).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
        return jnp.stack([(nll * weights).sum(), (correct * weights).sum()])

    return jax.jit(mlm_eval_sums, out_shardings=_replicated_out(mesh))


class PLLScorer:
    """Pseudo-log-likelihoods of token sequences with a bounded number of compiled shapes.

    Args:
      model_config: the encoder's shape; sequences longer than `max_position_embeddings` are
        truncated (counted in `PLLResult.truncated`).
      batch_size: masked copies per device call; a bucket's last, partial batch runs at
        batch_size/2, /4 or /8 when that holds it (see eval/batching.py).
      buckets: padded lengths; the model's maximum length is always added so everything fits.
      mesh: when given, each batch is split over the mesh's batch axes and the parameters are
        replicated unless they already live on the mesh.
    """

    def __init__(self, model_config: RobertaConfig, *, batch_size: int = 256,
                 buckets: Sequence[int] = DEFAULT_BUCKETS, mesh: Mesh | None = None):
        if batch_size <= 0:
            raise ConfigError(f"eval.batch_size must be positive, got {batch_size}.")
        self.model_config = model_config
        self.mesh = mesh
        self.batch_size = int(batch_size)
        self.max_len = int(model_config.max_position_embeddings)
        self.buckets = bucket_lengths(buckets, self.max_len)
        self.placement = Placement(mesh, batch_sizes=(self.batch_size,), what="eval.batch_size")
        # Smaller sizes for a bucket's last, partial batch; each must still split over the mesh.
        self.batch_sizes = tail_sizes(self.batch_size, self.placement.shards)
        self.shapes_run: set[tuple[int, int]] = set()
        self._fn = token_logprob_fn(model_config, mesh)

    def bucket_length(self, length: int) -> int:
        for b in self.buckets:
            if length <= b:
                return b
        return self.max_len

    def plan(self, sequences: Sequence[np.ndarray], word_ids: Sequence[np.ndarray] | None = None) -> PLLPlan:
        return PLLPlan(sequences, word_ids, buckets=self.buckets, batch_size=self.batch_size,
                       batch_sizes=self.batch_sizes, max_len=self.max_len)

    def run(self, params, plan: PLLPlan, *, progress: Progress | None = None) -> tuple[list[np.ndarray], PLLResult]:
        """Runs a plan: per-position log p (0 at special positions) of every sequence, and the summary."""
        flat = np.zeros(int(plan.offsets[-1]), dtype=np.float64)
        params = self.placement.params(mlm_params(params))
        pending: collections.deque = collections.deque()

        def drain(limit: int) -> None:
            while len(pending) > limit:
                out, index = pending.popleft()
                flat[index] = np.asarray(out)[: len(index)]
                if progress is not None:
                    progress.update(1)

        for batch in plan:
            out = self._fn(params, *self.placement.batch(plan.inputs(batch)))
            self.shapes_run.add((batch.size, batch.width))
            pending.append((out, plan.output_index(batch)))
            drain(_MAX_IN_FLIGHT)
        drain(0)
        logprobs = plan.split(flat)
        result = PLLResult(scores=np.array([lp.sum() for lp in logprobs], dtype=np.float64),
                           num_tokens=plan.num_tokens, truncated=plan.truncated, num_copies=plan.num_copies)
        return logprobs, result

    def time_batch(self, params, plan: PLLPlan, batch) -> tuple[float, float]:
        """Seconds of two calls on one of `plan`'s batches (for the run's cost estimate): the first
        includes compiling the batch's shape if it is new (the compiled shape is kept for the real
        evaluation), the second is the steady cost."""
        params = self.placement.params(mlm_params(params))
        inputs = self.placement.batch(plan.inputs(batch))
        times = []
        for _ in range(2):
            start = time.perf_counter()
            jax.block_until_ready(self._fn(params, *inputs))
            times.append(time.perf_counter() - start)
        self.shapes_run.add((batch.size, batch.width))
        return times[0], times[1]

    def token_logprobs(self, params, sequences: Sequence[np.ndarray],
                       word_ids: Sequence[np.ndarray] | None = None) -> tuple[list[np.ndarray], PLLResult]:
        """Per-position log p for every sequence; `word_ids` (-1 at special tokens) switches to
        PLL-word-l2r."""
        return self.run(params, self.plan(sequences, word_ids))

    def score(self, params, sequences: Sequence[np.ndarray],
              word_ids: Sequence[np.ndarray] | None = None) -> PLLResult:
        """Summed pseudo-log-likelihood of each sequence (see `token_logprobs`)."""
        return self.token_logprobs(params, sequences, word_ids)[1]


# -------------------------------------------------------------------------------------------
# Dev-set measures.


def _rows_array(input_ids: np.ndarray, what: str) -> np.ndarray:
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise DataError(f"{what} expects token ids of shape [N, L], got shape {ids.shape}.")
    return ids


def dev_rows(input_ids: np.ndarray, num_sequences: int, what: str) -> list[np.ndarray]:
    """The first `num_sequences` rows (0 = all), with any padding removed (rows are normally full)."""
    ids = _rows_array(input_ids, what)
    if num_sequences < 0:
        raise ConfigError(f"{what}: num_sequences must be >= 0 (0 = all rows), got {num_sequences}.")
    n = len(ids) if num_sequences == 0 else min(num_sequences, len(ids))
    if n == 0:
        raise DataError(f"{what}: the dev split has no sequences to score.")
    return [np.asarray(row[row != PAD_ID], dtype=np.int32) for row in ids[:n]]


def strided_rows(num_rows: int, sample: int) -> np.ndarray:
    """The reference's checkpoint-selection sample: every (num_rows // sample)-th row from row 0.

    As CLIMB (PyTorch) selects its dev rows (`range(0, N, N // 10_000)` on one process): about
    `sample` rows spread over the whole split, up to twice as many when N < 2 * sample (the stride
    rounds down). With N < sample the reference fails (a zero stride); here every row is taken."""
    if sample <= 0:
        raise ConfigError(f"eval.dev_perplexity_sequences must be positive, got {sample}.")
    return np.arange(0, num_rows, max(1, num_rows // sample))


def row_perplexities(result: PLLResult) -> np.ndarray:
    """exp(mean negative PLL over a row's non-special tokens), per row; 1 for a row with none
    (the reference divides a zero loss by a count clamped to 1)."""
    return np.exp(-result.scores / np.maximum(result.num_tokens, 1))


def pseudo_perplexity(params, model_config: RobertaConfig, input_ids: np.ndarray, *,
                      batch_size: int = 256, num_sequences: int = 64, mesh: Mesh | None = None,
                      scorer: PLLScorer | None = None) -> dict:
    """exp(-mean PLL per token) over the first `num_sequences` rows of a `<s> … </s>` split.

    Every non-special token is scored (one masked copy each), so this costs about L forward
    passes per row: keep `num_sequences` small during training. Pass `scorer` to reuse compiled
    shapes across calls.
    """
    rows = dev_rows(input_ids, num_sequences, "pseudo_perplexity")
    scorer = scorer or PLLScorer(model_config, batch_size=batch_size, mesh=mesh)
    return perplexity_summary(scorer.score(params, rows))


def perplexity_summary(result: PLLResult) -> dict:
    """`pseudo_perplexity`'s figures from the scores of its rows."""
    tokens = int(result.num_tokens.sum())
    if tokens == 0:
        raise DataError("pseudo_perplexity: the selected rows contain no scorable (non-special) tokens.")
    mean = float(result.scores.sum() / tokens)
    return {
        "pseudo_perplexity": float(math.exp(-mean)),
        "pseudo_log_likelihood_per_token": mean,
        "num_sequences": len(result.scores),
        "num_tokens": tokens,
        "truncated": result.truncated,
    }


def _check_mlm_settings(mask_probability: float, batch_size: int) -> None:
    if not 0 < mask_probability < 1:
        raise ConfigError(f"mlm_loss: mask_probability must lie in (0, 1), got {mask_probability}.")
    if batch_size <= 0:
        raise ConfigError(f"mlm_loss: batch_size must be positive, got {batch_size}.")


class MLMLoss:
    """Masked-LM cross-entropy on fixed dev rows with a fixed masking (every chosen token -> <mask>).

    The masks are drawn once, when it is built; each call only runs the model, with the jitted
    function shared per (model shape, mesh). One forward pass per row instead of one per token:
    a cheap, comparable-across-steps signal. Unlike training there is no 80/10/10 replacement, so
    the number measures prediction from context alone.
    """

    def __init__(self, model_config: RobertaConfig, input_ids: np.ndarray, *, batch_size: int = 32,
                 num_sequences: int = 256, mask_probability: float = 0.15, seed: int = 0,
                 mesh: Mesh | None = None):
        _check_mlm_settings(mask_probability, batch_size)
        ids = _rows_array(input_ids, "mlm_loss")
        n = len(ids) if num_sequences == 0 else min(num_sequences, len(ids))
        if n == 0:
            raise DataError("mlm_loss: the dev split has no sequences to score.")
        self.plan = MLMPlan(ids[:n], mask_probability=mask_probability, seed=seed, batch_size=batch_size)
        if self.plan.num_masked == 0:
            raise DataError("mlm_loss: the selected rows contain no maskable (non-special) tokens.")
        self.placement = Placement(mesh, batch_sizes=(batch_size,), what="the dev MLM loss's batch size")
        self._fn = mlm_sums_fn(model_config, mesh)

    def __call__(self, params, progress: Progress | None = None) -> dict:
        """Mean loss per masked token, its perplexity and top-1 accuracy; `progress` is updated after
        each batch is dispatched (so a stop signal is heard between batches)."""
        placed = self.placement.params(mlm_params(params))
        totals = []
        for parts in self.plan:
            totals.append(self._fn(placed, *self.placement.batch(parts)))
            if progress is not None:
                progress.update(1)
        nll_sum, correct_sum = np.sum([np.asarray(t, dtype=np.float64) for t in totals], axis=0)
        loss = float(nll_sum / self.plan.num_masked)
        return {
            "mlm_loss": loss,
            "mlm_perplexity": float(math.exp(min(loss, 700.0))),
            "mlm_accuracy": float(correct_sum / self.plan.num_masked),
            "num_sequences": self.plan.num_sequences,
            "num_masked": self.plan.num_masked,
        }


def mlm_loss(params, model_config: RobertaConfig, input_ids: np.ndarray, *, batch_size: int = 32,
             num_sequences: int = 256, mask_probability: float = 0.15, seed: int = 0,
             mesh: Mesh | None = None) -> dict:
    """`MLMLoss(...)(params)` in one call (see `MLMLoss`)."""
    _check_mlm_settings(mask_probability, batch_size)
    return MLMLoss(model_config, input_ids, batch_size=batch_size, num_sequences=num_sequences,
                   mask_probability=mask_probability, seed=seed, mesh=mesh)(params)
