"""Console output that a reader who went away cannot turn into a crash.

`python -m climb_jax.main ... 2>&1 | tee log`, then Ctrl-C: the terminal sends SIGINT to `tee` as well,
`tee` dies, and the run's next write to the pipe raises BrokenPipeError (Python ignores SIGPIPE) wherever
it happens: in the signal handler's message, in the log line of the step being finished, in the "saved a
checkpoint" line, or when the interpreter flushes stdout at exit (exit status 120). Any of them would end
the stop that was meant to save a checkpoint. Here the first write that finds its reader gone points the
descriptor at /dev/null (the recipe of Python's documentation on SIGPIPE), so that write and every later
one, Python's, tqdm's, absl's or XLA's own C++ logging, is dropped, and the run saves, releases its
workdir and exits as it would at a terminal.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys


def _gone(error: BaseException) -> bool:
    """A write failed because nobody reads the stream any more (a closed pipe or socket)."""
    return isinstance(error, OSError) and error.errno in (errno.EPIPE, errno.ECONNRESET)


def drop_output(fd: int) -> None:
    """Points descriptor `fd` at /dev/null: what is written to it from now on is discarded."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def write_fd(fd: int, data: bytes) -> None:
    """`os.write` of all of `data` to `fd` (safe in a signal handler: no buffer shared with the main
    thread); dropped when the reader is gone."""
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError as e:
        if not _gone(e):
            raise
        drop_output(fd)


class GuardedStream:
    """A text stream (sys.stdout, sys.stderr) whose writes and flushes never fail for a reader that went
    away: the descriptor is sent to /dev/null, and what the buffer held goes there too. Everything else is
    the wrapped stream's (`fileno`, `isatty`, `encoding`, ...)."""

    def __init__(self, stream):
        self._stream = stream

    def _drop(self) -> None:
        try:
            drop_output(self._stream.fileno())
            self._stream.flush()  # the buffered text that could not be written goes to /dev/null
        except (OSError, ValueError, AttributeError):  # no descriptor (captured in-process), or closed
            pass

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as e:
            if not _gone(e):
                raise
            self._drop()
            return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as e:
            if not _gone(e):
                raise
            self._drop()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def guarded():
    """Inside the block, `sys.stdout` and `sys.stderr` are `GuardedStream`s; on leaving, both are flushed
    through the guard (so the interpreter's own flush at exit has nothing left to fail on) and put back."""
    saved = sys.stdout, sys.stderr
    guards = GuardedStream(sys.stdout), GuardedStream(sys.stderr)
    sys.stdout, sys.stderr = guards
    try:
        yield
    finally:
        for guard in guards:
            try:
                guard.flush()
            except (OSError, ValueError):  # a stream closed by someone else: nothing to save there
                pass
        if sys.stdout is guards[0]:
            sys.stdout = saved[0]
        if sys.stderr is guards[1]:
            sys.stderr = saved[1]
