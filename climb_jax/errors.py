"""User-facing errors.

Anything a user can fix (a path, a config value, a corrupt file) raises `ClimbError` with a
message that says what to fix; `climb_jax.main` prints it without a traceback and exits 2.
"""

from __future__ import annotations

import contextlib
import logging
import sys

from climb_jax import console


class ClimbError(Exception):
    """An error the user can act on; the message says what to fix."""


class ConfigError(ClimbError):
    """An invalid configuration: unknown key, wrong type, impossible schedule."""


class DataError(ClimbError):
    """A corpus, cache or evaluation file that cannot be used as it is."""


class CheckpointError(ClimbError):
    """A checkpoint that cannot be restored."""


class TrainingDiverged(ClimbError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def print_error(message: object) -> None:
    """Writes `error: <message>` to stderr as one line of its own.

    Library threads may still be printing (a progress bar without its newline, the tracebacks of an
    abandoned checkpoint write), so the line starts with a newline and goes to the file descriptor in a
    single write: it cannot be split by, or glued to, anyone else's output. A stream nobody reads any more
    (a pipe whose reader exited) drops the line instead of failing."""
    text = f"\nerror: {message}\n"
    for stream in (sys.stdout, sys.stderr):
        console.GuardedStream(stream).flush()
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a stream without a descriptor (captured in-process)
        sys.stderr.write(text)
        sys.stderr.flush()
        return
    console.write_fd(fd, text.encode("utf-8", "replace"))


@contextlib.contextmanager
def quiet_logger(name: str):
    """Silences the Python logger `name` (and its children) inside the block: for library lines a user
    cannot act on, such as a retry's traceback before the error this project reports once."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
