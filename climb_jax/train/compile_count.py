"""Counts XLA compilations per function name, to show that a curriculum never recompiles the step."""

from __future__ import annotations

import collections
import threading

from jax import monitoring

_EVENT = "/jax/core/compile/backend_compile_duration"
_lock = threading.Lock()
_active: list["CompileCounter"] = []
_registered = False


def _listener(event: str, duration: float, **kwargs) -> None:
    if event != _EVENT:
        return
    name = str(kwargs.get("fun_name", ""))
    with _lock:
        for counter in _active:
            counter.counts[name] += 1


class CompileCounter:
    """Context manager: `count('train_step')` is the number of backend compiles of `jit(train_step)`."""

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()

    def __enter__(self) -> "CompileCounter":
        global _registered
        with _lock:
            if not _registered:
                monitoring.register_event_duration_secs_listener(_listener)
                _registered = True
            _active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        with _lock:
            if self in _active:
                _active.remove(self)

    def count(self, name: str) -> int:
        return sum(v for k, v in self.counts.items() if k == f"jit({name})" or k == name)
