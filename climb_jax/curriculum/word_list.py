"""A vocabulary curriculum from a ranked word list (`vocab_curriculum.kind=word_list`).

A researcher's list orders words, not token ids: `word<TAB>rank`, one per line (`#` starts a comment),
e.g. age of acquisition in months. The allowed set at pace p holds the subword ids of every word whose
rank is at most `r_min + p * (r_max - r_min)` (`vocabulary.allowed_vocab`), so the list is turned once
into a rank per id: the lowest rank of a listed word that the tokenizer spells with that id (a word
is spelt as it starts a line and after a space, lower-case and capitalised). Ids that no listed word
covers enter at `vocab_curriculum.unlisted_pace`.

`derive` writes such a list from an age-ordered corpus source (AO-CHILDES by default): a word's rank is
where it first appears, as a fraction of the source's lines, the same age proxy as the `child_age`
data curriculum (`difficulty.child_age_scores`). `python -m climb_jax.word_list` runs it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from climb_jax.constants import NUM_SPECIAL
from climb_jax.errors import ConfigError, DataError

WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")  # letters, with one inner apostrophe (don't, child's)


def read(path: str) -> dict[str, float]:
    """{word: rank} from a TSV; one `error:` line for a missing or empty file, a bad rank or a repeat."""
    p = Path(path).expanduser()
    what = f"vocab_curriculum.word_list='{path}'"
    if not str(path):
        raise ConfigError("vocab_curriculum.kind='word_list' needs vocab_curriculum.word_list: a TSV of word<TAB>rank "
                          "(python -m climb_jax.word_list writes one from an age-ordered corpus).")
    if not p.is_file():
        raise ConfigError(f"{what} does not exist; give the path of a TSV of word<TAB>rank.")
    words: dict[str, float] = {}
    for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip():
            raise ConfigError(f"{what}, line {n}: expected 'word<TAB>rank', got {line[:60]!r}.")
        word, raw = parts[0].strip(), parts[1].strip()
        try:
            rank = float(raw)
        except ValueError:
            raise ConfigError(f"{what}, line {n}: the rank {raw!r} of '{word}' is not a number.") from None
        if not math.isfinite(rank):
            raise ConfigError(f"{what}, line {n}: the rank of '{word}' must be finite, got {raw!r}.")
        if word in words:
            raise ConfigError(f"{what}, line {n}: '{word}' is listed twice; keep one rank per word.")
        words[word] = rank
    if not words:
        raise ConfigError(f"{what} lists no words; give a TSV of word<TAB>rank.")
    return words


def from_config(config) -> dict[str, float] | None:
    """The run's word list (read and checked), or None for other kinds."""
    vc = config.vocab_curriculum
    return read(str(vc.word_list)) if vc.kind == "word_list" else None


def _spellings(word: str) -> list[str]:
    forms = {word, word.lower(), word[:1].upper() + word[1:].lower()}
    return [f for w in sorted(forms) for f in (w, " " + w)]


def ranks_for(words: dict[str, float], tokenizer, token_counts, path: str = "") -> np.ndarray:
    """float32 [V]: each id's rank (inf for ids no listed word spells; specials stay inf: always allowed).

    Refuses a list none of whose words the corpus has: a word counts as found when one of its
    spellings is a single token that occurs in the training rows."""
    vocab = len(tokenizer)
    ranks = np.full(vocab, np.inf, np.float32)
    counts = np.asarray(token_counts)
    found = 0
    items = sorted(words.items(), key=lambda kv: kv[1])
    spellings = [s for word, _ in items for s in _spellings(word)]
    encoded = tokenizer(spellings, add_special_tokens=False)["input_ids"]
    per_word = len(encoded) // max(len(items), 1)
    for i, (word, rank) in enumerate(items):
        hit = False
        for ids in encoded[i * per_word:(i + 1) * per_word]:
            ids = [t for t in ids if NUM_SPECIAL <= t < vocab]
            if len(ids) == 1 and counts[ids[0]] > 0:
                hit = True
            for t in ids:
                ranks[t] = min(ranks[t], rank)
        found += hit
    if not found:
        raise DataError(f"vocab_curriculum.word_list='{path}': none of its {len(words)} words occurs in the training "
                        "corpus as a word of the tokenizer; check the list's language and spelling (first words: "
                        f"{', '.join(w for w, _ in items[:5])}).")
    return ranks


def derive(lines, out: str | Path) -> int:
    """Writes `word<TAB>rank` for every word of the age-ordered `lines` (an iterable of str), its rank the
    position of the line where it first appears as a fraction of all lines (0 = the youngest child);
    returns the number of words."""
    lines = list(lines)
    first: dict[str, int] = {}
    for i, line in enumerate(lines):
        for w in WORD.findall(line.lower()):
            first.setdefault(w, i)
    if not first:
        raise DataError("the age-ordered source has no words; choose another --source.")
    span = max(len(lines) - 1, 1)
    rows = sorted(first.items(), key=lambda kv: (kv[1], kv[0]))
    text = "# word\tfirst appearance (fraction of the age-ordered source's lines)\n"
    text += "".join(f"{w}\t{i / span:.6f}\n" for w, i in rows)
    Path(out).expanduser().write_text(text, encoding="utf-8")
    return len(rows)
