"""The run directory: an exclusive lock, the metrics log and JSON outputs.

Only process 0 writes files here (orbax coordinates the checkpoints of all processes itself). Paths go
through `etils.epath`, so a `gs://` workdir works like a local one.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from typing import Any

import numpy as np
from etils import epath

from climb_jax.errors import ClimbError


def is_local(path) -> bool:
    return "://" not in str(path)


class WorkdirLock:
    """An advisory `flock` on <workdir>/.lock: a second run in the same workdir is refused, and the
    kernel releases the lock when the holder dies, so a killed run never leaves it stuck."""

    def __init__(self, workdir):
        self.path = os.path.join(str(workdir), ".lock")
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ClimbError(
                f"another run (pid {holder}) is using workdir {os.path.dirname(self.path)}; wait for it to "
                "finish or stop it, or choose another --workdir."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def to_jsonable(x: Any):
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (np.generic, np.ndarray)):
        return to_jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def write_json(path, obj) -> None:
    """Writes JSON atomically (temporary file, then rename) so a killed run never leaves half a file."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True)
    if is_local(path):
        tmp = str(path) + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, str(path))
    else:
        path.write_text(text)


class MetricsLog:
    """`metrics.jsonl`: one JSON object per log step. On resume, lines past the restored step are
    dropped, so a resumed run's log equals an uninterrupted one's."""

    def __init__(self, path, enabled: bool = True):
        self.path = epath.Path(path)
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError):
                break  # a torn last line from a killed run
        text = "".join(l + "\n" for l in kept)
        if is_local(self.path):  # never a half-written log if killed while rewriting it
            tmp = str(self.path) + ".tmp"
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, str(self.path))
        else:
            self.path.write_text(text)

    def set_aside(self) -> str | None:
        """Renames a log that a run starting from step 0 would otherwise extend (lines of an attempt killed
        before its first checkpoint, or of a run whose checkpoints were moved away): kept, never mixed in."""
        if not self.enabled or not self.path.exists() or not self.path.read_text().strip():
            return None
        n = 1
        while (dest := self.path.parent / f"{self.path.name}.old-{n}").exists():
            n += 1
        self.path.rename(dest)
        return str(dest)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps(to_jsonable(record), sort_keys=True) + "\n"
        if is_local(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(line)
        else:
            text = self.path.read_text() if self.path.exists() else ""
            self.path.write_text(text + line)

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(l) for l in self.path.read_text().splitlines() if l.strip()]
