"""The run directory: an exclusive lock, the metrics log (JSON lines and TensorBoard events), JSON outputs
and the run's provenance.

Only process 0 writes files here (orbax coordinates the checkpoints of all processes itself). Paths go
through `etils.epath`, so a `gs://` workdir works like a local one (TensorBoard events are written for
local workdirs only).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from etils import epath

from climb_jax import uri
from climb_jax.errors import ClimbError


def is_local(path) -> bool:
    return not uri.is_uri(path)


class WorkdirLock:
    """An advisory `flock` on <workdir>/.lock: a second run in the same workdir is refused, and the
    kernel releases the lock when the holder dies, so a killed run never leaves it stuck. A run that ends
    (finished, failed, or stopped by a signal) removes the file as well, so a `.lock` in a workdir means a
    run holds it now, or one was killed outright."""

    def __init__(self, workdir):
        self.path = os.path.join(str(workdir), ".lock")
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
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
            if self._still_the_file(fd):
                break
            os.close(fd)  # locked a file its holder removed on release in the meantime: take the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def _still_the_file(self, fd: int) -> bool:
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # while still locked: nobody can lock this file and then lose it
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


def provenance() -> dict:
    """Where a run came from, for its config.json: the command line, the working directory, the project's
    git commit (and whether the checkout had uncommitted changes) when it is a git checkout, and the
    versions that decide the numbers."""
    import platform

    import jax

    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    module = getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", None)
    command = ["python", "-m", module, *sys.argv[1:]] if module else ["python", *sys.argv]
    return {
        "command": shlex.join(command),
        "cwd": os.getcwd(),
        "git_commit": commit,
        "git_dirty": bool(status) if status is not None else None,
        "python": platform.python_version(),
        "jax": jax.__version__,
    }


def corpus_fingerprint(manifest: Mapping) -> str:
    """The corpus a run trained on, by content: each file's SHA-256 under its path relative to the corpus
    root (and the identity of a corpus that is no files, a Hugging Face dataset's). The same text read
    from another folder, or copied to another machine, has the same fingerprint; any changed byte gives
    another. `climb_jax.compare` pools runs as seeds of one arm only when it is the same."""
    import hashlib

    corpus = manifest.get("corpus") or {}
    root = str(corpus.get("root") or "")
    files = sorted((os.path.relpath(str(f["path"]), root) if root else os.path.basename(str(f["path"])),
                    f.get("sha256")) for f in corpus.get("files") or ())
    blob = json.dumps({"files": files, "identity": corpus.get("identity") or []}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def run_record(config, manifest: Mapping) -> dict:
    """What config.json holds: the resolved config, and under `provenance` where the run came from
    (`provenance()`) and the corpus it trained on (`corpus_fingerprint`)."""
    record = json.loads(config.to_json_best_effort())
    record["provenance"] = dict(provenance(), corpus_fingerprint=corpus_fingerprint(manifest))
    return record


def _scalars(tree: Mapping, prefix: str) -> dict[str, float]:
    """Every number in a nested dict, by slash-joined path (TensorBoard groups tags by their first
    segment); strings and lists are skipped."""
    out = {}
    for key, value in tree.items():
        tag = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_scalars(value, tag))
        elif isinstance(value, (bool, int, float, np.integer, np.floating)) or (
                isinstance(value, np.ndarray) and value.ndim == 0):
            out[tag] = float(value)
    return out


def _import_tensorboardx():
    """tensorboardX's writer (no TensorFlow). It imports torch when torch is installed, only to accept torch
    tensors, which we never pass: a training process would pay seconds and hundreds of MB for it, so the
    import runs with torch hidden (unless torch is already loaded)."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return SummaryWriter


class MetricsLog:
    """`metrics.jsonl`: one JSON object per log step (and one per checkpoint-selection measurement of dev
    pseudo-perplexity, `write_eval`), and the same numbers as TensorBoard event files in the same folder
    (so `tensorboard --logdir` over a sweep folder compares its runs live).

    On resume, lines past the restored step are dropped, so a resumed run's log equals an uninterrupted
    one's; the event file opened by the resumed run tells TensorBoard to discard the earlier attempt's
    events past that step (`purge_step`).

    TensorBoard tags: a log record's numbers under `train/` (`train/loss`, `train/vocab_pace`, ...), its
    nested dicts as their own groups (`learning_rates/encoder`, `source_mix/aochildes`), and evaluation
    results under `eval/` (`eval/blimp/overall`, ...)."""

    def __init__(self, path, enabled: bool = True, tensorboard: bool = True):
        self.path = epath.Path(path)
        self.enabled = enabled
        self.tensorboard = tensorboard and enabled and is_local(self.path)
        self._writer = None
        self._purge_step: int | None = None

    def _events(self):
        """The event writer, opened at the first write (a run that writes nothing leaves no event file)."""
        if not self.tensorboard:
            return None
        if self._writer is None:
            try:
                summary_writer = _import_tensorboardx()
            except ImportError:
                logging.warning("tensorboardX is not installed: no TensorBoard event files (metrics.jsonl is "
                                "written as usual); pip install tensorboardX")
                self.tensorboard = False
                return None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # The file name holds the second it was opened; the suffix (nanoseconds within that second) keeps
            # two writers of one second (a rerun right after a crash) apart and in order.
            self._writer = summary_writer(str(self.path.parent), purge_step=self._purge_step, flush_secs=30,
                                          filename_suffix=f".{time.time_ns() % 10**9:09d}")
        return self._writer

    def _add(self, scalars: dict[str, float], step: int) -> None:
        writer = self._events()
        if writer is None:
            return
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, global_step=int(step))
        writer.flush()  # a killed run keeps every event up to its last log step

    def truncate_after(self, step: int) -> None:
        self._purge_step = step + 1
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
        before its first checkpoint, or of a run whose checkpoints were moved away): kept, never mixed in.
        TensorBoard is told to hide that attempt's events (their files stay)."""
        if not self.enabled or not self.path.exists() or not self.path.read_text().strip():
            return None
        self._purge_step = 0
        n = 1
        while (dest := self.path.parent / f"{self.path.name}.old-{n}").exists():
            n += 1
        self.path.rename(dest)
        return str(dest)

    def write(self, record: dict) -> None:
        """One log step's record (it has a `step`)."""
        if not self.enabled:
            return
        self._append(record)
        flat = {k: v for k, v in record.items() if k != "step" and not isinstance(v, Mapping)}
        nested = {k: v for k, v in record.items() if isinstance(v, Mapping)}
        self._add({**_scalars(flat, "train"), **_scalars(nested, "")}, record["step"])

    def _append(self, record: dict) -> None:
        line = json.dumps(to_jsonable(record), sort_keys=True) + "\n"
        if is_local(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(line)
        else:
            text = self.path.read_text() if self.path.exists() else ""
            self.path.write_text(text + line)

    def write_eval(self, step: int, result: Mapping) -> None:
        """An evaluation's numbers (the dict written to eval/step_XXXXXX.json) as TensorBoard scalars; the
        JSON file stays the record. A checkpoint-selection measurement (`{"dev_perplexity": {"mean", "std",
        "sequences"}}`, every eighth of training) has no file of its own: it becomes a metrics.jsonl line
        as well, `{"step", "dev_pseudo_perplexity", "dev_pseudo_perplexity_std", "dev_rows"}`, so its
        history sits beside the loss (such a line has no `loss`)."""
        if not self.enabled:
            return
        dev = result.get("dev_perplexity")
        if isinstance(dev, Mapping):
            self._append({"step": int(step), "dev_pseudo_perplexity": dev["mean"],
                          "dev_pseudo_perplexity_std": dev["std"], "dev_rows": dev["sequences"]})
        self._add(_scalars(result, "eval"), step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(l) for l in self.path.read_text().splitlines() if l.strip()]
