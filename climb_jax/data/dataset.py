"""`prepare_data`: corpus -> tokenizer -> rows in difficulty order, as a prepared TFDS dataset, read by
random access.

  1. find the corpus's sources and fingerprint them (path, size, mtime, SHA-256 of every file) with
     every setting that changes the rows (`settings`) and the scorer settings that order them
     (`data_curriculum.scorer_settings`); a corpus given as a URI (`gs://...`, any `etils.epath`
     location) is first copied once into the local cache (`remote`);
  2. if `data.prepared_dir` (default `<cache_dir>/prepared`) holds a complete version for this
     fingerprint (`prepared.check_version`), open it and return: no host tokenizes when one exists;
  3. otherwise, under a per-host lock and in a temporary folder: `build` the arrays (BPE, tokenize +
     tag, packing, re-numbering), score the training rows, write them sorted by score as a TFDS
     array_record dataset (`tfds_writer`), and publish the version (a rename, or a copy with the
     marker last to a bucket). The temporary arrays are deleted: the prepared dataset is the one format.

`python -m climb_jax.prepare` runs steps 1-3 alone; training runs them too, so a fresh clone trains
with one command. The returned `PreparedData` reads rows on demand (`prepared.Split`), so a training
process never holds the corpus in memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from climb_jax import uri
from climb_jax.data import build as build_lib, cache, corpus as corpus_lib, packing, pos as pos_lib, remote
from climb_jax.data import prepared, sources as sources_lib, tfds_writer, tokenizer as tok_lib
from climb_jax.data.build import ARRAYS, MODEL_MAX_LENGTH
from climb_jax.data.tokenizer import load_tokenizer  # noqa: F401 - part of this module's interface
from climb_jax.errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class ArraySplit:
    """One split of the build's arrays (corpus order, memory-mapped read-only): what is scored and
    written while preparing. Training reads `prepared.Split` instead."""

    name: str
    input_ids: np.ndarray  # [N, L] int32, full rows (layout: data.packing), no padding
    pos_ids: np.ndarray  # [N, L] int8, indices into POS_TAGS (X for specials)
    source_ids: np.ndarray  # [N] int16, index into PreparedData.sources
    positions: np.ndarray  # [N] float32, relative position (0..1) of the row inside its source

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclasses.dataclass(frozen=True)
class PreparedData:
    directory: Any  # the prepared version's folder (epath.Path: local or gs://)
    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    train: Any  # prepared.Split (ArraySplit while preparing)
    dev: Any
    test: Any | None
    sources: tuple[str, ...]
    token_counts: np.ndarray  # [V] int64, occurrences of each id in train.input_ids
    manifest: dict
    fingerprint: str  # of corpus + tokenizer settings + scorer settings: the prepared version's name
    scores_settings: dict | None = None  # the scorer the training rows are ordered by

    def scores_for(self, settings: dict) -> np.ndarray | None:
        """The stored initial scores if the rows were ordered by the scorer `settings`, else None."""
        if self.scores_settings is None or getattr(self.train, "scores", None) is None:
            return None
        same = json.dumps(settings, sort_keys=True) == json.dumps(self.scores_settings, sort_keys=True)
        return np.asarray(self.train.scores, np.float32) if same else None

    @property
    def train_sources(self) -> tuple[str, ...]:
        """The sources of the training split (`sources` also names those only dev or test has)."""
        return tuple(self.manifest["splits"]["train"]["per_source"])


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
    if corpus.carved_dev:
        s["carved_dev_fraction"] = sources_lib.CARVED_DEV_FRACTION
    return s


def startup_notes(data: PreparedData, data_cfg, trainer_cfg) -> list[str]:
    """What a run says about its data before it trains: a dev split carved out of the training files
    (the user gave none), and a warning when training passes over its rows more often than
    `data.max_epochs_warning` (a corpus too small for the run repeats every row many times)."""
    notes = []
    if data.manifest["settings"].get("carved_dev_fraction"):
        dev = data.manifest["splits"]["dev"]
        notes.append(f"dev split: {dev['lines']:,} lines ({data.manifest['settings']['carved_dev_fraction']:.0%}, "
                     f"chosen by a hash of each line) carved out of the training files, {dev['rows']:,} sequences; "
                     "the training split keeps the other lines")
    rows, limit = len(data.train), int(data_cfg.max_epochs_warning)
    drawn = int(trainer_cfg.total_steps) * int(trainer_cfg.batch_size)
    if limit > 0 and rows and drawn / rows > limit:
        notes.append(f"warning: {trainer_cfg.total_steps:,} steps x {trainer_cfg.batch_size} rows = {drawn:,} rows drawn "
                     f"from {rows:,} training sequences: each is seen about {drawn / rows:,.0f} times (more than "
                     f"data.max_epochs_warning={limit}). Add text (data.corpus), train fewer steps "
                     "(trainer.total_steps), or set data.max_epochs_warning=0 to silence this.")
    return notes


def _open_arrays(directory: Path, manifest: dict, key: str) -> PreparedData:
    """The build's arrays in `directory`, memory-mapped (corpus order)."""
    def split(name: str) -> ArraySplit:
        arrs = {k: np.load(directory / name / f"{k}.npy", mmap_mode="r") for k in ARRAYS}
        return ArraySplit(name=name, **arrs)

    return PreparedData(
        directory=directory, tokenizer=load_tokenizer(directory / "tokenizer"), train=split("train"),
        dev=split("dev"), test=split("test") if manifest["splits"].get("test") else None,
        sources=tuple(manifest["sources"]),
        token_counts=np.load(directory / "token_counts.npy", mmap_mode="r"),
        manifest=manifest, fingerprint=key,
    )


def _open_prepared(vdir, manifest: dict) -> PreparedData:
    """A checked prepared version: rows by random access, the tokenizer (copied locally from a bucket)."""
    splits = prepared.open_rows(vdir, manifest)
    tok_dir = vdir / "tokenizer"
    if uri.is_uri(str(vdir)):
        local = Path(tempfile.mkdtemp(prefix="climb_tokenizer_"))
        for f in tok_dir.iterdir():
            (local / f.name).write_bytes(f.read_bytes())
        tok_dir = local
    return PreparedData(
        directory=vdir, tokenizer=load_tokenizer(tok_dir), train=splits["train"], dev=splits.get("dev"),
        test=splits.get("test"), sources=tuple(manifest["sources"]),
        token_counts=prepared.load_small(vdir, prepared.TOKEN_COUNTS), manifest=manifest,
        fingerprint=manifest["fingerprint"], scores_settings=manifest["scores"],
    )


def cache_dir_for(data_cfg, workdir) -> str:
    """A run's data cache (scratch space for preparing, the lock, a remote corpus's copy, and by default
    the prepared dataset): `data.cache_dir`, else `<workdir>/cache` for a local workdir, else a
    per-user folder (preparing needs a local disk; `data.prepared_dir` may be a bucket)."""
    if data_cfg.cache_dir:
        return data_cfg.cache_dir
    if not uri.is_uri(workdir):
        return os.path.join(str(workdir), "cache")
    return os.path.join(os.path.expanduser("~"), ".cache", "climb_jax")


def prepared_key(data_key: str, scoring: dict) -> str:
    """The prepared version's fingerprint: the data's (corpus + tokenizer settings) and the scorer's."""
    return cache.fingerprint({"prepared_format": prepared.FORMAT_VERSION, "data": data_key, "scores": scoring})


def prepare_data(data_cfg, cache_dir, *, progress: bool = True, curriculum=None) -> PreparedData:
    """The prepared data for `data_cfg` (the config's `data` section, checked by `schema.validate`),
    its training rows ordered by the initial scores of `curriculum` (the `data_curriculum` section;
    None: corpus order), built if needed (scratch space and the lock in `cache_dir`)."""
    from climb_jax.curriculum.data_curriculum import score_rows, scorer_settings

    shards = int(data_cfg.get("shards", 8))
    if shards < 1:
        raise ConfigError(f"data.shards={shards} must be at least 1: the training rows are written in that many "
                          "array_record shards (8 suits any corpus; more lets many hosts read in parallel).")
    cache_dir = Path(str(cache_dir))
    root = prepared.root_for(data_cfg, cache_dir)
    remote_root = uri.is_uri(str(root))
    if remote_root:
        uri.check(str(root), "data.prepared_dir", DataError)
    if corpus_lib.remote_uri(str(data_cfg.corpus)):
        cache.require_writable(cache_dir)
        data_cfg = remote.with_local_corpus(data_cfg, cache_dir, progress=progress)
    corpus = corpus_lib.find_corpus(data_cfg)
    t0 = time.time()
    files = [cache.file_identity(p) for p in corpus.files]
    used = settings(data_cfg, corpus)
    data_key = cache.fingerprint({
        "format_version": cache.FORMAT_VERSION,
        "corpus": {"layout": corpus.layout, "files": files, "identity": corpus.identity},
        "settings": used,
    })
    scoring = scorer_settings(curriculum)
    key = prepared_key(data_key, scoring)
    vdir = prepared.version_dir(root, key)
    logging.info("corpus %s (%s): %d files, %.1f MB, prepared version %s (%.1f s)", corpus.root, corpus.layout,
                 len(files), sum(f["size"] for f in files) / 1e6, vdir, time.time() - t0)
    manifest, why = prepared.check_version(vdir, key)
    if manifest is not None:
        return _open_prepared(vdir, manifest)
    cache.require_writable(cache_dir)
    if not remote_root:
        cache.require_writable(Path(str(root)))
    with cache.locked(cache_dir, key):
        manifest, why = prepared.check_version(vdir, key)  # another process may have built it meanwhile
        if manifest is not None:
            return _open_prepared(vdir, manifest)
        if why != "absent":
            if remote_root and "interrupted" not in why:
                raise DataError(f"the prepared dataset is damaged: {why}. Delete {vdir} and prepare it again "
                                "(python -m climb_jax.prepare with the same config).")
            logging.warning("the prepared dataset is not usable and will be rebuilt: %s", why)
        cache.remove_leftovers(cache_dir, key)
        tmp = cache.temp_dir(cache_dir, key)
        try:
            (tmp / "arrays").mkdir()
            build_manifest = build_lib.build(data_cfg, corpus, files, data_key, used, tmp / "arrays", progress)
            built = _open_arrays(tmp / "arrays", build_manifest, data_key)
            scores = score_rows(curriculum, built.train, built.sources, len(built.tokenizer))
            info = dict(build_manifest, data_fingerprint=data_key, scores=scoring)
            local = tfds_writer.write_version(built, scores, key, info, shards, tmp / "out",
                                              progress=progress)
            del built
            tfds_writer.publish(local, vdir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        manifest, why = prepared.check_version(vdir, key)
        if manifest is None:
            raise DataError(f"the prepared dataset {vdir} failed its check right after it was written: {why}. "
                            "Check the disk or bucket (space, permissions) and try again.")
        return _open_prepared(vdir, manifest)


Split = ArraySplit  # a split of arrays in memory, as scorer tests build them
