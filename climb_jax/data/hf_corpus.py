"""A Hugging Face dataset as a corpus (`data.corpus="hf:<name>"`): splits, sources and text column.

A dataset saved with `save_to_disk` is loaded from its folder; a name goes through
`datasets.load_dataset` (never remote code). Sources are the values of a source column (`source`,
`filename`, ...) when there is one, else the whole split is one source.
"""

from __future__ import annotations

import re
from pathlib import Path

from climb_jax.data.sources import SPLITS, Corpus, Source
from climb_jax.errors import DataError

HF_DEV_SPLITS = ("validation", "dev", "valid")
HF_SOURCE_COLUMNS = ("source", "filename", "file", "domain")


def hf_load(name: str, subset: str):
    """A `DatasetDict`: a dataset saved with `save_to_disk`, or `datasets.load_dataset` (never remote code)."""
    import datasets  # late: heavy, and only needed for this kind of corpus

    local = Path(name).expanduser()
    if local.is_dir() and ((local / "dataset_dict.json").exists() or (local / "state.json").exists()):
        loaded = datasets.load_from_disk(str(local))
    else:
        try:
            loaded = datasets.load_dataset(name, subset or None)
        except Exception as e:  # noqa: BLE001 - any loader failure becomes one actionable message
            raise DataError(
                f"could not load the Hugging Face dataset '{name}' (data.hf_subset='{subset}'): "
                f"{type(e).__name__}: {e}. The first load needs network access (later ones use the "
                "Hugging Face cache); check the name and subset, or point data.corpus at a local copy "
                "('hf:/path/to/dataset' saved with save_to_disk, or a BabyLM directory)."
            ) from None
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def hf_corpus(spec: str, name: str, subset: str) -> Corpus:
    dd = hf_load(name, subset)
    keys = list(dd.keys())
    pick = {"train": "train" if "train" in dd else None,
            "dev": next((k for k in HF_DEV_SPLITS if k in dd), None),
            "test": "test" if "test" in dd else None}
    if pick["train"] is None:
        raise DataError(f"the Hugging Face dataset '{name}' has no 'train' split (it has: {', '.join(keys)}).")
    default_name = re.sub(r"[^\w.-]+", "_", Path(name.rstrip("/")).name) or "text"
    splits: dict[str, list[Source]] = {s: [] for s in SPLITS}
    identity = [{"hf": name, "subset": subset if not Path(name).expanduser().is_dir() else ""}]
    for split, key in pick.items():
        if key is None:
            continue
        ds = dd[key]
        string_cols = [c for c, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
        text_col = "text" if "text" in ds.column_names else (string_cols[0] if len(string_cols) == 1 else None)
        if text_col is None:
            raise DataError(f"the Hugging Face dataset '{name}' split '{key}' has no 'text' column "
                            f"(columns: {', '.join(ds.column_names)}); rename the text column to 'text'.")
        source_col = next((c for c in HF_SOURCE_COLUMNS if c in ds.column_names and c != text_col), None)
        identity.append({"split": key, "fingerprint": getattr(ds, "_fingerprint", ""), "rows": len(ds)})
        per_byte = (ds.data.nbytes / max(len(ds), 1)) if len(ds) else 0
        if source_col is None:
            groups = {default_name: None}
        else:
            values = list(ds[source_col])
            groups: dict[str, list[int]] = {}
            for i, v in enumerate(values):
                stem = str(v)
                for suffix in (".txt", *(f".{x}" for x in (*SPLITS, *HF_DEV_SPLITS))):
                    stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
                groups.setdefault(Path(stem).name or "unknown", []).append(i)
        for source, idx in sorted(groups.items()):
            rows = ds if idx is None else ds.select(idx)
            rows = rows.select_columns([text_col])
            splits[split].append(Source(name=source, split=split, origin=f"hf:{name}/{key}/{source}",
                                        rows=rows, text_column=text_col,
                                        approx_bytes=int(per_byte * len(rows))))
    return Corpus(spec=spec, root=name, layout="huggingface", splits=splits, files=[], identity=identity,
                  skipped=[])
