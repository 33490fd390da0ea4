"""`prepare_data`: corpus -> tokenizer -> token and POS arrays, cached on disk and memory-mapped.

  1. find the corpus's sources and fingerprint them (path, size, mtime, SHA-256 of every file) with
     every setting that changes the prepared data (`settings`); a corpus given as a URI (`gs://...`,
     any `etils.epath` location) is first copied once into the local cache (`remote`);
  2. if the cache holds a complete entry for this fingerprint, map it and return;
  3. otherwise, under a lock and in a temporary folder, build the entry (`build`: BPE, tokenize + tag,
     packing, re-numbering, arrays, `manifest.json` last) and publish the folder with one rename.

The arrays are `.npy` files opened with `mmap_mode="r"`: a training process pages in the rows it
samples and never holds the corpus in memory.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from climb_jax import uri
from climb_jax.data import build as build_lib, cache, corpus as corpus_lib, packing, pos as pos_lib, remote
from climb_jax.data import tokenizer as tok_lib
from climb_jax.data.build import ARRAYS, MODEL_MAX_LENGTH
from climb_jax.data.tokenizer import load_tokenizer  # noqa: F401 - part of this module's interface
from climb_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class Split:
    """One split's rows; every array is memory-mapped read-only."""

    name: str
    input_ids: np.ndarray  # [N, L] int32, full rows (layout: data.packing), no padding
    pos_ids: np.ndarray  # [N, L] int8, indices into POS_TAGS (X for specials)
    source_ids: np.ndarray  # [N] int16, index into PreparedData.sources
    positions: np.ndarray  # [N] float32, relative position (0..1) of the row inside its source

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclasses.dataclass(frozen=True)
class PreparedData:
    directory: Path
    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    train: Split
    dev: Split
    test: Split | None
    sources: tuple[str, ...]
    token_counts: np.ndarray  # [V] int64, occurrences of each id in train.input_ids
    manifest: dict
    fingerprint: str


def settings(data_cfg, corpus: corpus_lib.Corpus) -> dict:
    """Every setting that changes the prepared data (and nothing that does not)."""
    import nltk
    import tokenizers

    s = {
        "seq_len": int(data_cfg.seq_len),
        "vocab_size": int(data_cfg.vocab_size),
        "token_order": str(data_cfg.token_order),
        "packing": str(data_cfg.packing),
        "max_train_words": int(data_cfg.max_train_words),
        "max_eval_words": int(data_cfg.max_eval_words),
        "on_decode_error": str(data_cfg.on_decode_error),
        "max_line_chars": int(data_cfg.max_line_chars),
        "bpe_min_frequency": tok_lib.MIN_FREQUENCY,
        "tokenizers": tokenizers.__version__,
        "nltk": nltk.__version__,
        "word_re": pos_lib.WORD_RE.pattern,
        "model_max_length": MODEL_MAX_LENGTH,
    }
    if s["packing"] == "reference":
        s["packing_group_lines"] = packing.REFERENCE_GROUP_LINES
    if corpus.layout == "huggingface":
        s["hf_subset"] = str(data_cfg.get("hf_subset", "") or "")
    return s


def _open(directory: Path, manifest: dict, key: str) -> PreparedData:
    def split(name: str) -> Split:
        arrs = {k: np.load(directory / name / f"{k}.npy", mmap_mode="r") for k in ARRAYS}
        return Split(name=name, **arrs)

    return PreparedData(
        directory=directory, tokenizer=load_tokenizer(directory / "tokenizer"), train=split("train"),
        dev=split("dev"), test=split("test") if manifest["splits"].get("test") else None,
        sources=tuple(manifest["sources"]),
        token_counts=np.load(directory / "token_counts.npy", mmap_mode="r"),
        manifest=manifest, fingerprint=key,
    )


def cache_dir_for(data_cfg, workdir) -> str:
    """Where a run's prepared data lives: `data.cache_dir`, else `<workdir>/cache` for a local workdir,
    else a per-user folder (memory-mapped arrays need a local disk, not a bucket)."""
    if data_cfg.cache_dir:
        return data_cfg.cache_dir
    if not uri.is_uri(workdir):
        return os.path.join(str(workdir), "cache")
    return os.path.join(os.path.expanduser("~"), ".cache", "climb_jax")


def prepare_data(data_cfg, cache_dir, *, progress: bool = True) -> PreparedData:
    """The prepared data for `data_cfg` (the config's `data` section, checked by `schema.validate`),
    built into `cache_dir` if needed."""
    cache_dir = Path(str(cache_dir))
    if corpus_lib.remote_uri(str(data_cfg.corpus)):
        cache.require_writable(cache_dir)
        data_cfg = remote.with_local_corpus(data_cfg, cache_dir, progress=progress)
    corpus = corpus_lib.find_corpus(data_cfg)
    t0 = time.time()
    files = [cache.file_identity(p) for p in corpus.files]
    used = settings(data_cfg, corpus)
    key = cache.fingerprint({
        "format_version": cache.FORMAT_VERSION,
        "corpus": {"layout": corpus.layout, "files": files, "identity": corpus.identity},
        "settings": used,
    })
    logging.info("corpus %s (%s): %d files, %.1f MB, fingerprint %s (%.1f s)", corpus.root, corpus.layout,
                 len(files), sum(f["size"] for f in files) / 1e6, key[:16], time.time() - t0)
    cache.require_writable(cache_dir)
    final = cache.entry_dir(cache_dir, key)
    manifest, why = cache.check_entry(final, key)
    if manifest is not None:
        return _open(final, manifest, key)
    with cache.locked(cache_dir, key):
        manifest, why = cache.check_entry(final, key)  # another process may have built it meanwhile
        if manifest is not None:
            return _open(final, manifest, key)
        if why != "absent":
            logging.warning("data cache entry is not usable and will be rebuilt: %s", why)
        cache.remove_leftovers(cache_dir, key)
        tmp = cache.temp_dir(cache_dir, key)
        try:
            build_lib.build(data_cfg, corpus, files, key, used, tmp, progress)
            cache.publish(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        manifest, why = cache.check_entry(final, key)
        if manifest is None:
            raise DataError(f"the data cache entry {final} failed its check right after it was written: {why}. "
                            "Check the disk (space, permissions) and try again.")
        return _open(final, manifest, key)
