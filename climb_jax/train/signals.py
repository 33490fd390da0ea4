"""SIGTERM and SIGINT as a stop reason the training loop reads between steps.

A preempted TPU VM receives SIGTERM; a person presses Ctrl-C. Either used to end in an exception
raised wherever the main thread happened to be (inside a compile it crashed the interpreter), with no
checkpoint. Here the first signal only records why to stop: the loop finishes the step in flight,
saves, says how to resume and returns. After the first SIGINT the default action is back, so a second
Ctrl-C ends the process at once (no save, no traceback). Output to a reader that is gone (a pipe into
`tee`, killed by the same Ctrl-C) is dropped rather than fatal: see `climb_jax.console`.
"""

from __future__ import annotations

import signal

from climb_jax import console


class StopSignals:
    """Context manager: while entered, `reason` becomes 'preempted' (SIGTERM) or 'interrupted' (SIGINT)
    at the first signal. Re-entrant: the command line installs it before the run is built, and the run
    enters it again without replacing the first installation."""

    REASONS = {signal.SIGTERM: "preempted", signal.SIGINT: "interrupted"}

    def __init__(self):
        self.reason: str | None = None
        self._previous: dict = {}
        self._depth = 0

    def __enter__(self) -> "StopSignals":
        self._depth += 1
        if self._depth == 1:
            for sig in self.REASONS:
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except ValueError:  # not the main thread: signals stay with the process's owner
                    pass
        return self

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        if self.reason is None:
            self.reason = self.REASONS[signum]
            again = " (Ctrl-C again stops at once, without saving)" if signum == signal.SIGINT else ""
            # A raw write, not print: a handler may run in the middle of the main thread's own print. Dropped
            # when nobody reads stdout any more (`| tee log`, and tee died of the same Ctrl-C).
            console.write_fd(1, f"\n{signal.Signals(signum).name} received: stopping after this step to save "
                                f"a checkpoint{again}\n".encode())

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)
            self._previous = {}
