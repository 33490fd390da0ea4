"""The data cache's tools: content fingerprints, a per-key lock, private temporary folders, atomic
publication, the build's manifest.

The cache folder is a host's scratch space for preparing (the build's arrays live in a temporary
folder and are deleted once the prepared dataset is written, `dataset.prepare_data`), the lock that
keeps two processes of one host from preparing the same version at once, and a remote corpus's
local copy (`remote`). What training reads is the prepared dataset (`prepared`), not this cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
from absl import logging

from climb_jax.errors import DataError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_HASH_BLOCK = 1 << 20


def sha256_file(path: Path) -> str:
    """The file's SHA-256, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def file_identity(path: Path) -> dict:
    """Path, size, modification time and content hash of a corpus file."""
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path)}


def fingerprint(parts: dict) -> str:
    """A stable hash of JSON-serialisable settings and identities."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@contextlib.contextmanager
def locked(cache_dir: Path, key: str) -> Iterator[None]:
    """An exclusive lock (fcntl) for one cache entry, so concurrent preparations do not collide.

    A second process waits, then finds the finished entry. Locks are per host; on a shared filesystem
    prepare on one host first, or give each host its own `data.cache_dir`."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"data-{key[:16]}.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logging.info("waiting for another process preparing %s", path.with_suffix(""))
            t0 = time.time()
            fcntl.flock(f, fcntl.LOCK_EX)
            logging.info("lock acquired after %.1f s", time.time() - t0)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def temp_dir(cache_dir: Path, key: str) -> Path:
    """A fresh, private folder beside the entry (same filesystem, so publication is a rename)."""
    path = Path(cache_dir) / f".tmp-data-{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


def publish(tmp: Path, final: Path) -> None:
    """Moves a finished temporary folder into place; an old (invalid) entry is moved aside first."""
    if final.exists():
        stale = final.with_name(f".stale-{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, final)


def remove_leftovers(cache_dir: Path, key: str) -> None:
    """Temporary folders of this entry left by killed preparations (we hold the lock: none is live)."""
    for p in Path(cache_dir).glob(f".tmp-data-{key[:16]}-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in Path(cache_dir).glob(f".stale-data-{key[:16]}-*"):
        shutil.rmtree(p, ignore_errors=True)


def array_record(path: Path) -> dict:
    arr = np.load(path, mmap_mode="r")
    return {"shape": list(arr.shape), "dtype": str(arr.dtype), "bytes": path.stat().st_size}


def write_manifest(directory: Path, manifest: dict) -> None:
    """Writes the manifest last, durably: the presence of a valid manifest means "complete"."""
    for p in directory.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    tmp = directory / (MANIFEST + ".partial")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)


def require_writable(cache_dir: Path) -> None:
    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the data cache folder {cache_dir}: {e.strerror}. Set data.cache_dir "
                        "to a writable folder.") from None
    if not os.access(cache_dir, os.W_OK):
        raise DataError(f"the data cache folder {cache_dir} is not writable. Set data.cache_dir to a "
                        "writable folder.")
