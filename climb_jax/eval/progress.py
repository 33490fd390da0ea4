"""Progress of a long evaluation, and the point where it yields to a stop signal.

Scoring full BLiMP or the reference's dev sample takes minutes to hours on a CPU; without a sign of
life a user cannot tell a slow run from a stuck one. Carriage-return bars turn log files (the launch
scripts', a batch job's) into one unreadable line, so unless a bar is wanted and both stdout and the
progress stream are terminals we print a plain line every tenth of the work (and at least once a
minute), with the time left at the rate so far. A training run asks for lines no closer than
`every_s` apart: its measures of a few seconds stay one summary line in its log.

The same per-batch call is where an evaluation yields: a preempted VM has about 30 s between SIGTERM
and the kill, far less than a long evaluation, so `update` raises `Interrupted` as soon as the `stop`
callable reports a reason. The caller saves the training state and evaluates again on resume.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from tqdm import tqdm

# Plain-line mode: a line at every tenth of the work, and after this many seconds without one.
_PLAIN_CHUNKS = 10
_PLAIN_MAX_SILENCE_S = 60.0
TRAINING_LINE_S = 10.0  # a training run's evaluations: plain lines at least this far apart


class Interrupted(Exception):
    """An evaluation stopped between two batches because `reason` ('preempted', 'interrupted') came."""

    def __init__(self, reason: str, what: str, done: int, total: int):
        super().__init__(f"{what} stopped after {done}/{total} batches ({reason})")
        self.reason, self.what, self.done, self.total = reason, what, done, total


class Progress:
    """`update(n)` after each unit of work; `close()` at the end (or use it as a context manager).

    Args:
      total, desc, unit: the work and its name in the output.
      enabled: show anything at all. Disabled, it still yields to `stop`, so callers need not branch.
      bar: allow a live bar (on a terminal only); False: plain lines everywhere (`--noprogress`).
      stream: where the output goes (default stderr, so a command's stdout stays its result).
      stop: returns a stop reason or None; checked at every `update` (see `Interrupted`).
      every_s: plain lines at least this many seconds apart.
    """

    def __init__(self, total: int, desc: str, *, enabled: bool = True, unit: str = "batches",
                 stream: TextIO | None = None, bar: bool = True, stop: Callable[[], str | None] | None = None,
                 every_s: float = 0.0):
        self.total = max(int(total), 0)
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(enabled) and self.total > 0
        self.stop = stop
        self.every_s = float(every_s)
        self.done = 0
        self._bar = None
        self._next_line = 0
        self._start = self._last_line = time.perf_counter()
        if not self.enabled:
            return
        if bar and is_terminal(self.stream) and is_terminal(sys.stdout):  # a log file gets plain lines
            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True,
                             leave=False)
        else:
            self._next_line = self._chunk()

    def _chunk(self) -> int:
        return max(1, -(-self.total // _PLAIN_CHUNKS))

    def update(self, n: int = 1) -> None:
        self.done += n
        reason = self.stop() if self.stop is not None else None
        if reason:
            raise Interrupted(reason, self.desc, self.done, self.total)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        due = (self.done >= self._next_line or self.done >= self.total) and now - self._last_line >= self.every_s
        if due or now - self._last_line >= _PLAIN_MAX_SILENCE_S:
            elapsed = now - self._start
            left = elapsed * (self.total - self.done) / max(self.done, 1)
            print(f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%, "
                  f"{elapsed:.0f} s, about {left:.0f} s left)", file=self.stream, flush=True)
            self._last_line = now
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


def in_training(bar: bool, stop: Callable[[], str | None] | None,
                primary: bool = True) -> Callable[[int, str], Progress]:
    """How a training run shows a measure's progress: on stdout beside its step lines (a bar only when
    `bar` and on a terminal; plain lines at most every `TRAINING_LINE_S`), by process 0, and yielding
    to `stop` on every process."""
    return lambda total, desc: Progress(total, desc, enabled=primary, bar=bar, stream=sys.stdout, stop=stop,
                                        every_s=TRAINING_LINE_S)


def is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False
