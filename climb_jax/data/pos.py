"""Part-of-speech tags for every subword token, from NLTK's averaged-perceptron tagger (universal tagset).

Words are found with a regular expression that follows the Penn Treebank's conventions ("don't" ->
"do" "n't", "John's" -> "John" "'s", punctuation apart), because no sentence tokenizer data is
assumed to be installed. Each line is one sentence. A subword token gets the tag of the word its
first character belongs to (by character offsets); special tokens and whitespace-only tokens get X.

Two engines give the same tags:
  * "nltk": `PerceptronTagger.tag_sents`, the reference;
  * "fast" (default): the same model evaluated with numpy. The perceptron's greedy left-to-right
    decoding is run in lockstep over all sentences of a batch, one word position at a time; the 14
    features of each word are looked up as rows of a dense weight matrix and added in NLTK's order,
    so the scores are bit-identical and ties are broken as NLTK breaks them (the alphabetically
    last tag wins). About ten times faster than the reference, which matters for a 10M-word corpus.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from climb_jax.constants import POS_INDEX, POS_X
from climb_jax.errors import DataError

DOWNLOAD_HINT = "python -m nltk.downloader averaged_perceptron_tagger_eng universal_tagset"
TAGGER_RESOURCE = "taggers/averaged_perceptron_tagger_eng/"
UNIVERSAL_RESOURCE = "taggers/universal_tagset/en-ptb.map"

WORD_RE = re.compile(
    r"""
      \w+(?=n['\u2019]t\b)              # "do" of "don't", "ca" of "can't"
    | n['\u2019]t\b                     # the negation clitic
    | ['\u2019](?:s|re|ve|ll|d|m)\b     # the clitics 's 're 've 'll 'd 'm
    | \w+(?:[-.]\w+)*                   # words, hyphenated words, numbers such as 3.5
    | \.\.\.                            # an ellipsis
    | [^\w\s]                           # any other symbol, one at a time
    """,
    re.X | re.I,
)
# Characters the tagger knows under their Penn Treebank spelling.
_PTB_WORDS = {'"': "''", "\u201c": "``", "\u201d": "''", "\u2018": "`", "\u2019": "'"}


def _ptb(word: str) -> str:
    if "\u2019" in word or word in _PTB_WORDS:
        return _PTB_WORDS.get(word) or word.replace("\u2019", "'")
    return word


def split_words(text: str) -> tuple[list[str], list[int], list[int]]:
    """Words of one line in the tagger's spelling, with their character spans in `text`."""
    matches = list(WORD_RE.finditer(text))
    return ([_ptb(m.group()) for m in matches], [m.start() for m in matches], [m.end() for m in matches])


def _nltk_paths(nltk_data: str | None) -> list[str]:
    paths = [nltk_data] if nltk_data else []
    paths += [p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    return paths


BUNDLED_TAGGER = Path(__file__).parent / "sample" / "nltk_tagger.tar.xz"


def bundled_nltk_data() -> str | None:
    """The tagger shipped with the package (see sample/NOTICE.md), unpacked once into a user cache folder,
    so a fresh offline machine can run the smoke config. Used only when no installed tagger is found."""
    if not BUNDLED_TAGGER.exists():
        return None
    root = Path(os.environ.get("CLIMB_JAX_CACHE", Path.home() / ".cache" / "climb_jax")) / "nltk_data"
    if (root / TAGGER_RESOURCE).exists() and (root / UNIVERSAL_RESOURCE).exists():
        return str(root)
    import tarfile
    import tempfile

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="nltk_data.", dir=root.parent))
    with tarfile.open(BUNDLED_TAGGER) as tar:
        tar.extractall(tmp, filter="data")
    try:
        os.replace(tmp, root)
    except OSError:  # another process unpacked it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return str(root)


def _missing(what: str, nltk_data: str | None) -> DataError:
    where = nltk_data or os.environ.get("NLTK_DATA") or "(NLTK_DATA is not set)"
    return DataError(
        f"the NLTK {what} is not installed (looked in data.nltk_data / NLTK_DATA = {where} and NLTK's "
        f"default folders). Install it with `{DOWNLOAD_HINT}` (add `-d DIR` and set NLTK_DATA=DIR or "
        "data.nltk_data=DIR), or point NLTK_DATA at a folder that has taggers/averaged_perceptron_tagger_eng/ "
        "and taggers/universal_tagset/."
    )


class PosTagger:
    """NLTK's English perceptron tagger, returning universal tag ids (indices into `POS_TAGS`)."""

    def __init__(self, nltk_data: str | None = None, engine: str = "fast"):
        if engine not in ("fast", "nltk"):
            raise DataError(f"the part-of-speech tagger engine must be 'fast' or 'nltk', got {engine!r}")
        import nltk
        from nltk.tag.mapping import tagset_mapping
        from nltk.tag.perceptron import PerceptronTagger

        for p in reversed(_nltk_paths(nltk_data)):
            if p not in nltk.data.path:
                nltk.data.path.insert(0, p)
        try:
            nltk.data.find(TAGGER_RESOURCE)
        except LookupError:
            bundled = bundled_nltk_data()
            if bundled and bundled not in nltk.data.path:
                nltk.data.path.append(bundled)
        try:
            nltk.data.find(TAGGER_RESOURCE)
        except LookupError:
            raise _missing("part-of-speech tagger 'averaged_perceptron_tagger_eng'", nltk_data) from None
        try:
            nltk.data.find(UNIVERSAL_RESOURCE)
        except LookupError:
            raise _missing("tagset map 'universal_tagset'", nltk_data) from None
        self.engine = engine
        self.tagger = PerceptronTagger(lang="eng")
        mapping = tagset_mapping("en-ptb", "universal")
        self.universal = {t: POS_INDEX.get(mapping[t], POS_X) for t in self.tagger.model.classes}
        self._fast = _FastPerceptron(self.tagger) if engine == "fast" else None

    def identity(self) -> dict:
        """What the tags depend on: the tagger's files (for cache keys)."""
        import nltk

        root = Path(str(nltk.data.find(TAGGER_RESOURCE)))
        files = sorted(root.glob("*.json"))
        return {"tagger": [{"name": f.name, "size": f.stat().st_size} for f in files],
                "word_re": WORD_RE.pattern}

    def tag_flat(self, words: Sequence[str], lengths: np.ndarray) -> np.ndarray:
        """Universal tag ids (int8) of `words`: sentences of `lengths[i]` words each, concatenated."""
        lengths = np.asarray(lengths, np.int64)
        if self._fast is not None:
            return self._fast.universal_table(self.universal)[self._fast.tag_flat(words, lengths)]
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        sents = [list(words[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        out = [self.universal[t] for sent in self.tagger.tag_sents(sents) for _, t in sent]
        return np.asarray(out, np.int8)

    def tag_sents(self, sentences: Sequence[Sequence[str]]) -> np.ndarray:
        """Universal tag ids of every word of every sentence, flattened (int8)."""
        lengths = np.fromiter((len(x) for x in sentences), np.int64, len(sentences))
        return self.tag_flat([w for x in sentences for w in x], lengths)

    def tag_lines(self, lines: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(word start, word end, tag id) of every word of `lines` (one sentence each), flattened, with
        character offsets into the text `"\\n".join(lines)`."""
        text = "\n".join(lines)
        spans = np.array([m.span() for m in WORD_RE.finditer(text)], np.int64).reshape(-1, 2)
        words = [text[a:b] for a, b in spans.tolist()]
        if any(c in text for c in _PTB_WORDS):
            words = [_ptb(w) for w in words]
        line_base = np.concatenate([[0], np.cumsum([len(x) + 1 for x in lines])[:-1]]).astype(np.int64)
        line_of_word = np.searchsorted(line_base, spans[:, 0], side="right") - 1
        lengths = np.bincount(line_of_word, minlength=len(lines)) if len(lines) else np.zeros(0, np.int64)
        return spans[:, 0], spans[:, 1], self.tag_flat(words, lengths)

    def tag_encoding(self, text: str, encoding) -> np.ndarray:
        """Universal tag id of every token of a `tokenizers.Encoding` of `text` (X for special tokens)."""
        ws, we, tags = self.tag_lines([text])
        starts = np.fromiter((o[0] for o in encoding.offsets), np.int64, len(encoding.offsets))
        out = align_tags(starts, ws, we, tags)
        out[np.asarray(encoding.special_tokens_mask, bool)] = POS_X
        return out


def align_tags(token_starts: np.ndarray, word_starts: np.ndarray, word_ends: np.ndarray,
               word_tags: np.ndarray) -> np.ndarray:
    """The tag of the word each token starts in (X when it starts in none), vectorised.

    All offsets index the same text; words must be sorted and non-overlapping."""
    token_starts = np.asarray(token_starts, np.int64)
    if len(word_starts) == 0:
        return np.full(len(token_starts), POS_X, np.int8)
    idx = np.searchsorted(word_starts, token_starts, side="right") - 1
    safe = np.maximum(idx, 0)
    inside = (idx >= 0) & (token_starts < word_ends[safe])
    return np.where(inside, word_tags[safe], POS_X).astype(np.int8)


@functools.lru_cache(maxsize=4)
def load_tagger(nltk_data: str | None = None, engine: str = "fast") -> PosTagger:
    """A tagger per process and setting (loading the model takes a fraction of a second)."""
    return PosTagger(nltk_data, engine)


class _FastPerceptron:
    """`PerceptronTagger.tag` evaluated with numpy, bit-for-bit (see the module docstring)."""

    START = ("-START-", "-START2-")
    END = ("-END-", "-END2-")

    def __init__(self, tagger):
        model = tagger.model
        self.classes = sorted(model.classes)  # column order; argmax ties go to the last column
        cidx = {c: i for i, c in enumerate(self.classes)}
        C = len(self.classes)
        self.ext = self.classes + list(self.START)  # previous-tag values: a class or a start marker
        eidx = {t: i for i, t in enumerate(self.ext)}
        keys = list(model.weights)
        self.zero = len(keys)  # the all-zero row: a feature the model does not know
        W = np.zeros((len(keys) + 1, C), np.float64)
        rows, cols, vals = [], [], []
        for r, d in enumerate(model.weights.values()):
            rows += [r] * len(d)
            cols += map(cidx.__getitem__, d)
            vals += d.values()
        W[np.asarray(rows, np.int64), np.asarray(cols, np.int64)] = np.asarray(vals, np.float64)
        self.W = W
        row = {k: r for r, k in enumerate(keys)}
        self.row = row
        E = len(self.ext)
        z = self.zero
        self.t1 = np.array([row.get(f"i-1 tag {t}", z) for t in self.ext], np.int64)
        self.t2 = np.array([row.get(f"i-2 tag {t}", z) for t in self.ext], np.int64)
        self.t3 = np.array([[row.get(f"i tag+i-2 tag {a} {b}", z) for b in self.ext] for a in self.ext],
                           np.int64)
        # "i-1 tag+i word <tag> <word>": word -> {tag index: row}
        self.prev_word: dict[str, dict[int, int]] = {}
        prefix = "i-1 tag+i word "
        for k, r in row.items():
            if k.startswith(prefix):
                tag, _, word = k[len(prefix):].partition(" ")
                if tag in eidx:
                    self.prev_word.setdefault(word, {})[eidx[tag]] = r
        self.tagdict = {w: cidx[t] for w, t in tagger.tagdict.items() if t in cidx}
        self.bias = row.get("bias", z)
        self.normalize = tagger.normalize
        self.E = E
        self._uni_cache: tuple | None = None

    def universal_table(self, universal: dict[str, int]) -> np.ndarray:
        if self._uni_cache is None:
            self._uni_cache = np.array([universal[c] for c in self.classes], np.int8)
        return self._uni_cache

    def tag_flat(self, words: Sequence[str], lengths: np.ndarray) -> np.ndarray:
        """PTB class indices of `words` (sentences of `lengths` words, concatenated)."""
        n_words = len(words)
        S = len(lengths)
        if n_words == 0:
            return np.zeros(0, np.int64)
        row, z = self.row, self.zero
        # Raw words as ids; normalised context tokens (and the start/end markers) per distinct word.
        raw_vocab: dict[str, int] = {}
        rget = raw_vocab.setdefault
        raw = np.fromiter((rget(w, len(raw_vocab)) for w in words), np.int64, n_words)
        raw_words = list(raw_vocab)
        ctx_vocab: dict[str, int] = {t: i for i, t in enumerate(self.START + self.END)}
        cget = ctx_vocab.setdefault
        ctx_of_raw = np.fromiter((cget(self.normalize(w), len(ctx_vocab)) for w in raw_words), np.int64,
                                 len(raw_words))
        ctx_words = list(ctx_vocab)
        # Flat layout: sentence s occupies ctx[cstart[s] : cstart[s] + len + 4] = START START2 words END END2.
        wstart = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        cstart = wstart + 4 * np.arange(S)
        sent_of_word = np.repeat(np.arange(S), lengths)
        ctx = np.empty(n_words + 4 * S, np.int64)
        ctx[cstart] = 0
        ctx[cstart + 1] = 1
        ctx[cstart + 2 + lengths] = 2
        ctx[cstart + 3 + lengths] = 3
        ctx[np.arange(n_words) + 4 * sent_of_word + 2] = ctx_of_raw[raw]

        def table(fmt, words, key=lambda w: w):
            return np.array([row.get(fmt + key(w), z) for w in words], np.int64)

        f_suffix = table("i suffix ", raw_words, lambda w: w[-3:])[raw]
        f_pref1 = table("i pref1 ", raw_words, lambda w: w[0] if w else "")[raw]
        word_t = table("i word ", ctx_words)
        m1_t = table("i-1 word ", ctx_words)
        m1s_t = table("i-1 suffix ", ctx_words, lambda w: w[-3:])
        m2_t = table("i-2 word ", ctx_words)
        p1_t = table("i+1 word ", ctx_words)
        p1s_t = table("i+1 suffix ", ctx_words, lambda w: w[-3:])
        p2_t = table("i+2 word ", ctx_words)
        pw = np.full((len(ctx_words), self.E), z, np.int64)
        for i, w in enumerate(ctx_words):
            d = self.prev_word.get(w)
            if d:
                for t, r in d.items():
                    pw[i, t] = r
        td_t = np.array([self.tagdict.get(w, -1) for w in raw_words], np.int64)

        # Word j of sentence s sits at ctx index cstart[s] + 2 + j and raw index wstart[s] + j.
        order = np.argsort(-lengths, kind="stable")  # longest first: the active set is a prefix
        sorted_len = lengths[order]
        w_base, c_base = wstart[order], cstart[order] + 2
        out = np.empty(n_words, np.int64)
        prev = np.full(S, len(self.classes), np.int64)  # "-START-"
        prev2 = np.full(S, len(self.classes) + 1, np.int64)  # "-START2-"
        W = self.W
        C = len(self.classes)
        for i in range(int(sorted_len[0])):
            n = int(np.searchsorted(-sorted_len, -i, side="left"))  # sentences longer than i
            wi = w_base[:n] + i
            ci = c_base[:n] + i
            p, p2 = prev[:n], prev2[:n]
            c0 = ctx[ci]
            acc = W[np.full(n, self.bias)]
            acc += W[f_suffix[wi]]
            acc += W[f_pref1[wi]]
            acc += W[self.t1[p]]
            acc += W[self.t2[p2]]
            acc += W[self.t3[p, p2]]
            acc += W[word_t[c0]]
            acc += W[pw[c0, p]]
            cm1 = ctx[ci - 1]
            acc += W[m1_t[cm1]]
            acc += W[m1s_t[cm1]]
            acc += W[m2_t[ctx[ci - 2]]]
            cp1 = ctx[ci + 1]
            acc += W[p1_t[cp1]]
            acc += W[p1s_t[cp1]]
            acc += W[p2_t[ctx[ci + 2]]]
            pred = C - 1 - np.argmax(acc[:, ::-1], axis=1)
            td = td_t[raw[wi]]
            tag = np.where(td >= 0, td, pred)
            out[wi] = tag
            prev2[:n] = p
            prev[:n] = tag
        return out
