"""The data curriculum's policy beside the sampler: initial difficulty scores, re-scoring and its schedule.

The sampler (`climb_jax.data.sampler.BatchSampler`) turns scores and a pacing function into batches;
this object decides what the scores are. A static scorer (source order, n-gram perplexity, child age)
scores once, before training. The self-perplexity scorer starts from the n-gram scores (as the
reference does) and re-scores with the model every `update_every` steps: the run is cut into segments
ending at those steps (`segment_end`), and at a segment's first step `maybe_rescore` installs the new
scores in the sampler under the version `step // update_every`. Everything a re-scoring draws is seeded
by (seed, step), and the scores are a deterministic function of the parameters, so a run resumed at a
re-scoring step re-scores to exactly the values of an uninterrupted run.
"""

from __future__ import annotations

import time

import numpy as np
from absl import logging
from ml_collections import ConfigDict

from climb_jax.curriculum import difficulty
from climb_jax.errors import ConfigError


def scorer_settings(dc: ConfigDict | None) -> dict:
    """Every setting that decides the initial scores (and nothing else): part of the prepared dataset's
    fingerprint, since its training rows are stored in this order. Scorers that give the same initial
    scores share settings (self-perplexity starts from the n-gram scores)."""
    scorer = "none" if dc is None else str(dc.scorer)
    if scorer == "none":
        return {"scorer": "none"}
    if scorer == "source_order":
        out = {"scorer": "source_order", "source_order": str(dc.source_order)}
        if out["source_order"] == "custom":
            out["source_difficulty"] = str(dc.source_difficulty)
        return out
    if scorer == "child_age":
        return {"scorer": "child_age"}
    if scorer in ("ngram_perplexity", "self_perplexity"):
        if dc.n_gram <= 0:
            return {"scorer": "uniform"}
        return {"scorer": "ngram", "n_gram": int(dc.n_gram), "smoothing": float(dc.ngram_smoothing),
                "include_specials": bool(dc.ngram_include_specials)}
    raise ConfigError(f"unknown data_curriculum.scorer '{scorer}'")


def score_rows(dc: ConfigDict | None, split, sources, vocab_size: int) -> np.ndarray | None:
    """The initial scores of `split`'s rows (None without a data curriculum), computed from its arrays."""
    kind = scorer_settings(dc)["scorer"]
    if kind == "none":
        return None
    if kind == "source_order":
        return difficulty.source_order_scores(split, sources, dc.source_order, dc.source_difficulty)
    if kind == "child_age":
        return difficulty.child_age_scores(split)
    if kind == "uniform":
        return difficulty.uniform_scores(len(split))
    return difficulty.ngram_scores(split.input_ids, dc.n_gram, dc.ngram_smoothing, vocab_size,
                                   include_specials=bool(dc.ngram_include_specials))


def initial_scores(config: ConfigDict, data) -> np.ndarray | None:
    """The scores installed before the first step (None without a data curriculum): the prepared
    dataset's stored scores when it was ordered by this scorer (no pass over the rows), else computed."""
    dc = config.data_curriculum
    if dc.scorer == "none":
        return None
    stored = data.scores_for(scorer_settings(dc)) if hasattr(data, "scores_for") else None
    if stored is not None:
        return stored
    return score_rows(dc, data.train, data.sources, len(data.tokenizer))


def check_corpus_sources(config: ConfigDict) -> None:
    """A source order that does not fit the corpus (a source it gives no difficulty, or a custom name the
    corpus lacks) is a `ConfigError` before any expensive work: finding the corpus lists its sources
    without reading any text."""
    dc = config.data_curriculum
    if dc.scorer != "source_order":
        return
    from climb_jax.data.corpus import find_corpus

    difficulty.source_difficulties(find_corpus(config.data).sources, dc.source_order, dc.source_difficulty)


class DataCurriculum:
    """Initial scores, the re-scoring schedule and the re-scoring itself, for one run."""

    def __init__(self, config: ConfigDict, data, model_cfg=None, mesh=None, *, progress=False):
        """`progress`: show the re-scoring's progress (bool), or a function `(total, desc) -> Progress`
        (a training run's `eval.progress.in_training`, which also makes it yield to a stop signal)."""
        self.config = config
        self.data = data
        self.model_cfg = model_cfg
        self.mesh = mesh
        self.progress = progress
        dc = config.data_curriculum
        self.scorer = str(dc.scorer)
        self.update_every = int(dc.update_every) if self.scorer == "self_perplexity" else 0
        self._model_scorer = None
        self.seconds: dict[str, float] = {}  # the last re-scoring's duration (the run's cost estimate)
        if self.rescoring:  # built now, compiled at the first re-scoring: a bad batch size fails here
            self.model_scorer()

    @classmethod
    def from_config(cls, config: ConfigDict, data, model_cfg=None, mesh=None, **kwargs) -> "DataCurriculum":
        return cls(config, data, model_cfg, mesh, **kwargs)

    @property
    def rescoring(self) -> bool:
        """Whether scores change during the run (then they must be saved with each checkpoint)."""
        return self.update_every > 0

    def initial_scores(self) -> np.ndarray | None:
        return initial_scores(self.config, self.data)

    # -- the schedule ------------------------------------------------------------------------
    def segment_end(self, step: int, total: int) -> int:
        """The next step at which a re-scoring may be due (exclusive end of the segment holding `step`);
        `total` when scores never change."""
        if not self.rescoring:
            return int(total)
        return int(min(total, (step // self.update_every + 1) * self.update_every))

    def due(self, step: int, sampler) -> bool:
        """A re-scoring is due at every positive multiple of `update_every` whose scores the sampler does
        not hold yet (a run resumed after a re-scoring restores them with the checkpoint)."""
        return (self.rescoring and step > 0 and step % self.update_every == 0
                and sampler.version < step // self.update_every)

    # -- re-scoring --------------------------------------------------------------------------
    def rows_to_rescore(self, step: int) -> np.ndarray:
        """The sorted training rows re-scored at `step`: all of them, or a `rescore_fraction` sample
        drawn with seed (seed, step)."""
        dc = self.config.data_curriculum
        n = len(self.data.train)
        count = max(1, int(round(dc.rescore_fraction * n)))
        if count >= n:
            return np.arange(n)
        rng = np.random.default_rng([self.config.seed, step])
        return np.sort(rng.choice(n, size=count, replace=False))

    def model_scorer(self):
        if self._model_scorer is None:
            from climb_jax.curriculum.self_perplexity import SelfPerplexityScorer

            if self.model_cfg is None:
                raise ConfigError("self-perplexity re-scoring needs the model's config (DataCurriculum model_cfg).")
            dc = self.config.data_curriculum
            self._model_scorer = SelfPerplexityScorer(
                self.model_cfg, str(dc.self_perplexity_estimator),
                mask_probability=mlm_mask_probability(self.config),
                batch_size=int(dc.rescore_batch_size), mesh=self.mesh)
        return self._model_scorer

    def rescore(self, params, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, their new scores) under `params`, without installing them."""
        import jax

        rows = self.rows_to_rescore(step)
        key = jax.random.PRNGKey(self.config.seed + 7919 * (step + 1))  # one_mask's masks at this step
        train = self.data.train
        start = time.perf_counter()
        fresh = self.model_scorer()(params, train.input_ids, train.pos_ids, rows, key, progress=self.progress)
        self.seconds["rescore"] = time.perf_counter() - start
        return rows, fresh

    def maybe_rescore(self, params, step: int, sampler) -> bool:
        """Re-scores and installs the new scores in `sampler` when due at `step`; True if it did."""
        if not self.due(step, sampler):
            return False
        rows, fresh = self.rescore(params, step)
        n = len(self.data.train)
        scores = np.array(sampler.scores if sampler.scores is not None else np.zeros(n, np.float32))
        scores[rows] = fresh
        sampler.set_scores(scores.astype(np.float32), version=step // self.update_every)
        logging.info("re-scored %d sequences at step %d (%s estimator, mean perplexity %.2f)", rows.size, step,
                     self.config.data_curriculum.self_perplexity_estimator, float(fresh.mean()))
        return True


def mlm_mask_probability(config) -> float:
    """`one_mask`'s masking rate: the MLM unit's selection probability (the loss it estimates)."""
    (mlm,) = [u for u in config.objective_curriculum.units.values() if u.task == "mlm"]
    return float(mlm.mask_probability)
