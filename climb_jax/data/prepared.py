"""The prepared corpus as a TFDS dataset of array_record shards: its layout, its check, and reading it.

One prepared version is one directory (local or `gs://`, reached through `etils.epath`):

    <data.prepared_dir>/climb_corpus/fp-<fingerprint[:16]>/1.0.0/
        climb_corpus-<split>.array_record-<i>-of-<n>   the rows (TFDS features: `tfds_writer.features`)
        dataset_info.json, features.json, metadata.json  TFDS's own description
        tokenizer/                                       the tokenizer the ids belong to
        columns.npz                                      per-row columns of every split (scores, source
                                                         ids, positions, original indices): a few bytes a row
        token_counts.npy                                 training token counts in the final numbering
        climb_prepared.json                              the manifest, written LAST: the completion marker

Training rows are written in ascending initial difficulty (stable by the original row index), so the
data curriculum's allowed set at any step is a prefix of rows: a prefix of the shards and part of one.
The fingerprint covers corpus + tokenizer settings + the scorer settings; changed inputs give another
directory, never a silent reuse. A directory is used only if its marker names the expected fingerprint
and every file the marker lists has its recorded size (small files: their checksum); a shard that is
missing or cut short is named. Readers fetch the rows they need by random access (`__getitems__`), so
a process's memory does not grow with the corpus; TensorFlow is never imported.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np
from etils import epath

from climb_jax.errors import DataError

NAME = "climb_corpus"
TFDS_VERSION = "1.0.0"
FORMAT_VERSION = 1
MARKER = "climb_prepared.json"
COLUMNS = "columns.npz"
TOKEN_COUNTS = "token_counts.npy"
_CHECKSUMMED_MAX_BYTES = 8 << 20  # files up to this size are checksummed, larger ones (shards) size-checked
_READ_CHUNK = 4096  # rows per `__getitems__` call when a whole column is asked for


def root_for(data_cfg, cache_dir) -> epath.Path:
    """`data.prepared_dir`, else `<cache_dir>/prepared`."""
    value = data_cfg.get("prepared_dir", None)
    return epath.Path(str(value) if value else str(epath.Path(str(cache_dir)) / "prepared"))


def version_dir(root, key: str) -> epath.Path:
    return epath.Path(str(root)) / NAME / f"fp-{key[:16]}" / TFDS_VERSION


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_version(vdir: epath.Path, key: str) -> tuple[dict | None, str]:
    """(manifest, "") if `vdir` is a complete version for `key`; (None, "absent") if there is none;
    (None, why not) if it is incomplete or damaged (the why names the file)."""
    marker = vdir / MARKER
    try:
        if not vdir.exists():
            return None, "absent"
        if not marker.exists():
            return None, f"{vdir} has no {MARKER} (an interrupted preparation)"
        manifest = json.loads(marker.read_text())
    except (OSError, ValueError) as e:
        return None, f"{marker} is unreadable ({e})"
    if manifest.get("format_version") != FORMAT_VERSION:
        return None, f"{marker} has format version {manifest.get('format_version')}, expected {FORMAT_VERSION}"
    if manifest.get("fingerprint") != key:
        return None, f"{marker} belongs to other data (fingerprint {str(manifest.get('fingerprint'))[:16]})"
    for rel, rec in manifest.get("files", {}).items():
        f = vdir / rel
        try:
            size = f.stat().length if f.exists() else None
        except OSError as e:
            return None, f"{f} is unreadable ({e})"
        if size is None:
            return None, f"{f} is missing"
        if size != rec["bytes"]:
            return None, f"{f} has {size} bytes, the manifest says {rec['bytes']}"
        if "sha256" in rec and sha256_bytes(f.read_bytes()) != rec["sha256"]:
            return None, f"{f} does not match its checksum in the manifest"
    return manifest, ""


def file_records(vdir) -> dict:
    """{relative path: {"bytes", and "sha256" for small files}} of every file under the local folder
    `vdir` but the marker."""
    from pathlib import Path

    vdir, out = Path(vdir), {}
    for f in sorted(vdir.rglob("*")):
        if f.is_dir() or f.name == MARKER:
            continue
        rel = str(f.relative_to(vdir))
        data_size = f.stat().st_size
        rec = {"bytes": int(data_size)}
        if data_size <= _CHECKSUMMED_MAX_BYTES and ".array_record-" not in f.name:
            rec["sha256"] = sha256_bytes(f.read_bytes())
        out[rel] = rec
    return out


class Column:
    """One row-valued field of a split (`input_ids` [N, L] or `pos_ids`) as a read-only, array-like view:
    indexing reads only the rows asked for; `np.asarray(column)` reads them all (dev and test only)."""

    def __init__(self, split: "Split", field: str, dtype, width: int):
        self._split, self._field = split, field
        self.dtype = np.dtype(dtype)
        self.shape = (len(split), int(width))
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, tuple):
            rows, rest = key[0], key[1:]
            return self[rows][(slice(None), *rest)] if not np.isscalar(rows) else self[rows][rest]
        if isinstance(key, (int, np.integer)):
            return self._split.read(np.asarray([key]), (self._field,))[self._field][0]
        idx = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, np.int64)
        return self._split.read(idx, (self._field,))[self._field]

    def __array__(self, dtype=None, copy=None):
        parts = [self[np.arange(i, min(i + _READ_CHUNK, len(self)))] for i in range(0, len(self), _READ_CHUNK)]
        out = np.concatenate(parts) if parts else np.zeros(self.shape, self.dtype)
        return out if dtype is None else out.astype(dtype)


class Split:
    """One split of a prepared version: rows by random access, per-row columns in memory.

    Attributes as the rest of the code expects of a split: `input_ids` and `pos_ids` ([N, L] views,
    `Column`), `source_ids` [N] int16, `positions` [N] float32, `scores` [N] float32 (the initial
    difficulty; ascending in the training split), `original_index` [N] int64 (the row's number in
    corpus order)."""

    def __init__(self, name: str, source, columns: dict, seq_len: int, where: str, ids_dtype: str = "uint16"):
        self.name = name
        self._source = source
        self._where = where
        self._ids_dtype = np.dtype(ids_dtype)
        n = int(columns["scores"].shape[0])
        if len(source) != n:
            raise DataError(f"the {name} split of {where} has {len(source)} rows but its columns have {n}; "
                            "delete that folder and prepare the data again (python -m climb_jax.prepare).")
        self.source_ids = columns["source_ids"]
        self.positions = columns["positions"]
        self.scores = columns["scores"]
        self.original_index = columns["original_index"]
        self.input_ids = Column(self, "input_ids", np.int32, seq_len)
        self.pos_ids = Column(self, "pos_ids", np.int8, seq_len)
        if n:  # the fast decoding below must agree with TFDS's own, on a row of every split
            mine = self.read(np.asarray([n - 1]))
            theirs = source[n - 1]
            if not all(np.array_equal(mine[f][0], theirs[f]) for f in ("input_ids", "pos_ids")):
                raise DataError(f"the rows of {where} do not decode as expected (a TFDS encoding change?); "
                                "prepare the data again with this version of the code.")

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def read(self, rows: np.ndarray, fields=("input_ids", "pos_ids")) -> dict[str, np.ndarray]:
        """The `fields` of `rows` (any order, repeats allowed), read from the shards by random access."""
        from tensorflow_datasets.proto import tf_example_pb2

        rows = np.asarray(rows, np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row {int(rows.max())} is outside the {self.name} split's {len(self)} rows")
        try:  # the serialized rows (array_record's own reader), decoded here: ~10x TFDS's per-row decoding
            records = self._source.data_source.__getitems__(rows.tolist()) if rows.size else []
        except Exception as e:  # noqa: BLE001 - the reader's own words, with the dataset named
            raise DataError(f"cannot read rows of the {self.name} split of {self._where}: {type(e).__name__}: {e}. "
                            "Check that its shards are all present and readable, or prepare the data again.") from None
        stored = {"input_ids": self._ids_dtype, "pos_ids": np.dtype(np.int8)}
        dtypes = {"input_ids": np.int32, "pos_ids": np.int8}
        out = {f: np.empty((len(records), self.input_ids.shape[1]), stored[f]) for f in fields}
        for j, record in enumerate(records):
            feature = tf_example_pb2.Example.FromString(record).features.feature
            for f in fields:
                out[f][j] = np.frombuffer(feature[f].bytes_list.value[0], stored[f])
        return {f: out[f].astype(dtypes[f], copy=False) for f in fields}


def load_columns(vdir: epath.Path) -> dict[str, dict[str, np.ndarray]]:
    """{split: {column: array}} from `columns.npz` (keys `<split>/<column>`)."""
    with np.load(io.BytesIO((vdir / COLUMNS).read_bytes())) as z:
        out: dict[str, dict[str, np.ndarray]] = {}
        for k in z.files:
            split, col = k.split("/", 1)
            out.setdefault(split, {})[col] = z[k]
    return out


def open_rows(vdir: epath.Path, manifest: dict) -> dict[str, Split]:
    """{split name: Split} of a checked version."""
    import tensorflow_datasets as tfds

    where = str(vdir)
    try:
        builder = tfds.builder_from_directory(where)
        sources = builder.as_data_source()
    except Exception as e:  # noqa: BLE001 - the library's own words, with the dataset named
        raise DataError(f"cannot open the prepared dataset {where}: {type(e).__name__}: {e}. Delete that folder "
                        "and prepare the data again (python -m climb_jax.prepare).") from None
    columns = load_columns(vdir)
    seq_len = int(manifest["seq_len"])
    ids_dtype = manifest["prepared"]["ids_dtype"]
    return {name: Split(name, sources[name], columns[name], seq_len, where, ids_dtype)
            for name in manifest["prepared"]["splits"]}


def load_small(vdir: epath.Path, name: str) -> Any:
    return np.load(io.BytesIO((vdir / name).read_bytes()))
