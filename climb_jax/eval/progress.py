"""Progress of a long evaluation: a bar on a terminal, one plain line per chunk elsewhere.

Scoring full BLiMP takes minutes on a CPU; without a sign of life a user cannot tell a slow run
from a stuck one. Carriage-return bars turn log files (the launch scripts', a batch job's) into one
unreadable line, so unless both stdout and the progress stream are terminals we print a plain line
every tenth of the work.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

# Plain-line mode: a line at every tenth of the work.
_PLAIN_CHUNKS = 10


class Progress:
    """`update(n)` after each unit of work; `close()` at the end (or use it as a context manager).

    Disabled, it does nothing: callers need not branch. Output goes to `stream` (default stderr,
    so a command's stdout stays its result)."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True, unit: str = "batches",
                 stream: TextIO | None = None):
        self.total = max(int(total), 0)
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(enabled) and self.total > 0
        self.done = 0
        self._bar = None
        self._next_line = 0
        self._start = time.perf_counter()
        if not self.enabled:
            return
        if is_terminal(self.stream) and is_terminal(sys.stdout):  # a log file gets plain lines
            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True,
                             leave=False)
        else:
            self._next_line = self._chunk()

    def _chunk(self) -> int:
        return max(1, -(-self.total // _PLAIN_CHUNKS))

    def update(self, n: int = 1) -> None:
        if not self.enabled:
            return
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if self.done >= self._next_line or self.done >= self.total:
            elapsed = time.perf_counter() - self._start
            print(f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%, "
                  f"{elapsed:.0f} s)", file=self.stream, flush=True)
            while self._next_line <= self.done:
                self._next_line += self._chunk()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False
