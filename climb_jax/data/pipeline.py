"""Host-side input pipeline: sampler indices -> rows of the memory-mapped arrays -> batches, prefetched.

A batch is a pure function of (sampler state, step), so the pipeline holds no position of its own: a
resumed run asks for the same steps and gets the same batches. A background thread keeps `prefetch`
batches ready so the accelerator does not wait on the host.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import numpy as np


class InputPipeline:
    """Batches of this process's share of the global batch, for steps `start, start+1, ...`."""

    def __init__(self, split, sampler, prefetch: int = 2):
        self.split = split
        self.sampler = sampler
        self.prefetch = max(int(prefetch), 0)
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()

    def batch(self, step: int) -> dict[str, np.ndarray]:
        idx = np.asarray(self.sampler.indices(step), np.int64)
        # Sorted reads are kinder to the page cache; the original order is restored afterwards.
        order = np.argsort(idx, kind="stable")
        rows = idx[order]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return {
            "input_ids": np.asarray(self.split.input_ids[rows], np.int32)[inverse],
            "pos_ids": np.asarray(self.split.pos_ids[rows], np.int8)[inverse],
            "source_ids": np.asarray(self.split.source_ids[rows], np.int32)[inverse],
            "index": idx,
            # Each row's difficulty score and the step's threshold (the train step's curriculum pytree).
            "score": np.asarray(self.sampler.row_scores(idx), np.float32),
            "threshold": np.float32(self.sampler.threshold(step)),
            # What the sampler allowed at this step (the fraction of rows it drew from) and its pacing
            # value: logged as they are, never recomputed.
            "data_fraction": np.float32(self.sampler.fraction(step)),
            "data_pace": np.float32(self.sampler.pace(step)),
        }

    def _worker(self, start: int, stop: int) -> None:
        for step in range(start, stop):
            if self._stop.is_set():
                return
            try:
                item = (step, self.batch(step))
            except Exception as e:  # noqa: BLE001 - surfaced in the consumer thread
                item = (step, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def iterate(self, start: int, stop: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yields (step, batch) for steps in [start, stop); call `close` (or `restart`) to stop early."""
        self.close()
        if self.prefetch == 0:
            for step in range(start, stop):
                yield step, self.batch(step)
            return
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._worker, args=(start, stop), daemon=True)
        self._thread.start()
        for expected in range(start, stop):
            step, item = self._queue.get()
            assert step == expected, (step, expected)
            if isinstance(item, Exception):
                raise item
            yield step, item

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None
