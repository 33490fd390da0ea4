"""A corpus folder at a URI (`data.corpus=gs://bucket/babylm`, any `etils.epath` location).

Each host copies the folder once into its local data cache (`<cache_dir>/corpus-<hash of the URI>/`)
and prepares the data from that copy, so the memory-mapped arrays, their cache and the three passes
over the text (word budgets, BPE, tokenize + tag) all stay local, and a multi-host run needs no manual
copy. The copy is re-used while the remote listing (every file's relative path and size) is unchanged;
it is written into a temporary folder and published with one rename, under the cache's per-host lock,
so concurrent processes on one host copy it once. Only `etils.epath` calls touch the source, so the
same code serves a local folder (the tests) and a bucket (`climb_jax.uri` checks it first).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

from absl import logging
from etils import epath
from tqdm.auto import tqdm

from climb_jax import uri
from climb_jax.data import cache
from climb_jax.errors import DataError

MARKER = ".climb_jax_copy.json"  # written last: a copy without it is incomplete
_BLOCK = 8 << 20


def open_uri(spec: str) -> epath.Path:
    """The `etils.epath` path of a corpus URI, or a `DataError` that says what is wrong with it."""
    uri.check(spec, "data.corpus", DataError)
    try:
        path = epath.Path(spec)
        is_dir = path.is_dir()
    except Exception as e:  # noqa: BLE001 - the library's own words follow
        raise DataError(f"cannot open data.corpus='{spec}': {type(e).__name__}: {e}. Check the path, or use a "
                        "local folder.") from None
    if not is_dir:
        raise DataError(f"data.corpus='{spec}' is not a folder; point it at a BabyLM folder (train/ dev/ test/, "
                        "or babylm_10M/ babylm_dev/ babylm_test/).")
    return path


def listing(src: epath.Path) -> list[dict]:
    """Every file under `src` as {"path": relative path, "size": bytes}, sorted; hidden names left out."""
    out = []

    def walk(folder: epath.Path, prefix: str) -> None:
        for child in sorted(folder.iterdir(), key=lambda p: p.name):
            if child.name.startswith("."):
                continue
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            else:
                out.append({"path": f"{prefix}{child.name}", "size": int(child.stat().length)})

    walk(src, "")
    return out


def _complete(folder: Path, source: str, files: list[dict]) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker == {"source": source, "files": files}


def local_copy(src: epath.Path, cache_dir: Path, *, progress: bool = False) -> Path:
    """The local copy of the folder `src` in `cache_dir`, made (or refreshed) if needed."""
    source = str(src)
    key = cache.fingerprint({"remote_corpus": source})
    final = Path(cache_dir) / f"corpus-{key[:16]}"
    files = listing(src)
    if _complete(final, source, files):
        return final
    with cache.locked(cache_dir, key):
        if _complete(final, source, files):  # another process on this host copied it meanwhile
            return final
        cache.remove_leftovers(cache_dir, key)
        tmp = cache.temp_dir(cache_dir, key)
        try:
            bar = tqdm(total=sum(f["size"] for f in files) or None, unit="B", unit_scale=True,
                       desc=f"copying {source}", disable=not progress, leave=False)
            for f in files:
                target = tmp / f["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                with src.joinpath(f["path"]).open("rb") as fin, open(target, "wb") as fout:
                    while block := fin.read(_BLOCK):
                        fout.write(block)
                        bar.update(len(block))
            bar.close()
            (tmp / MARKER).write_text(json.dumps({"source": source, "files": files}))
            cache.publish(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    logging.info("copied the corpus %s (%d files) to %s", source, len(files), final)
    return final


def with_local_corpus(data_cfg, cache_dir: Path, *, progress: bool = False):
    """A copy of the `data` config section whose `corpus` is this host's local copy of the remote folder."""
    local = local_copy(open_uri(str(data_cfg.corpus)), Path(cache_dir), progress=progress)
    out = copy.deepcopy(data_cfg)
    out.corpus = os.fspath(local)
    return out
