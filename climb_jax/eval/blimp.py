"""Zero-shot grammaticality: minimal-pair suites (BLiMP and the like) scored by pseudo-log-likelihood.

A pair counts as right when the grammatical sentence scores at least as high as the
ungrammatical one (ties are right, as in the BabyLM evaluation pipeline, which takes the first
of equal scores). Two scores are available: `pll` (Salazar et al., 2020; mask each token in
turn) and `pll_word_l2r` (Kauf & Ivanova, 2023; also mask the rest of the token's word to its
right). Word boundaries come from the tokenizer's `word_ids` (its pre-tokenizer: for byte-level
BPE a word starts at the beginning of the text or at a space, and punctuation is a word of its
own); a tokenizer without a pre-tokenizer falls back to "a token starting with 'Ġ' starts a word".

The suite is tokenized once, when the evaluator is built; each call only runs the model, so the
same evaluator can score many checkpoints of a run.

Averages: `overall` (all pairs), `macro_accuracy` (mean over files, i.e. BLiMP's 67 paradigms) and
`blimp_avg`, the figure CLIMB (PyTorch) and the BabyLM 2023 pipeline report: the mean over BLiMP's
12 phenomena (BabyLM's filtered files, one per phenomenon) and, when the supplement is scored, its
5 tasks (see `blimp_average`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from absl import logging
from jax.sharding import Mesh
from ml_collections import ConfigDict
from transformers import PreTrainedTokenizerBase

from climb_jax.config.choices import EVAL_METHODS
from climb_jax.constants import BOS_ID, EOS_ID
from climb_jax.errors import ConfigError
from climb_jax.eval.batching import DEFAULT_BUCKETS
from climb_jax.eval.perplexity import PLLScorer
from climb_jax.eval.progress import Progress
from climb_jax.eval.suites import Suite, load_suite
from climb_jax.models.roberta import RobertaConfig

_WORD_START = "Ġ"  # byte-level BPE's marker of a preceding space

# BLiMP's 12 phenomena as BabyLM 2023 files them (one filtered file per phenomenon, named so), and
# the 5 tasks of its supplement: `blimp_avg` is the mean over these.
BLIMP_PHENOMENA = ("anaphor_agreement", "argument_structure", "binding", "control_raising",
                   "determiner_noun_agreement", "ellipsis", "filler_gap", "irregular_forms", "island_effects",
                   "npi_licensing", "quantifiers", "subject_verb_agreement")
SUPPLEMENT_TASKS = ("hypernym", "qa_congruence_easy", "qa_congruence_tricky", "subject_aux_inversion",
                    "turn_taking")
# BLiMP's `linguistics_term` values that are not a phenomenon's file name: the two `s-selection`
# paradigms (animate_subject_*) belong to argument structure in the BLiMP paper's grouping (9
# paradigms), and the filler-gap file drops "_dependency".
_TERM_PHENOMENON = {"s-selection": "argument_structure", "filler_gap_dependency": "filler_gap"}


def phenomenon(term: str) -> str:
    """The BabyLM phenomenon (file) a BLiMP `linguistics_term` belongs to."""
    return _TERM_PHENOMENON.get(term, term)


def check_method(method: str) -> str:
    if method not in EVAL_METHODS:
        raise ConfigError(f"eval.method='{method}' is not a scoring method; choose one of: "
                          f"{', '.join(EVAL_METHODS)}.")
    return method


def _has_pre_tokenizer(tokenizer: PreTrainedTokenizerBase) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return bool(getattr(tokenizer, "is_fast", False)) and backend is not None and backend.pre_tokenizer is not None


def _fallback_word_ids(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[int | None]:
    """Word ids from the tokens themselves: a new word at the first token and at every 'Ġ…' token."""
    special = set(tokenizer.all_special_ids)
    out: list[int | None] = []
    word = -1
    for tok_id, tok in zip(ids, tokenizer.convert_ids_to_tokens(list(ids))):
        if tok_id in special:
            out.append(None)
            continue
        if word < 0 or tok.startswith(_WORD_START):
            word += 1
        out.append(word)
    return out


def encode_sentences(tokenizer: PreTrainedTokenizerBase, sentences: Sequence[str], *,
                     with_word_ids: bool = False) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Token ids (`<s> … </s>`) and, if asked, word ids (-1 for special tokens) of each sentence.

    A tokenizer that does not add `<s>`/`</s>` itself (a raw tokenizer.json without a
    post-processor) gets them added here, so every sentence looks like a training row.
    """
    batch = tokenizer(list(sentences), add_special_tokens=True)
    use_hf_words = with_word_ids and _has_pre_tokenizer(tokenizer)
    all_ids, all_words = [], []
    for i, ids in enumerate(batch["input_ids"]):
        words = None
        if with_word_ids:
            words = batch.word_ids(i) if use_hf_words else _fallback_word_ids(tokenizer, ids)
        ids = list(ids)
        if not ids or ids[0] != BOS_ID:
            ids = [BOS_ID] + ids
            words = None if words is None else [None] + list(words)
        if ids[-1] != EOS_ID:
            ids = ids + [EOS_ID]
            words = None if words is None else list(words) + [None]
        all_ids.append(np.asarray(ids, dtype=np.int32))
        if with_word_ids:
            all_words.append(np.asarray([-1 if w is None else w for w in words], dtype=np.int32))
    return all_ids, (all_words if with_word_ids else None)


def _accuracy(correct: Sequence[bool]) -> dict:
    n = len(correct)
    return {"accuracy": float(np.mean(correct)) if n else 0.0, "num_pairs": n}


def accuracy_report(suite: Suite, good_scores: np.ndarray, bad_scores: np.ndarray, *, method: str) -> dict:
    """Accuracy overall, per file (paradigm), per BLiMP field and per linguistics term.

    `overall` is the accuracy over all pairs; `macro_accuracy` is the mean of the per-file accuracies
    (over BLiMP's 67 paradigms); `per_phenomenon` groups pairs into BLiMP's 12 phenomena (see
    `phenomenon`), the groups `blimp_average` averages. Pairs without a `field`/`linguistics_term`
    key (the supplement) appear only in the overall and per-file numbers.
    """
    pairs = suite.pairs
    good = np.asarray(good_scores, dtype=np.float64)
    bad = np.asarray(bad_scores, dtype=np.float64)
    if good.shape != (len(pairs),) or bad.shape != (len(pairs),):
        raise ValueError(f"expected {len(pairs)} scores per side, got {good.shape} and {bad.shape}")
    correct = good >= bad  # ties count as right
    by_file, by_field, by_term, by_phenomenon = (defaultdict(list) for _ in range(4))
    for pair, ok in zip(pairs, correct.tolist()):
        by_file[pair.paradigm].append(ok)
        if pair.field is not None:
            by_field[pair.field].append(ok)
        if pair.term is not None:
            by_term[pair.term].append(ok)
            by_phenomenon[phenomenon(pair.term)].append(ok)
    per_file = {name: _accuracy(v) for name, v in by_file.items()}
    return {
        "suite": suite.name,
        "suite_path": str(suite.path),
        "method": method,
        "num_pairs": len(pairs),
        "num_files": len(per_file),
        "overall": float(correct.mean()) if len(pairs) else 0.0,
        "macro_accuracy": float(np.mean([v["accuracy"] for v in per_file.values()])) if per_file else 0.0,
        "per_file": per_file,
        "per_field": {k: _accuracy(v) for k, v in sorted(by_field.items())},
        "per_term": {k: _accuracy(v) for k, v in sorted(by_term.items())},
        "per_phenomenon": {k: _accuracy(v) for k, v in sorted(by_phenomenon.items())},
    }


def blimp_average(blimp: dict, supplement: dict | None = None) -> dict:
    """`blimp_avg` as CLIMB (PyTorch) reports it: the unweighted mean of the accuracies of BLiMP's
    phenomena and of the supplement's tasks.

    The reference runs the BabyLM 2023 pipeline, which scores one filtered file per phenomenon (12)
    and per supplement task (5), and averages the 17 accuracies (12 without the supplement). Here a
    BLiMP report's `per_phenomenon` supplies the 12 (a suite without `linguistics_term` keys falls
    back to its files) and a supplement report's `per_file` the tasks. `missing` lists the expected
    groups that were not scored (a partial supplement, a subset of BLiMP), so a figure over fewer
    groups is never mistaken for the reference's.
    """
    groups = blimp.get("per_phenomenon") or blimp.get("per_file", {})
    accuracies = {k: v["accuracy"] for k, v in groups.items()}
    expected = list(BLIMP_PHENOMENA) if blimp.get("per_phenomenon") else []
    if supplement is not None:
        accuracies.update({f"supplement/{k}": v["accuracy"] for k, v in supplement.get("per_file", {}).items()})
        expected += [f"supplement/{k}" for k in SUPPLEMENT_TASKS]
    return {
        "blimp_avg": float(np.mean(list(accuracies.values()))) if accuracies else 0.0,
        "groups": len(accuracies),
        "grouped_by": "phenomenon" if blimp.get("per_phenomenon") else "file",
        "missing": [k for k in expected if k not in accuracies],
    }


class BlimpEvaluator:
    """Scores a minimal-pair suite with a model's parameters; `evaluator(params)` -> JSON-able dict.

    Args:
      model_config: the encoder's shape (`RobertaConfig`).
      tokenizer: the run's tokenizer (adds `<s> … </s>`).
      suite_dir: a directory of `*.jsonl` minimal-pair files, or "embedded".
      method: "pll" or "pll_word_l2r".
      batch_size: masked copies per device call (a multiple of the mesh's batch devices).
      max_pairs_per_file: keep the first N pairs of each file (0 = all).
      mesh: optional device mesh; batches are split over its batch axes ('data', 'fsdp').
      scorer: a `PLLScorer` to share (with its compiled shapes) between evaluators of several
        suites or methods; `batch_size`, `mesh` and `buckets` are then taken from it.
      progress: show the scoring's progress (a bar on a terminal, plain lines elsewhere); or a function
        `(total, desc) -> Progress` that builds the progress (a training run's: its output, its stop flag).
    """

    def __init__(self, model_config: RobertaConfig, tokenizer: PreTrainedTokenizerBase,
                 suite_dir: str | Path, *, method: str = "pll", batch_size: int = 256,
                 max_pairs_per_file: int = 0, mesh: Mesh | None = None,
                 buckets: Sequence[int] = DEFAULT_BUCKETS, scorer: PLLScorer | None = None,
                 progress: bool | Callable[[int, str], Progress] = False):
        self.method = check_method(method)
        self.progress = progress
        self.max_pairs_per_file = int(max_pairs_per_file)
        self.tokenizer = tokenizer
        self.suite = load_suite(suite_dir, max_pairs_per_file=max_pairs_per_file)
        if scorer is not None and scorer.model_config != model_config:
            raise ConfigError("the shared PLLScorer was built for a different model config.")
        self.scorer = scorer or PLLScorer(model_config, batch_size=batch_size, buckets=buckets, mesh=mesh)
        # Identical sentences (a few recur across pairs) are scored once.
        index: dict[str, int] = {}
        for pair in self.suite.pairs:
            index.setdefault(pair.good, len(index))
            index.setdefault(pair.bad, len(index))
        self.sentences = list(index)
        self._good = np.array([index[p.good] for p in self.suite.pairs], dtype=np.int64)
        self._bad = np.array([index[p.bad] for p in self.suite.pairs], dtype=np.int64)
        self._ids, self._words = encode_sentences(tokenizer, self.sentences,
                                                  with_word_ids=self.method == "pll_word_l2r")
        self._plan = None  # the suite's batches, planned at the first use and reused by every later one

    @classmethod
    def from_config(cls, eval_cfg: ConfigDict, model_config: RobertaConfig, tokenizer: PreTrainedTokenizerBase,
                    *, suite_dir: str | Path | None = None, mesh: Mesh | None = None,
                    scorer: PLLScorer | None = None,
                    progress: bool | Callable[[int, str], Progress] = False) -> "BlimpEvaluator":
        """An evaluator for `eval_cfg.blimp_dir` (or `suite_dir`, e.g. `eval_cfg.supplement_dir`)
        with the `eval` section's method, batch size and pair limit."""
        return cls(model_config, tokenizer, suite_dir if suite_dir is not None else eval_cfg.blimp_dir,
                   method=eval_cfg.method, batch_size=eval_cfg.batch_size,
                   max_pairs_per_file=eval_cfg.max_pairs_per_file, mesh=mesh, scorer=scorer, progress=progress)

    @property
    def num_pairs(self) -> int:
        return self.suite.num_pairs

    @property
    def plan(self):
        """The batches that score the whole suite (planned once)."""
        if self._plan is None:
            self._plan = self.scorer.plan(self._ids, self._words)
        return self._plan

    def _score_encoded(self, params, ids, words, progress: bool | Callable = False, plan=None):
        plan = plan or self.scorer.plan(ids, words)
        total, desc = len(plan.batches), f"{self.suite.name} ({len(plan.sequences)} sentences)"
        with (progress(total, desc) if callable(progress) else Progress(total, desc, enabled=progress)) as bar:
            _, result = self.scorer.run(params, plan, progress=bar)
        if result.truncated:
            logging.warning("%d sentence(s) longer than %d tokens were truncated before scoring.",
                            result.truncated, self.scorer.max_len)
        return result

    def score_sentences(self, params, sentences: Sequence[str]) -> np.ndarray:
        """Summed log p (natural log) of each sentence under this evaluator's method."""
        ids, words = encode_sentences(self.tokenizer, sentences, with_word_ids=self.method == "pll_word_l2r")
        return self._score_encoded(params, ids, words).scores

    def pair_scores(self, params) -> tuple[np.ndarray, np.ndarray, dict]:
        """(good scores, bad scores, run statistics) for every pair of the suite, in file order."""
        start = time.perf_counter()
        result = self._score_encoded(params, self._ids, self._words, progress=self.progress, plan=self.plan)
        stats = {
            "num_sentences": len(self.sentences),
            "num_copies": result.num_copies,
            "truncated": result.truncated,
            "seconds": time.perf_counter() - start,
        }
        return result.scores[self._good], result.scores[self._bad], stats

    def __call__(self, params) -> dict:
        good, bad, stats = self.pair_scores(params)
        report = accuracy_report(self.suite, good, bad, method=self.method)
        report["max_pairs_per_file"] = self.max_pairs_per_file
        report.update(stats)
        return report
