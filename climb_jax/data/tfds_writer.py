"""Writing one prepared version: the built arrays, in difficulty order, as a TFDS array_record dataset.

`write_version` takes the arrays `build` produced (corpus order) and the initial scores, and writes a
complete version into a local folder: the TFDS dataset (a `GeneratorBasedBuilder` with
`file_format="array_record"` and `disable_shuffling=True`, so rows keep the order they are generated
in), the tokenizer, the per-row columns, the token counts, and the marker last. `publish` moves it into
place: a rename on a local disk, or a copy to a bucket with the marker copied last, so a reader never
sees a version without all its files.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from etils import epath

from climb_jax import uri
from climb_jax.data import prepared
from climb_jax.errors import DataError, quiet_logger


def id_dtype(vocab_size: int):
    """Token ids are stored as uint16 when the vocabulary allows (half the bytes of int32)."""
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


@functools.lru_cache(maxsize=None)
def _builder_class():
    """The builder class, defined once (TFDS registers a class by name) and only when writing."""
    import tensorflow_datasets as tfds

    class ClimbCorpus(tfds.core.GeneratorBasedBuilder):
        """Packed rows of a BabyLM-style corpus: token ids, POS ids, source id, initial difficulty."""

        VERSION = tfds.core.Version(prepared.TFDS_VERSION)
        url_infos = None  # nothing is downloaded (TFDS would look for a checksums file beside this module)

        def __init__(self, *, splits: dict, seq_len: int, ids_dtype, metadata: dict, **kwargs):
            self._splits, self._seq_len, self._ids_dtype, self._metadata = splits, seq_len, ids_dtype, metadata
            super().__init__(**kwargs)

        def _info(self):
            row = lambda dtype: tfds.features.Tensor(shape=(self._seq_len,), dtype=dtype,  # noqa: E731
                                                     encoding=tfds.features.Encoding.BYTES)
            return tfds.core.DatasetInfo(
                builder=self, description=self.__doc__, disable_shuffling=True,
                metadata=tfds.core.MetadataDict(self._metadata),
                features=tfds.features.FeaturesDict({
                    "input_ids": row(self._ids_dtype), "pos_ids": row(np.int8),
                    "source_id": tfds.features.Scalar(dtype=np.int16),
                    "score": tfds.features.Scalar(dtype=np.float32),
                }))

        def _split_generators(self, dl_manager):
            return {name: self._generate_examples(name) for name in self._splits}

        def _generate_examples(self, name):
            split, order, scores = self._splits[name]
            for start in range(0, len(order), 4096):  # blocks: memory-mapped reads in bulk
                rows = order[start:start + 4096]
                ids = np.asarray(split.input_ids[np.sort(rows)]).astype(self._ids_dtype)
                pos = np.asarray(split.pos_ids[np.sort(rows)])
                back = np.argsort(np.argsort(rows, kind="stable"), kind="stable")
                ids, pos = ids[back], pos[back]
                src = np.asarray(split.source_ids)[rows]
                for j in range(len(rows)):
                    yield start + j, {"input_ids": ids[j], "pos_ids": pos[j], "source_id": int(src[j]),
                                      "score": float(scores[start + j])}

    assert ClimbCorpus.name == prepared.NAME
    return ClimbCorpus


def difficulty_order(scores: np.ndarray) -> np.ndarray:
    """Rows in ascending score, ties in original order: exactly the sampler's sorted order."""
    return np.argsort(np.asarray(scores, np.float32), kind="stable").astype(np.int64)


def write_version(built, scores: np.ndarray | None, key: str, manifest: dict, shards: int, tmp: Path,
                  *, progress: bool = False) -> Path:
    """Writes the version for fingerprint `key` under the local folder `tmp`; returns its directory.

    `built` is the build's `PreparedData` (memory-mapped arrays in corpus order, tokenizer, token
    counts); `scores` the training rows' initial scores (None: corpus order, all 0)."""
    import tensorflow_datasets as tfds

    n = len(built.train)
    train_scores = np.zeros(n, np.float32) if scores is None else np.asarray(scores, np.float32)
    order = difficulty_order(train_scores)
    splits = {"train": (built.train, order, train_scores[order])}
    for split in (built.dev, built.test):
        if split is not None and len(split):
            splits[split.name] = (split, np.arange(len(split), dtype=np.int64), np.zeros(len(split), np.float32))
    vocab = int(manifest["vocab_size"])
    meta = {"fingerprint": key, "data_fingerprint": manifest["data_fingerprint"], "scores": manifest["scores"]}
    with quiet_logger("absl"):  # TFDS warns that a builder config not listed in the class is "custom"
        builder = _builder_class()(
            splits=splits, seq_len=int(manifest["seq_len"]), ids_dtype=id_dtype(vocab), metadata=meta,
            data_dir=str(tmp / "tfds"), config=tfds.core.BuilderConfig(name=f"fp-{key[:16]}"),
            file_format="array_record")
    quiet = contextlib.redirect_stdout(io.StringIO()) if not progress else contextlib.nullcontext()
    with quiet, _progress_bars(progress):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=max(1, int(shards))))
    vdir = Path(builder.data_dir)
    built.tokenizer.save_pretrained(str(vdir / "tokenizer"))
    np.save(vdir / prepared.TOKEN_COUNTS, np.asarray(built.token_counts, np.int64))
    columns = {}
    for name, (split, rows, ordered_scores) in splits.items():
        columns[f"{name}/scores"] = ordered_scores.astype(np.float32)
        columns[f"{name}/source_ids"] = np.asarray(split.source_ids)[rows].astype(np.int16)
        columns[f"{name}/positions"] = np.asarray(split.positions)[rows].astype(np.float32)
        columns[f"{name}/original_index"] = rows.astype(np.int64)
    np.savez(vdir / prepared.COLUMNS, **columns)
    manifest = dict(manifest, format_version=prepared.FORMAT_VERSION, fingerprint=key,
                    prepared={"splits": list(splits), "train_shards": max(1, int(shards)),
                              "ids_dtype": np.dtype(id_dtype(vocab)).name,
                              "rows": {name: int(len(v[1])) for name, v in splits.items()}})
    manifest["files"] = prepared.file_records(vdir)
    write_marker(vdir, manifest)
    return vdir


@contextlib.contextmanager
def _progress_bars(on: bool):
    import tensorflow_datasets as tfds

    if on:
        yield
        return
    tfds.disable_progress_bar()
    try:
        yield
    finally:
        tfds.enable_progress_bar()


def write_marker(vdir: Path, manifest: dict) -> None:
    """The marker, durably and last: every other file is synced first."""
    for p in Path(vdir).rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    tmp = Path(vdir) / (prepared.MARKER + ".partial")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, Path(vdir) / prepared.MARKER)


def publish(local_vdir: Path, final: epath.Path) -> None:
    """Puts a finished local version at `final`: one rename on a local disk (an old, damaged version
    moved aside first), a copy to a bucket with the marker last."""
    if not uri.is_uri(str(final)):
        final_path = Path(str(final))
        final_path.parent.mkdir(parents=True, exist_ok=True)
        if final_path.exists():
            stale = final_path.with_name(f".stale-{final_path.name}-{uuid.uuid4().hex[:8]}")
            os.replace(final_path, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(local_vdir, final_path)
        return
    final = epath.Path(str(final))
    try:
        if final.exists():
            final.rmtree()
        for p in sorted(Path(local_vdir).rglob("*")):
            if p.is_file() and p.name != prepared.MARKER:
                target = final / str(p.relative_to(local_vdir))
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(p.read_bytes())
        (final / prepared.MARKER).write_bytes((Path(local_vdir) / prepared.MARKER).read_bytes())
    except Exception as e:  # noqa: BLE001 - the library's own words, with the place named
        raise DataError(f"cannot write the prepared dataset to {final}: {type(e).__name__}: {e}. Check the "
                        "bucket and your write access, or set data.prepared_dir to a local folder.") from None

