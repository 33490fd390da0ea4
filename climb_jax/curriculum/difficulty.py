"""Difficulty scorers for the data curriculum: one float32 score per training sequence, higher = harder.

Every scorer works on the packed arrays of a `climb_jax.data` split (`input_ids [N, L]`, `pos_ids`,
`source_ids [N]`, `positions [N]`) and is vectorised over them, so scoring a 10M-word corpus takes
seconds. The sampler (`climb_jax.data.sampler.BatchSampler`) sorts by these scores once.

  source_order_scores     the reference's `data_split`: a difficulty per source file (spoken or written first)
  ngram_scores            perplexity under an n-gram model of the training rows (default: the
                          reference's unsmoothed unigram MLE, special tokens included)
  self_perplexity_scores  the model's own perplexity, from a jitted per-row loss (`one_mask`)
  pseudo_perplexity_scores  the model's pseudo-perplexity, every position masked in turn (`pll`)
  child_age_scores        position of the sequence in its (age-ordered) source file
  uniform_scores          all equal (the reference's "random perplexity" before the first re-scoring)
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Mapping, Sequence

import numpy as np

from climb_jax.constants import BOS_ID, NUM_SPECIAL, PAD_ID
from climb_jax.errors import ConfigError, DataError

# --------------------------------------------------------------------------------------------
# Source order (the reference's DataSplitSorter).

# The reference's two orders over the BabyLM 2023 files, extended with the BabyLM 2024 names (`childes`,
# `simple_wiki`) at the level of their 2023 counterparts, and with babylm_mini's sources placed by kind:
# `overheard` (spontaneous conversation) beside bnc_spoken/switchboard, `scripts` (scripted speech)
# beside open_subtitles/qed, `brown_fiction` (edited narrative) beside the children's stories, and
# `brown_nonfiction` (expository prose) beside wikipedia.
SPOKEN_FIRST: dict[str, int] = {
    "aochildes": 1, "childes": 1,
    "bnc_spoken": 2, "switchboard": 2, "overheard": 2,
    "open_subtitles": 3, "qed": 3, "scripts": 3,
    "cbt": 4, "children_stories": 4, "brown_fiction": 4,
    "simple_wikipedia": 5, "simple_wiki": 5,
    "wikipedia": 6, "gutenberg": 6, "brown_nonfiction": 6,
}

GRAMMATICAL_FIRST: dict[str, int] = {
    "cbt": 1, "children_stories": 1, "brown_fiction": 1,
    "simple_wikipedia": 2, "simple_wiki": 2,
    "wikipedia": 3, "gutenberg": 3, "brown_nonfiction": 3,
    "open_subtitles": 4, "scripts": 4,
    "bnc_spoken": 5, "switchboard": 5, "overheard": 5,
    "qed": 6, "aochildes": 6, "childes": 6,
}

SOURCE_ORDERS: dict[str, Mapping[str, int]] = {"spoken_first": SPOKEN_FIRST, "grammatical_first": GRAMMATICAL_FIRST}

_SUFFIXES = (".txt", ".train", ".dev", ".test")


def normalise_source_name(name: str) -> str:
    """`aochildes.train`, `train/AOChildes.txt` and `aochildes` all name the source `aochildes`."""
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1].strip().lower()
    changed = True
    while changed:
        changed = False
        for suffix in _SUFFIXES:
            if base.endswith(suffix) and len(base) > len(suffix):
                base, changed = base[: -len(suffix)], True
    return base


def parse_source_difficulty(text: str) -> dict[str, float]:
    """Parses a custom mapping `"aochildes:1,switchboard:2,..."` (the `source_difficulty` field)."""
    mapping: dict[str, float] = {}
    for item in (p.strip() for p in str(text).split(",")):
        if not item:
            continue
        name, sep, value = item.rpartition(":")
        if not sep or not name.strip():
            raise ConfigError(
                f"data_curriculum.source_difficulty: '{item}' is not 'name:difficulty'; "
                "write e.g. 'aochildes:1,switchboard:2,brown_fiction:3'."
            )
        try:
            score = float(value)
        except ValueError:
            raise ConfigError(f"data_curriculum.source_difficulty: '{value}' in '{item}' is not a number.") from None
        if not math.isfinite(score):
            raise ConfigError(f"data_curriculum.source_difficulty: '{item}' is not a finite difficulty.")
        mapping[normalise_source_name(name)] = score
    if not mapping:
        raise ConfigError(
            "data_curriculum.source_order='custom' needs data_curriculum.source_difficulty, "
            "e.g. 'aochildes:1,switchboard:2,brown_fiction:3'."
        )
    return mapping


def source_difficulties(sources: Sequence[str], order: str, custom: str = "") -> np.ndarray:
    """The difficulty of each source id (float32 [S]) under a named order or a custom mapping."""
    if order == "custom":
        mapping: Mapping[str, float] = parse_source_difficulty(custom)
    elif order in SOURCE_ORDERS:
        mapping = SOURCE_ORDERS[order]
    else:
        raise ConfigError(
            f"data_curriculum.source_order='{order}' is not valid; choose one of: "
            f"{', '.join([*SOURCE_ORDERS, 'custom'])}."
        )
    names = [normalise_source_name(s) for s in sources]
    if order == "custom":
        unknown = sorted(set(mapping) - set(names))
        if unknown:
            raise ConfigError(
                f"data_curriculum.source_difficulty names source(s) the corpus lacks: {', '.join(unknown)}. "
                f"Sources found in the corpus: {', '.join(map(str, sources))}. Names given: "
                f"{', '.join(mapping)}. Fix the names (or data.corpus)."
            )
    missing = [s for s, n in zip(sources, names) if n not in mapping]
    if missing:
        raise ConfigError(
            f"the source order '{order}' gives no difficulty for the source(s) {', '.join(map(str, missing))}. "
            f"Sources found in the corpus: {', '.join(map(str, sources))}. The order names: "
            f"{', '.join(sorted(mapping))}. Use data_curriculum.source_order=custom with "
            "data_curriculum.source_difficulty='name:1,name:2,...' naming every source."
        )
    return np.asarray([mapping[n] for n in names], np.float32)


def source_order_scores(split, sources: Sequence[str], order: str = "spoken_first", custom: str = "") -> np.ndarray:
    """Each row's difficulty is its source's level under `order` (float32 [N])."""
    table = source_difficulties(sources, order, custom)
    source_ids = np.asarray(split.source_ids)
    if source_ids.size and (source_ids.min() < 0 or source_ids.max() >= len(table)):
        raise DataError(
            f"split '{getattr(split, 'name', '?')}' has source ids outside 0..{len(table) - 1}; "
            "the data cache does not match its manifest; delete the cache directory to rebuild it."
        )
    return table[source_ids.astype(np.int64)]


# --------------------------------------------------------------------------------------------
# Other static scorers.


def uniform_scores(num_rows: int) -> np.ndarray:
    """All rows equally hard (the reference's `n_gram=0`, "random perplexity")."""
    return np.ones(int(num_rows), np.float32)


def child_age_scores(split) -> np.ndarray:
    """The row's relative position in its source file (0 = first line).

    AO-CHILDES is ordered by the target child's age, so position is an age proxy for child-directed
    speech; for any other ordered file it is a plain line-position order.
    """
    positions = np.asarray(split.positions, np.float32)
    if positions.size and not np.all(np.isfinite(positions)):
        raise DataError(f"split '{getattr(split, 'name', '?')}' has non-finite positions; rebuild the data cache.")
    return positions.copy()


# --------------------------------------------------------------------------------------------
# n-gram perplexity.


def _dense(keys: np.ndarray) -> np.ndarray:
    """Dense ids 0..K-1 for int64 keys (equal keys, equal ids)."""
    return np.unique(keys, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _occurrence_counts(keys: np.ndarray) -> np.ndarray:
    """For every element, how often its key occurs in `keys`."""
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return counts[inverse.reshape(-1)]


def ngram_scores(input_ids, n: int, smoothing: float = 0.0, vocab_size: int | None = None, *,
                 include_specials: bool = True) -> np.ndarray:
    """Perplexity of each row under an n-gram model fitted on all rows (float32 [N]).

    The default is the reference's scorer (CLIMB (PyTorch) `NGramPerplexityScorer`, n = 1): an
    unsmoothed maximum-likelihood unigram model fitted on the training rows with every token but <pad>
    counted, special tokens included, and a row's score 2^(mean -log2 p) over its non-pad tokens.
    `include_specials=False` removes every special token (ids < NUM_SPECIAL) first; `smoothing` k > 0
    adds k to every count; n > 1 predicts each token from the previous n-1 kept tokens of its row, the
    history padded with `<s>` at the row start. With counts c over all rows and V' predictable tokens
    (vocab_size - 1 with specials, vocab_size - NUM_SPECIAL without),

        P(w | h) = (c(h, w) + k) / (c(h) + k V'),    perplexity(row) = exp(-mean log P over the row),

    which equals 2^(-mean log2 P). (For n > 1 the reference scored NLTK "everygrams" of every order
    up to n; that model is not reproduced: our higher orders are plain n-gram models.) The model is
    fitted on the rows it scores, so the unsmoothed probabilities are never zero. A row with no kept
    token gets perplexity 1. Vectorised: n-grams become exact int64 keys by repeated densification
    (`dense(prefix) * V + token`), counted with np.unique, so memory is a few int64 per token.
    """
    if n < 1:
        raise ConfigError(f"data_curriculum.n_gram={n}: an n-gram model needs n >= 1 (n_gram=0 means uniform scores).")
    if not (math.isfinite(smoothing) and smoothing >= 0):
        raise ConfigError(f"data_curriculum.ngram_smoothing={smoothing} must be a finite number >= 0.")
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise DataError(f"ngram_scores takes a [rows, length] array of token ids, got shape {ids.shape}.")
    num_rows = ids.shape[0]
    if vocab_size is None:
        vocab_size = int(ids.max()) + 1 if ids.size else NUM_SPECIAL + 1
    if ids.size and int(ids.max()) >= vocab_size:
        raise DataError(f"token id {int(ids.max())} is outside the vocabulary of {vocab_size} ids.")
    outcomes = vocab_size - 1 if include_specials else vocab_size - NUM_SPECIAL
    if vocab_size <= NUM_SPECIAL:
        raise ConfigError(f"a vocabulary of {vocab_size} ids has no non-special tokens to score.")

    valid = ids != PAD_ID if include_specials else ids >= NUM_SPECIAL
    tokens = ids[valid].astype(np.int64)  # row-major: rows stay contiguous and in order
    rows = np.nonzero(valid)[0]
    per_row = valid.sum(axis=1).astype(np.int64)
    if tokens.size == 0:
        return np.ones(num_rows, np.float32)
    row_start = np.concatenate([[0], np.cumsum(per_row)[:-1]])
    offset = np.arange(tokens.size, dtype=np.int64) - row_start[rows]  # position inside the row

    history = np.zeros(tokens.size, np.int64)  # dense id of the (n-1)-token history
    base = np.int64(vocab_size)
    for back in range(n - 1, 0, -1):
        previous = np.full(tokens.size, BOS_ID, np.int64)
        inside = offset >= back
        previous[inside] = tokens[np.nonzero(inside)[0] - back]
        history = _dense(history * base + previous)
    full = history * base + tokens

    c_ngram = _occurrence_counts(full).astype(np.float64)
    c_history = _occurrence_counts(history).astype(np.float64) if n > 1 else np.full(tokens.size, float(tokens.size))
    log_p = np.log(c_ngram + smoothing) - np.log(c_history + smoothing * outcomes)
    total = np.bincount(rows, weights=log_p, minlength=num_rows)
    mean = np.divide(total, per_row, out=np.zeros(num_rows), where=per_row > 0)
    return np.exp(-mean).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Self-perplexity (model-based).


def _takes_indices(score_fn: Callable) -> bool:
    try:
        params = inspect.signature(score_fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params)


MAX_LOSS = 80.0  # exp(80) is still finite in float32; a larger loss is a diverged model anyway


def _rows_to_score(num_rows: int, indices, batch_size: int):
    """(indices, their sorting order, the sorted indices): rows are scored in sorted order, which is
    kind to memory-mapped arrays, and the scores put back in the caller's order."""
    if batch_size <= 0:
        raise ConfigError(f"data_curriculum.rescore_batch_size={batch_size} must be positive.")
    idx = np.arange(num_rows, dtype=np.int64) if indices is None else np.asarray(indices, np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= num_rows):
        raise DataError(f"self-perplexity indices must lie in [0, {num_rows}); got {idx.min()}..{idx.max()}.")
    order = np.argsort(idx, kind="stable")
    return idx, order, idx[order]


def self_perplexity_scores(score_fn: Callable, input_ids, pos_ids, *, indices=None, batch_size: int = 256,
                           progress: bool = False) -> np.ndarray:
    """The model's perplexity exp(loss) on each row in `indices` (float32 [len(indices)]).

    `score_fn(ids[b, L] int32, pos[b, L] int8) -> loss float32[b]` is a jitted per-row MLM loss; if it
    takes a third positional argument it also gets the rows' indices (int64 [b]), so a row's random mask
    can depend on its index and not on its batch. Every call has the same shape `b = batch_size` (the
    last batch is padded by repeating its last row, and the padding's scores are dropped), so the
    function compiles once. Rows are read in sorted order (kind to memory-mapped arrays). The score is
    exp(loss), the reference's perplexity; the order, and so the curriculum, is the same as the loss's.
    """
    idx, order, sorted_idx = _rows_to_score(len(input_ids), indices, batch_size)
    if idx.size == 0:
        return np.zeros(0, np.float32)
    with_indices = _takes_indices(score_fn)
    out = np.empty(idx.size, np.float32)
    chunks = range(0, idx.size, batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="self-perplexity", unit="batch")
    for start in chunks:
        rows = sorted_idx[start:start + batch_size]
        count = rows.size
        if count < batch_size:
            rows = np.concatenate([rows, np.full(batch_size - count, rows[-1], np.int64)])
        ids = np.asarray(input_ids[rows], np.int32)
        pos = np.asarray(pos_ids[rows], np.int8)
        loss = score_fn(ids, pos, rows) if with_indices else score_fn(ids, pos)
        loss = np.asarray(loss, np.float32).reshape(-1)
        if loss.shape[0] != batch_size:
            raise DataError(f"score_fn returned {loss.shape[0]} losses for a batch of {batch_size} rows.")
        out[start:start + count] = loss[:count]
    if not np.all(np.isfinite(out)):
        bad = int(np.sum(~np.isfinite(out)))
        raise DataError(f"the model's loss is not finite on {bad} of {idx.size} re-scored sequences; "
                        "the run has diverged: resume from an earlier checkpoint with a lower learning rate.")
    result = np.empty(idx.size, np.float32)
    result[order] = np.exp(np.minimum(out, MAX_LOSS))
    return result


def pseudo_perplexity_scores(nll_fn: Callable, input_ids, *, indices=None, copies: int = 256,
                             progress: bool = False) -> np.ndarray:
    """The reference's pseudo-perplexity of each row in `indices` (float32 [len(indices)]).

    `nll_fn(ids[C, L] int32, positions[C] int32) -> nll float32[C]` scores masked copies: copy c is a
    row with `positions[c]` masked. Every non-special position of every row becomes one copy; copies
    are cut into calls of exactly `copies` (the last call padded with repeats whose results are
    dropped), so the function compiles once. A row's score is exp(sum of its copies' NLL / n), n its
    number of non-special positions (1 when it has none), as the reference's `compute_trainer_perplexity`.
    """
    idx, order, sorted_idx = _rows_to_score(len(input_ids), indices, copies)
    if idx.size == 0:
        return np.zeros(0, np.float32)
    length = int(np.shape(input_ids)[1])
    total = np.zeros(idx.size, np.float64)
    count = np.zeros(idx.size, np.int64)
    block = max(1, 4 * copies // length)  # rows read per step: a few calls' worth of copies
    pending_ids: list[np.ndarray] = []
    pending_pos: list[np.ndarray] = []
    pending_out: list[np.ndarray] = []
    have = 0

    def run(final: bool) -> int:
        nonlocal pending_ids, pending_pos, pending_out
        ids, pos, out = (np.concatenate(x) for x in (pending_ids, pending_pos, pending_out))
        done = 0
        while ids.shape[0] - done >= copies or (final and ids.shape[0] > done):
            take = min(copies, ids.shape[0] - done)
            sel = slice(done, done + take)
            c_ids, c_pos = ids[sel], pos[sel]
            if take < copies:
                pad = copies - take
                c_ids = np.concatenate([c_ids, np.repeat(c_ids[-1:], pad, axis=0)])
                c_pos = np.concatenate([c_pos, np.repeat(c_pos[-1:], pad)])
            nll = np.asarray(nll_fn(c_ids, c_pos), np.float64).reshape(-1)
            if nll.shape[0] != copies:
                raise DataError(f"the scoring function returned {nll.shape[0]} values for {copies} masked copies.")
            np.add.at(total, out[sel], nll[:take])
            done += take
        pending_ids, pending_pos, pending_out = [ids[done:]], [pos[done:]], [out[done:]]
        return ids.shape[0] - done

    starts = range(0, idx.size, block)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="self-perplexity (pll)", unit="block")
    for start in starts:
        rows = np.asarray(input_ids[sorted_idx[start:start + block]], np.int32)
        r, p = np.nonzero(rows >= NUM_SPECIAL)
        pending_ids.append(rows[r])
        pending_pos.append(p.astype(np.int32))
        pending_out.append(order[start + r])
        np.add.at(count, order[start:start + len(rows)], (rows >= NUM_SPECIAL).sum(axis=1))
        have += r.size
        if have >= copies:
            have = run(final=False)
    if have:
        run(final=True)
    mean = total / np.maximum(count, 1)
    if not np.all(np.isfinite(mean)):
        bad = int(np.sum(~np.isfinite(mean)))
        raise DataError(f"the model's loss is not finite on {bad} of {idx.size} re-scored sequences; "
                        "the run has diverged: resume from an earlier checkpoint with a lower learning rate.")
    return np.exp(np.minimum(mean, MAX_LOSS)).astype(np.float32)
