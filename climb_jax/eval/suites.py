"""Minimal-pair suites: directories of JSON-lines files with `sentence_good` / `sentence_bad`.

BLiMP, its BabyLM-filtered version and the BabyLM supplement all share this form: one file per
paradigm, one JSON object per line (`.jsonl`, or gzip-compressed `.jsonl.gz`). BLiMP adds `field`,
`linguistics_term`, `UID` and `pairID` (`pair_id` in the filtered version); other suites may carry
none of them, so they are optional here. Sentences may contain newlines (the supplement's
dialogues). Loading is pure Python, so a command line can reject a bad suite before it imports JAX
or restores a checkpoint.

Two suites ship with the package (eval/sample/NOTICE.md): "embedded", the first 20 pairs of each
paradigm of BabyLM's filtered BLiMP (seconds to score: smoke runs, tests), and "blimp_filtered",
the whole of it (59,875 pairs, gzip-compressed: the suite behind the reference's BLiMP figures, the
default of full-size runs).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from climb_jax.config.choices import EMBEDDED_SUITE, FULL_BLIMP_SUITE
from climb_jax.errors import ConfigError, DataError

EMBEDDED = EMBEDDED_SUITE
_SAMPLE = Path(__file__).resolve().parent / "sample"
EMBEDDED_DIR = _SAMPLE / "blimp_filtered"
FULL_BLIMP_DIR = _SAMPLE / "blimp_filtered_full"
BUNDLED = {EMBEDDED_SUITE: EMBEDDED_DIR, FULL_BLIMP_SUITE: FULL_BLIMP_DIR}
SUITE_SUFFIX = ".jsonl"
SUITE_SUFFIXES = (".jsonl", ".jsonl.gz")
REQUIRED_KEYS = ("sentence_good", "sentence_bad")


def suite_files(directory: Path) -> list[Path]:
    """The suite's files, sorted by name (a paradigm is one file, compressed or not)."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(SUITE_SUFFIXES))


def paradigm_name(path: Path) -> str:
    for suffix in sorted(SUITE_SUFFIXES, key=len, reverse=True):
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


@dataclass(frozen=True)
class MinimalPair:
    """One grammatical/ungrammatical pair; `field`/`term` are None where a suite has no such key."""

    good: str
    bad: str
    paradigm: str
    field: str | None = None
    term: str | None = None
    pair_id: str | None = None


@dataclass(frozen=True)
class Paradigm:
    """The pairs of one file; its name is the file name without `.jsonl`."""

    name: str
    path: Path
    pairs: tuple[MinimalPair, ...]


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    paradigms: tuple[Paradigm, ...]

    @property
    def pairs(self) -> list[MinimalPair]:
        return [p for paradigm in self.paradigms for p in paradigm.pairs]

    @property
    def num_pairs(self) -> int:
        return sum(len(p.pairs) for p in self.paradigms)


def resolve_suite_dir(spec: str | Path) -> tuple[str, Path]:
    """(suite name, directory) for a bundled suite's name or a directory path; DataError if unusable."""
    if str(spec) in BUNDLED:
        return str(spec), BUNDLED[str(spec)]
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"minimal-pair suite directory {path} does not exist; pass a directory of "
                        f"*{SUITE_SUFFIX} files, '{EMBEDDED_SUITE}' for the built-in BLiMP sample or "
                        f"'{FULL_BLIMP_SUITE}' for the built-in full filtered BLiMP.")
    if not path.is_dir():
        raise DataError(f"minimal-pair suite {path} is not a directory; pass the directory that holds "
                        f"the *{SUITE_SUFFIX} files.")
    if not suite_files(path):
        raise DataError(f"minimal-pair suite directory {path} has no *{SUITE_SUFFIX} (or *{SUITE_SUFFIX}.gz) files.")
    return path.resolve().name, path.resolve()


def _optional_str(record: dict, *keys: str) -> str | None:
    for key in keys:
        value = record.get(key)
        if value is not None:
            return str(value)
    return None


def read_paradigm(path: Path, max_pairs: int = 0) -> Paradigm:
    """Reads one JSON-lines file; blank lines are skipped, anything else malformed is a DataError."""
    name = paradigm_name(path)
    pairs: list[MinimalPair] = []
    try:
        handle = gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else path.open(encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot read minimal-pair file {path}: {e}") from None
    with handle:
        try:
            for lineno, line in enumerate(handle, start=1):
                if max_pairs and len(pairs) >= max_pairs:
                    break
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}, line {lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                                    "each line must be one JSON object.") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}, line {lineno}: expected a JSON object with "
                                    f"{' and '.join(REQUIRED_KEYS)}, got {type(record).__name__}.")
                missing = [k for k in REQUIRED_KEYS if k not in record]
                if missing:
                    raise DataError(f"{path}, line {lineno}: missing key(s) {', '.join(missing)}; every line "
                                    f"needs {' and '.join(REQUIRED_KEYS)}.")
                for key in REQUIRED_KEYS:
                    if not isinstance(record[key], str) or not record[key].strip():
                        raise DataError(f"{path}, line {lineno}: '{key}' must be a non-empty string, "
                                        f"got {record[key]!r}.")
                pairs.append(MinimalPair(
                    good=record["sentence_good"],
                    bad=record["sentence_bad"],
                    paradigm=name,
                    field=_optional_str(record, "field"),
                    term=_optional_str(record, "linguistics_term"),
                    pair_id=_optional_str(record, "pairID", "pair_id"),
                ))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason}); save the file as UTF-8.") from None
        except (OSError, EOFError) as e:  # a damaged .gz
            raise DataError(f"cannot read minimal-pair file {path}: {e}") from None
    if not pairs:
        raise DataError(f"minimal-pair file {path} is empty; remove it or add lines with "
                        f"{' and '.join(REQUIRED_KEYS)}.")
    return Paradigm(name=name, path=path, pairs=tuple(pairs))


def load_suite(spec: str | Path, *, max_pairs_per_file: int = 0) -> Suite:
    """Loads every `*.jsonl` file of a suite (sorted by name), keeping the first N pairs of each.

    `max_pairs_per_file=0` keeps all pairs; taking a prefix rather than a sample keeps the subset
    identical across runs and machines.
    """
    if max_pairs_per_file < 0:
        raise ConfigError(f"eval.max_pairs_per_file must be >= 0 (0 = all pairs), got {max_pairs_per_file}.")
    name, directory = resolve_suite_dir(spec)
    files = suite_files(directory)
    names = [paradigm_name(f) for f in files]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"minimal-pair suite directory {directory} holds {', '.join(twice)} both compressed and "
                        "not; keep one file per paradigm.")
    paradigms = tuple(read_paradigm(f, max_pairs_per_file) for f in files)
    return Suite(name=name, path=directory, paradigms=paradigms)
