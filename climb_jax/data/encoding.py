"""Tokenize and POS-tag a split's sources, in this process or in a pool of worker processes.

The unit of work is a chunk of consecutive lines of one source; chunks come back in corpus order, and
`encode_sources` joins them into one `Encoded` per source (flat token and tag ids, no special tokens,
and every line's token count), which the build stage packs into rows.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import multiprocessing
import os
import sys
import types
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from climb_jax.data import pos as pos_lib
from climb_jax.data.sources import Source
from climb_jax.errors import DataError

CHUNK_LINES = 4096  # lines per tokenize+tag work item
CHUNK_CHARS = 400_000  # ... or fewer, when the lines are long
AUTO_WORKERS_MIN_BYTES = 16 << 20  # below this much text, worker start-up costs more than it saves
MAX_AUTO_WORKERS = 16

_WORKER: dict[str, Any] = {}


@dataclasses.dataclass
class Encoded:
    """Tokens of a run of lines: flat ids and POS ids, and the token count of each line."""

    ids: np.ndarray
    pos: np.ndarray
    line_lengths: np.ndarray
    words: int
    chars: int

    @classmethod
    def join(cls, parts: list["Encoded"]) -> "Encoded":
        if not parts:
            return cls(np.zeros(0, np.int32), np.zeros(0, np.int8), np.zeros(0, np.int32), 0, 0)
        return cls(np.concatenate([e.ids for e in parts]), np.concatenate([e.pos for e in parts]),
                   np.concatenate([e.line_lengths for e in parts]), sum(e.words for e in parts),
                   sum(e.chars for e in parts))


def encode_lines(lines: list[str], tok, tagger: pos_lib.PosTagger) -> Encoded:
    """Token ids (no specials) and per-token universal POS ids of each line."""
    if not lines:
        return Encoded.join([])
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


def chunks(sources: list[Source], opts, report) -> Iterator[tuple[int, list[str]]]:
    """(source index, lines) work items, in corpus order; every source yields at least one item."""
    for i, src in enumerate(sources):
        buf, chars = [], 0
        for line in src.lines(opts, report):
            buf.append(line)
            chars += len(line)
            if len(buf) >= CHUNK_LINES or chars >= CHUNK_CHARS:
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


def worker_count(data_cfg, nbytes: int) -> int:
    """`data.num_workers`, or (0) one per core when the text is large enough to pay for the start-up."""
    n = int(data_cfg.get("num_workers", 0) or 0)
    if n > 0:
        return n
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cores, MAX_AUTO_WORKERS) if (cores > 1 and nbytes >= AUTO_WORKERS_MIN_BYTES) else 1


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


def encode_sources(split: str, sources: list[Source], encoder: Encoder, opts, report,
                   progress: bool) -> Iterator[tuple[int, Encoded]]:
    """(source index, the source's whole `Encoded`) for every source of a split, in order."""
    bar = tqdm(total=sum(s.approx_bytes for s in sources) or None, unit="B", unit_scale=True,
               desc=f"{split}: tokenize + tag", disable=not progress, leave=False)
    acc: list[Encoded] = []
    current = 0
    for i, enc in encoder.run(chunks(sources, opts, report)):
        if i != current:
            yield current, Encoded.join(acc)
            acc, current = [], i
        acc.append(enc)
        bar.update(enc.chars)
    if sources:
        yield current, Encoded.join(acc)
    bar.close()
