"""The model's own perplexity of training rows: the difficulty of the self-perplexity data curriculum.

Two estimators (`data_curriculum.self_perplexity_estimator`):

  pll       the reference's (CLIMB (PyTorch) `compute_trainer_perplexity`): every non-special position
            of a row is masked in turn, one copy per position; the negative log-likelihood of the
            original token at the masked position is averaged over those positions and exponentiated.
            Exact and deterministic, but one forward pass per non-special token.
  one_mask  one random mask of round(p * n) non-special positions per row (p = the MLM unit's mask_probability,
            all replaced by <mask>), the mean NLL over them, exponentiated: one forward pass per row,
            and a noisier ranking (about 19 targets per 128-token row). The mask of row i is drawn from
            fold_in(key, i), so a row's score does not depend on the batch it was scored in.

Both run with dropout off. The reference scored in the model's training mode, i.e. with dropout on,
which adds noise to its ranking; here a score is a deterministic function of (parameters, row), so a
resumed run re-scores to exactly the same values.

Both functions are jitted once per run (fixed batch shapes) and run on the training mesh: the masked
copies are split over the mesh's batch axes, the parameters stay where the train state keeps them
(`Placement`), and the result is replicated so every process installs the same scores.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from climb_jax.constants import MASK_ID, NUM_SPECIAL
from climb_jax.curriculum import difficulty
from climb_jax.eval.progress import Progress
from climb_jax.models.roberta import LMHead, RobertaConfig, RobertaEncoder
from climb_jax.parallel.mesh import Placement


def _modules(model: RobertaConfig):
    return RobertaEncoder(model), LMHead(model, num_outputs=model.vocab_size)


def make_score_fn(model: RobertaConfig, mask_probability: float) -> Callable:
    """The `one_mask` estimator: `(params, ids[b, L], indices[b], key) -> mean masked NLL [b]`.

    round(p * n) of a row's n non-special positions (at least one) are chosen uniformly at random with
    key fold_in(key, index) and all replaced by <mask>; the loss is their mean NLL, without dropout."""
    encoder, head = _modules(model)

    def score(params, ids, indices, key):
        ids = jnp.asarray(ids, jnp.int32)
        batch, length = ids.shape
        k = max(1, int(np.ceil(mask_probability * length)))
        candidates = ids >= NUM_SPECIAL
        # The key stream of `masking.mlm_mask` on one row (its first split draws the positions), so
        # these masks are the ones the estimator has always drawn.
        noise = jax.vmap(lambda i: jax.random.uniform(
            jax.random.split(jax.random.fold_in(key, i), 3)[0], (1, length))[0])(indices)
        n_cand = candidates.sum(axis=1)
        n_mask = jnp.clip(jnp.round(mask_probability * n_cand), jnp.minimum(n_cand, 1), k).astype(jnp.int32)
        _, positions = jax.lax.top_k(jnp.where(candidates, noise, -1.0), k)
        weights = (jnp.arange(k)[None, :] < n_mask[:, None]).astype(jnp.float32)
        targets = jnp.take_along_axis(ids, positions, axis=1)
        rows = jnp.arange(batch)[:, None]
        masked = ids.at[rows, positions].set(jnp.where(weights > 0, MASK_ID, targets))
        hidden = encoder.apply({"params": params["encoder"]}, masked, None, deterministic=True)
        picked = jnp.take_along_axis(hidden, positions[..., None], axis=1)
        logits = head.apply({"params": params["mlm_head"]}, picked).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        return (nll * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)

    return score


def make_masked_nll_fn(model: RobertaConfig) -> Callable:
    """The `pll` estimator's unit of work: `(params, ids[C, L], positions[C]) -> nll[C]`, the NLL of the
    token at `positions[c]` of row c given the row with that one position masked (no dropout). Only the
    masked position goes through the MLM head."""
    encoder, head = _modules(model)

    def nll(params, ids, positions):
        ids = jnp.asarray(ids, jnp.int32)
        positions = jnp.asarray(positions, jnp.int32)
        rows = jnp.arange(ids.shape[0])
        targets = ids[rows, positions]
        hidden = encoder.apply({"params": params["encoder"]}, ids.at[rows, positions].set(MASK_ID), None,
                               deterministic=True)
        logits = head.apply({"params": params["mlm_head"]}, hidden[rows, positions]).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets)

    return nll


class SelfPerplexityScorer:
    """Scores training rows with the model: built (and jitted) once per run, called at each re-scoring.

    `batch_size` is the number of masked sequences per device call: rows for `one_mask`, masked copies
    for `pll`; it must split evenly over the mesh's batch axes."""

    def __init__(self, model: RobertaConfig, estimator: str, *, mask_probability: float, batch_size: int,
                 mesh=None):
        self.estimator = estimator
        self.batch_size = int(batch_size)
        self.placement = Placement(mesh, batch_sizes=(self.batch_size,), what="data_curriculum.rescore_batch_size")
        out = self.placement.replicated if mesh is not None else None
        # `estimator` is one of choices.SELF_PERPLEXITY_ESTIMATORS (schema.validate checks it).
        fn = {"pll": lambda: make_masked_nll_fn(model),
              "one_mask": lambda: make_score_fn(model, mask_probability)}[estimator]()
        fn.__name__ = f"self_perplexity_{estimator}"
        self._fn = jax.jit(fn, out_shardings=out)

    def calls(self, input_ids, indices: np.ndarray) -> int:
        """Device calls that scoring the rows `indices` takes (rows, or masked copies for `pll`, per call)."""
        if self.estimator == "pll":
            work = sum(int((np.asarray(input_ids[indices[i:i + 4096]]) >= NUM_SPECIAL).sum())
                       for i in range(0, len(indices), 4096))
        else:
            work = len(indices)
        return -(-work // self.batch_size)

    def _run(self, params, ids: np.ndarray, second: np.ndarray, key=None) -> np.ndarray:
        """One device call on `batch_size` rows `ids`, with params and key already placed: `second` is
        the masked position of each copy (`pll`) or each row's index (`one_mask`, seeding its mask)."""
        if self.estimator == "pll":
            batch = self.placement.batch({"ids": ids, "positions": np.asarray(second, np.int32)})
            return np.asarray(self._fn(params, batch["ids"], batch["positions"]))
        batch = self.placement.batch({"ids": ids, "idx": np.asarray(second, np.int32)})
        return np.asarray(self._fn(params, batch["ids"], batch["idx"], key))

    def time_call(self, params, input_ids) -> tuple[float, float]:
        """Seconds of two calls on the first rows of `input_ids` (the run's cost estimate): the first
        includes the compile (kept for the re-scorings), the second is the steady cost."""
        params, key = self.placement.params(params), self.placement.params(jax.random.PRNGKey(0))
        ids = np.asarray(input_ids[np.arange(self.batch_size) % len(input_ids)], np.int32)
        second = np.argmax(ids >= NUM_SPECIAL, axis=1) if self.estimator == "pll" else np.arange(len(ids))
        times = []
        for _ in range(2):
            start = time.perf_counter()
            self._run(params, ids, second, key)
            times.append(time.perf_counter() - start)
        return times[0], times[1]

    def __call__(self, params, input_ids, pos_ids, indices: np.ndarray, key: jax.Array | None = None,
                 progress: bool | Callable[[int, str], Progress] = False) -> np.ndarray:
        """Perplexity (float32) of the rows `indices` of `input_ids` under `params`; `key` seeds the
        `one_mask` estimator's masks (unused by `pll`). `progress`: show it, or a function
        `(total, desc) -> Progress` (a training run's, which also yields to its stop signals between calls)."""
        params = self.placement.params(params)
        key = None if key is None else self.placement.params(key)
        total, desc = self.calls(input_ids, indices), f"self-perplexity ({len(indices)} rows, {self.estimator})"
        with (progress(total, desc) if callable(progress) else Progress(total, desc, enabled=progress)) as bar:
            def counted(out: np.ndarray) -> np.ndarray:
                bar.update(1)
                return out

            if self.estimator == "pll":
                return difficulty.pseudo_perplexity_scores(
                    lambda ids, positions: counted(self._run(params, ids, positions)), input_ids, indices=indices,
                    copies=self.batch_size)
            return difficulty.self_perplexity_scores(
                lambda ids, pos, rows: counted(self._run(params, ids, rows, key)), input_ids, pos_ids,
                indices=indices, batch_size=self.batch_size)
