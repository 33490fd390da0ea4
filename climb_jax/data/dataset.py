"""`prepare_data`: corpus -> tokenizer -> token and POS arrays, cached on disk and memory-mapped.

Stages (each logged, each with a progress bar):
  1. find the corpus's sources and fingerprint them (path, size, mtime, SHA-256 of every file);
  2. if the cache holds a complete entry for this fingerprint, map it and return;
  3. otherwise, under a lock and in a temporary folder: train the BPE on the training lines; tokenize
     and POS-tag every split (in worker processes when the corpus is large enough to pay for them);
     pack each source into rows `<s> ... </s>`; with `token_order="frequency"` re-number the
     vocabulary by the training rows' token counts; write the arrays, the tokenizer and
     `manifest.json` (last), and publish the folder with one rename.

The arrays are `.npy` files opened with `mmap_mode="r"`: a training process pages in the rows it
samples and never holds the corpus in memory.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import json
import multiprocessing
import os
import shutil
import sys
import time
import types
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from absl import logging
from tqdm.auto import tqdm

from climb_jax.data import cache, corpus as corpus_lib, packing, pos as pos_lib, tokenizer as tok_lib
from climb_jax.data.tokenizer import load_tokenizer  # noqa: F401 - part of this module's interface
from climb_jax.errors import DataError

ARRAYS = {"input_ids": np.int32, "pos_ids": np.int8, "source_ids": np.int16, "positions": np.float32}
MODEL_MAX_LENGTH = 512  # the tokenizer's advertised limit: the encoder's position table
_CHUNK_LINES = 4096  # lines per tokenize+tag work item
_CHUNK_CHARS = 400_000  # ... or fewer, when the lines are long
_AUTO_WORKERS_MIN_BYTES = 16 << 20  # below this much text, worker start-up costs more than it saves
_MAX_AUTO_WORKERS = 16


@dataclasses.dataclass(frozen=True)
class Split:
    """One split's rows; every array is memory-mapped read-only."""

    name: str
    input_ids: np.ndarray  # [N, L] int32, each row `<s> ... </s>`, no padding
    pos_ids: np.ndarray  # [N, L] int8, indices into POS_TAGS (X for specials)
    source_ids: np.ndarray  # [N] int16, index into PreparedData.sources
    positions: np.ndarray  # [N] float32, relative position (0..1) of the row inside its source

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclasses.dataclass(frozen=True)
class PreparedData:
    directory: Path
    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    train: Split
    dev: Split
    test: Split | None
    sources: tuple[str, ...]
    token_counts: np.ndarray  # [V] int64, occurrences of each id in train.input_ids
    manifest: dict
    fingerprint: str


# --------------------------------------------------------------------------------------------
# Tokenize + tag, in this process or in workers.

_WORKER: dict[str, Any] = {}


@dataclasses.dataclass
class Encoded:
    """Tokens of a run of lines: flat ids and POS ids, and the token count of each line."""

    ids: np.ndarray
    pos: np.ndarray
    line_lengths: np.ndarray
    words: int
    chars: int


def encode_lines(lines: list[str], tok, tagger: pos_lib.PosTagger) -> Encoded:
    """Token ids (no specials) and per-token universal POS ids of each line."""
    if not lines:
        return Encoded(np.zeros(0, np.int32), np.zeros(0, np.int8), np.zeros(0, np.int32), 0, 0)
    encs = tok.encode_batch(lines, add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) for e in encs), np.int64, len(encs))
    total = int(lengths.sum())
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encs), np.int32, total)
    starts = np.fromiter((o[0] for e in encs for o in e.offsets), np.int64, total)
    line_base = np.concatenate([[0], np.cumsum([len(x) + 1 for x in lines])[:-1]]).astype(np.int64)
    starts += np.repeat(line_base, lengths)
    ws, we, tags = tagger.tag_lines(lines)
    pos = pos_lib.align_tags(starts, ws, we, tags)
    words = sum(len(x.split()) for x in lines)
    chars = int(line_base[-1]) + len(lines[-1]) + 1
    return Encoded(ids, pos, lengths.astype(np.int32), words, chars)


def _worker_init(tokenizer_json: str, nltk_data: str | None) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker
    from tokenizers import Tokenizer

    _WORKER["tok"] = Tokenizer.from_str(tokenizer_json)
    _WORKER["tagger"] = pos_lib.load_tagger(nltk_data)


def _worker_encode(item: tuple[int, list[str]]) -> tuple[int, Encoded]:
    index, lines = item
    return index, encode_lines(lines, _WORKER["tok"], _WORKER["tagger"])


def _chunks(sources: list[corpus_lib.Source], opts, report) -> Iterator[tuple[int, list[str]]]:
    """(source index, lines) work items, in corpus order; every source yields at least one item."""
    for i, src in enumerate(sources):
        buf, chars = [], 0
        for line in src.lines(opts, report):
            buf.append(line)
            chars += len(line)
            if len(buf) >= _CHUNK_LINES or chars >= _CHUNK_CHARS:
                yield i, buf
                buf, chars = [], 0
        yield i, buf


@contextlib.contextmanager
def _plain_main() -> Iterator[None]:
    """A blank `__main__` while worker processes are spawned.

    A spawned process normally re-imports the parent's main script (or module) before it runs any
    task; the workers need only this module. With a blank `__main__` they start faster, do not load
    the training program (and JAX) again, and a script that calls `prepare_data` without an
    `if __name__ == "__main__":` guard does not recurse."""
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


class Encoder:
    """Runs `encode_lines` over a split's chunks, in order, here or in a process pool."""

    def __init__(self, tok, nltk_data: str | None, workers: int):
        self.tok = tok
        self.nltk_data = nltk_data
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _local(self, items: Iterable[tuple[int, list[str]]]) -> Iterator[tuple[int, Encoded]]:
        tagger = pos_lib.load_tagger(self.nltk_data)
        for index, lines in items:
            yield index, encode_lines(lines, self.tok, tagger)

    def _start(self) -> None:
        # "spawn": the calling process may run JAX threads, which fork() would copy mid-flight.
        ctx = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_init,
                                         initargs=(self.tok.to_str(), self.nltk_data))
        # Spawned processes start at `submit`; start them all now, while __main__ is a blank module.
        with _plain_main():
            ready = [self._pool.submit(os.getpid) for _ in range(self.workers)]
        try:
            for f in ready:
                f.result()
        except BrokenProcessPool as e:
            self.close()
            raise DataError(f"a tokenize+tag worker process failed to start ({e}); set data.num_workers=1 to "
                            "prepare the data in this process.") from None

    def _pooled(self, items: Iterable[tuple[int, list[str]]]) -> Iterator[tuple[int, Encoded]]:
        if self._pool is None:
            self._start()
        pending: collections.deque = collections.deque()
        for item in items:  # at most 2 items per worker in flight: bounded memory
            pending.append(self._pool.submit(_worker_encode, item))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def run(self, items):
        return self._pooled(items) if self.workers > 1 else self._local(items)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


@dataclasses.dataclass
class SplitStats:
    lines: int = 0
    words: int = 0
    tokens: int = 0
    rows: int = 0
    dropped_tokens: int = 0
    per_source: dict = dataclasses.field(default_factory=dict)


def _encode_split(split: str, sources: list[corpus_lib.Source], source_index: dict[str, int], encoder: Encoder,
                  opts, report, seq_len: int, parts_dir: Path, progress: bool) -> tuple[list[Path], SplitStats]:
    """Tokenizes, tags and packs one split's sources; rows go to per-source part files."""
    stats = SplitStats()
    parts: list[Path] = []
    parts_dir.mkdir(parents=True, exist_ok=True)
    total = sum(s.approx_bytes for s in sources)
    bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=f"{split}: tokenize + tag",
               disable=not progress, leave=False)
    acc: list[Encoded] = []
    current = 0

    def flush(i: int) -> None:
        src = sources[i]
        ids = np.concatenate([e.ids for e in acc]) if acc else np.zeros(0, np.int32)
        pos = np.concatenate([e.pos for e in acc]) if acc else np.zeros(0, np.int8)
        lens = np.concatenate([e.line_lengths for e in acc]) if acc else np.zeros(0, np.int32)
        words = sum(e.words for e in acc)
        rows = packing.pack_source(ids, pos, lens, seq_len)
        path = parts_dir / f"{i:04d}.npz"
        np.savez(path, input_ids=rows.input_ids, pos_ids=rows.pos_ids, positions=rows.positions,
                 source_ids=np.full(len(rows), source_index[src.name], np.int16))
        parts.append(path)
        stats.lines += len(lens)
        stats.words += words
        stats.tokens += len(ids)
        stats.rows += len(rows)
        stats.dropped_tokens += rows.dropped_tokens
        stats.per_source[src.name] = {"origin": src.origin, "lines": int(len(lens)), "words": int(words),
                                      "tokens": int(len(ids)), "rows": int(len(rows))}
        if src.word_limit:
            stats.per_source[src.name]["word_limit"] = int(src.word_limit)

    for i, enc in encoder.run(_chunks(sources, opts, report)):
        if i != current:
            flush(current)
            acc, current = [], i
        acc.append(enc)
        bar.update(enc.chars)
    if sources:
        flush(current)
    bar.close()
    return parts, stats


def _assemble(split: str, parts: list[Path], out_dir: Path, seq_len: int, remap: np.ndarray | None) -> dict:
    """Concatenates part files into the split's `.npy` arrays (written through memory maps)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = []
    for p in parts:
        with np.load(p) as z:
            sizes.append(z["source_ids"].shape[0])
    n = int(sum(sizes))
    shapes = {"input_ids": (n, seq_len), "pos_ids": (n, seq_len), "source_ids": (n,), "positions": (n,)}
    records = {}
    for name, dtype in ARRAYS.items():
        path = out_dir / f"{name}.npy"
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shapes[name])
        offset = 0
        for p, k in zip(parts, sizes):
            if k:
                with np.load(p) as z:
                    block = z[name]
                mm[offset:offset + k] = remap[block] if (remap is not None and name == "input_ids") else block
            offset += k
        mm.flush()
        del mm
        records[f"{split}/{name}.npy"] = cache.array_record(path)
    return records


# --------------------------------------------------------------------------------------------
# The cache entry.


def _settings(data_cfg, corpus: corpus_lib.Corpus) -> dict:
    """Every setting that changes the prepared data (and nothing that does not)."""
    import nltk
    import tokenizers

    s = {
        "seq_len": int(data_cfg.seq_len),
        "vocab_size": int(data_cfg.vocab_size),
        "token_order": str(data_cfg.token_order),
        "max_train_words": int(data_cfg.max_train_words),
        "max_eval_words": int(data_cfg.max_eval_words),
        "on_decode_error": str(data_cfg.on_decode_error),
        "max_line_chars": int(data_cfg.max_line_chars),
        "bpe_min_frequency": tok_lib.MIN_FREQUENCY,
        "tokenizers": tokenizers.__version__,
        "nltk": nltk.__version__,
        "word_re": pos_lib.WORD_RE.pattern,
        "model_max_length": MODEL_MAX_LENGTH,
    }
    if corpus.layout == "huggingface":
        s["hf_subset"] = str(data_cfg.get("hf_subset", "") or "")
    return s


def _check_settings(data_cfg) -> None:
    if str(data_cfg.token_order) not in ("frequency", "bpe"):
        raise DataError(f"data.token_order='{data_cfg.token_order}' is not valid; use 'frequency' or 'bpe'.")
    if int(data_cfg.seq_len) < 8:
        raise DataError(f"data.seq_len={data_cfg.seq_len} is too small; use at least 8.")
    if int(data_cfg.vocab_size) < 300:
        raise DataError(f"data.vocab_size={data_cfg.vocab_size} is too small for a byte-level BPE "
                        "(261 base tokens); use at least 300.")


def _workers(data_cfg, nbytes: int) -> int:
    n = int(data_cfg.get("num_workers", 0) or 0)
    if n > 0:
        return n
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cores, _MAX_AUTO_WORKERS) if (cores > 1 and nbytes >= _AUTO_WORKERS_MIN_BYTES) else 1


def _nltk_data(data_cfg) -> str | None:
    v = data_cfg.get("nltk_data", None)
    return str(v) if v else None


def _open(directory: Path, manifest: dict, key: str) -> PreparedData:
    def split(name: str) -> Split:
        arrs = {k: np.load(directory / name / f"{k}.npy", mmap_mode="r") for k in ARRAYS}
        return Split(name=name, **arrs)

    tokenizer = load_tokenizer(directory / "tokenizer")
    return PreparedData(
        directory=directory, tokenizer=tokenizer, train=split("train"), dev=split("dev"),
        test=split("test") if manifest["splits"].get("test") else None,
        sources=tuple(manifest["sources"]),
        token_counts=np.load(directory / "token_counts.npy", mmap_mode="r"),
        manifest=manifest, fingerprint=key,
    )


def prepare_data(data_cfg, cache_dir, *, progress: bool = True) -> PreparedData:
    """The prepared data for `data_cfg` (the config's `data` section), built into `cache_dir` if needed."""
    _check_settings(data_cfg)
    cache_dir = Path(str(cache_dir))
    corpus = corpus_lib.find_corpus(data_cfg)
    t0 = time.time()
    files = [cache.file_identity(p) for p in corpus.files]
    key = cache.fingerprint({
        "format_version": cache.FORMAT_VERSION,
        "corpus": {"layout": corpus.layout, "files": files, "identity": corpus.identity},
        "settings": _settings(data_cfg, corpus),
    })
    logging.info("corpus %s (%s): %d files, %.1f MB, fingerprint %s (%.1f s)", corpus.root, corpus.layout,
                 len(files), sum(f["size"] for f in files) / 1e6, key[:16], time.time() - t0)
    cache.require_writable(cache_dir)
    final = cache.entry_dir(cache_dir, key)
    manifest, why = cache.check_entry(final, key)
    if manifest is not None:
        return _open(final, manifest, key)
    with cache.locked(cache_dir, key):
        manifest, why = cache.check_entry(final, key)  # another process may have built it meanwhile
        if manifest is not None:
            return _open(final, manifest, key)
        if why != "absent":
            logging.warning("data cache entry is not usable and will be rebuilt: %s", why)
        cache.remove_leftovers(cache_dir, key)
        tmp = cache.temp_dir(cache_dir, key)
        try:
            manifest = _build(data_cfg, corpus, files, key, tmp, progress)
            cache.publish(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        manifest, why = cache.check_entry(final, key)
        if manifest is None:
            raise DataError(f"the data cache entry {final} failed its check right after it was written: {why}. "
                            "Check the disk (space, permissions) and try again.")
        return _open(final, manifest, key)


def _build(data_cfg, corpus: corpus_lib.Corpus, files: list[dict], key: str, tmp: Path, progress: bool) -> dict:
    t_start = time.time()
    opts = corpus_lib.read_options(data_cfg)
    seq_len, vocab_size = int(data_cfg.seq_len), int(data_cfg.vocab_size)
    nltk_data = _nltk_data(data_cfg)
    pos_lib.load_tagger(nltk_data)  # fail early (with the install command) when the tagger is missing
    bar = (lambda xs: tqdm(xs, desc="counting words", unit="file", leave=False)) if progress else iter
    corpus_lib.apply_word_budget(corpus.splits["train"], int(data_cfg.max_train_words), opts, bar)
    for split in ("dev", "test"):
        corpus_lib.apply_word_budget(corpus.splits[split], int(data_cfg.max_eval_words), opts, bar)
    sources = corpus.sources
    source_index = {s: i for i, s in enumerate(sources)}
    timings = {}

    # 1. The tokenizer, trained on the training lines.
    t = time.time()
    train_sources = corpus.splits["train"]
    n_lines = [0]

    def training_lines():
        reading = tqdm(total=corpus.approx_bytes("train") or None, unit="B", unit_scale=True,
                       desc="train: BPE", disable=not progress, leave=False)
        for src in train_sources:
            for line in src.lines(opts):
                n_lines[0] += 1
                reading.update(len(line) + 1)
                yield line
        reading.close()

    tok = tok_lib.train_bpe(training_lines(), vocab_size)
    if n_lines[0] == 0:
        raise DataError(f"the corpus {corpus.root} has no training text: its training files hold only blank lines.")
    timings["tokenizer_s"] = time.time() - t
    if tok.get_vocab_size() < vocab_size:
        logging.warning("the training text supports only %d of the %d tokens asked for (data.vocab_size): merges "
                        "must occur at least %d times. The vocabulary is smaller.", tok.get_vocab_size(),
                        vocab_size, tok_lib.MIN_FREQUENCY)
    logging.info("trained a byte-level BPE of %d tokens on %d lines in %.1f s", tok.get_vocab_size(), n_lines[0],
                 timings["tokenizer_s"])

    workers = _workers(data_cfg, corpus.approx_bytes("train"))
    report = corpus_lib.DecodeReport()
    encoder = Encoder(tok, nltk_data, workers)
    split_stats: dict[str, SplitStats] = {}
    parts: dict[str, list[Path]] = {}
    try:
        # 2. The training split with the raw BPE ids; counts; re-numbering.
        t = time.time()
        parts["train"], split_stats["train"] = _encode_split("train", train_sources, source_index, encoder, opts,
                                                             report, seq_len, tmp / "parts" / "train", progress)
        timings["train_encode_s"] = time.time() - t
        if split_stats["train"].rows == 0:
            raise DataError(
                f"the training split ({split_stats['train'].tokens} tokens) yields no sequence of "
                f"data.seq_len={seq_len} tokens: every source is shorter than one sequence. Use more text "
                "(data.max_train_words) or a shorter data.seq_len."
            )
        V = tok.get_vocab_size(with_added_tokens=True)
        raw_counts = np.zeros(V, np.int64)
        for p in parts["train"]:
            with np.load(p) as z:
                raw_counts += np.bincount(z["input_ids"].ravel(), minlength=V)[:V]
        remap = None
        if str(data_cfg.token_order) == "frequency":
            remap = tok_lib.frequency_order(raw_counts)
            tok = tok_lib.renumber(tok, remap)
            counts = np.zeros(V, np.int64)
            counts[remap] = raw_counts
            remap = remap.astype(np.int32)
        else:
            counts = raw_counts
        hf_tok = tok_lib.to_transformers(tok, MODEL_MAX_LENGTH)
        hf_tok.save_pretrained(str(tmp / "tokenizer"))
        np.save(tmp / "token_counts.npy", counts)

        # 3. Dev and test. The encoder keeps the raw BPE (its workers need no restart): re-numbering
        # changes ids, never token strings, so the final ids are `remap[raw id]` for every split.
        for split in ("dev", "test"):
            if split == "test" and not corpus.splits["test"]:
                continue
            t = time.time()
            parts[split], split_stats[split] = _encode_split(split, corpus.splits[split], source_index, encoder,
                                                             opts, report, seq_len, tmp / "parts" / split, progress)
            timings[f"{split}_encode_s"] = time.time() - t
    finally:
        encoder.close()

    # 4. Final arrays, checksums, manifest (last).
    arrays = {}
    for split, split_parts in parts.items():
        arrays.update(_assemble(split, split_parts, tmp / split, seq_len, remap))
    shutil.rmtree(tmp / "parts")
    arrays["token_counts.npy"] = cache.array_record(tmp / "token_counts.npy")
    checksums = {str(p.relative_to(tmp)): cache.sha256_file(p) for p in sorted((tmp / "tokenizer").iterdir())}
    checksums["token_counts.npy"] = cache.sha256_file(tmp / "token_counts.npy")
    decode = report.as_dict()
    for origin, rec in decode.items():
        logging.warning("%s: %d undecodable bytes on %d lines were replaced by U+FFFD", origin, rec["bytes"],
                        rec["lines"])
    for split, st in split_stats.items():
        logging.info("%s: %d sources, %d lines, %d words, %d tokens, %d sequences of %d (%d tokens dropped)",
                     split, len(st.per_source), st.lines, st.words, st.tokens, st.rows, seq_len, st.dropped_tokens)
    timings["total_s"] = time.time() - t_start
    manifest = {
        "format_version": cache.FORMAT_VERSION,
        "fingerprint": key,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "corpus": {"spec": corpus.spec, "root": corpus.root, "layout": corpus.layout, "files": files,
                   "identity": corpus.identity, "skipped_empty": corpus.skipped},
        "settings": _settings(data_cfg, corpus),
        "seq_len": seq_len,
        "vocab_size": int(tok.get_vocab_size(with_added_tokens=True)),
        "vocab_size_requested": vocab_size,
        "token_order": str(data_cfg.token_order),
        "sources": list(sources),
        "splits": {k: dataclasses.asdict(v) for k, v in split_stats.items()},
        "decode_errors": decode,
        "workers": workers,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "arrays": arrays,
        "checksums": checksums,
    }
    cache.write_manifest(tmp, manifest)
    logging.info("prepared data in %.1f s: %s", timings["total_s"], json.dumps(manifest["timings"]))
    return manifest
