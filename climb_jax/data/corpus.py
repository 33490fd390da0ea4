"""Find a corpus's train/dev/test sources.

A corpus is a set of *sources* (one text file per source and split, one utterance or sentence per
line) in one of the BabyLM layouts, a plain folder of text files, the sample shipped with the package
(`"embedded"`), a Hugging Face dataset (`"hf:<name>"`, `hf_corpus.py`), or a BabyLM folder at a URI
(`gs://...`: listed here through `etils.epath`, read from a local copy, `remote.py`). Finding a corpus
lists files and reads no text; reading and cleaning lines is `text.py`, the sources `sources.py`.

Directory layouts, tried in this order:
  * a training folder (`babylm_10M/`, `train_10M/`, `train/`, ...) beside its dev and test folders;
  * flat files named `<source>.train` (with `<source>.dev`, `<source>.test`);
  * a flat folder of `*.txt` files (layout "text-files"): every file is a training source, and the
    dev split is carved out of them, a fixed share of lines chosen by a hash of each line
    (`sources.carve_dev`), announced at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

from absl import logging

from climb_jax import uri
from climb_jax.config import choices
from climb_jax.data.hf_corpus import hf_corpus
from climb_jax.data.sources import SPLITS, Corpus, Source, carve_dev
from climb_jax.data.text import ReadOptions
from climb_jax.errors import DataError

EMBEDDED_DIR = Path(__file__).resolve().parent / "sample"

# Directory layouts, tried in this order: (layout name, train folder, dev folder, test folder).
LAYOUTS = (
    ("babylm-2023", "babylm_10M", "babylm_dev", "babylm_test"),
    ("babylm-2024", "train_10M", "dev", "test"),
    ("babylm-2023-100M", "babylm_100M", "babylm_dev", "babylm_test"),
    ("babylm-2024-100M", "train_100M", "dev", "test"),
    ("split-folders", "train", "dev", "test"),
)


def _split_files(folder: Path, split: str) -> list[Path]:
    """A split folder's text files: `*.<split>` if there are any, else `*.txt`, else every file (the
    files left out are named in a warning: a source is never dropped silently)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    for pick in (lambda p: p.suffix == f".{split}", lambda p: p.suffix == ".txt"):
        chosen = [p for p in files if pick(p)]
        if chosen:
            if len(chosen) < len(files):
                logging.warning("%s: only the %s files are read; left out: %s", folder, chosen[0].suffix,
                                ", ".join(p.name for p in files if p not in chosen))
            return chosen
    return files


def _looked_for(root: Path) -> str:
    folders = ", ".join(f"{t}/" for _, t, _, _ in LAYOUTS)
    return (f"in {root} looked for a training folder ({folders}, each beside its dev/test folders), "
            "flat files named <source>.train (with <source>.dev, <source>.test) or *.txt files")


# A flat folder's file stems that name a split (`train.txt`, `valid.txt`, ...), not a source.
_SPLIT_STEMS = {"train": ("train",), "dev": ("dev", "valid", "validation"), "test": ("test",)}


def _text_files_layout(root: Path) -> tuple[str, dict[str, list[Path]]] | None:
    """A flat folder of `*.txt` files: "split-files" when one is `train.txt` (its dev and test beside it:
    `dev.txt` or `valid.txt`, `test.txt`), else "text-files" (every file a training source)."""
    texts = sorted(p for p in root.glob("*.txt") if p.is_file() and not p.name.startswith("."))
    if not texts:
        return None
    by_stem = {p.stem.lower(): p for p in texts}
    if "train" not in by_stem:
        return "text-files", {"train": texts, "dev": [], "test": []}
    found = {split: [by_stem[s] for s in stems if s in by_stem][:1] for split, stems in _SPLIT_STEMS.items()}
    used = {p for paths in found.values() for p in paths}
    if len(used) < len(texts):
        logging.warning("%s: train.txt names the splits; the other .txt files are not used: %s", root,
                        ", ".join(p.name for p in texts if p not in used))
    return "split-files", found


def _directory_layout(root: Path) -> tuple[str, dict[str, list[Path]]]:
    if not root.is_dir():
        raise DataError(
            f"data.corpus='{root}' is not a directory. Use 'embedded', a directory in a BabyLM layout "
            "(babylm_10M/ babylm_dev/ babylm_test/, or train_10M/ dev/ test/, or train/ dev/ test/), "
            "a folder of .txt files, or 'hf:<dataset name>'."
        )
    if (root / "babylm_data").is_dir() and not any((root / t).is_dir() for _, t, _, _ in LAYOUTS):
        root = root / "babylm_data"  # the BabyLM 2023 archive's top folder
    for layout, *folders in LAYOUTS:
        if (root / folders[0]).is_dir():
            found = {}
            for split, folder in zip(SPLITS, folders):
                path = root / folder
                found[split] = _split_files(path, split) if path.is_dir() else []
            if not found["train"]:
                raise DataError(f"the training folder {root / folders[0]} holds no text files; "
                                f"{_looked_for(root)}.")
            return layout, found
    flat = {split: sorted(p for p in root.glob(f"*.{split}") if p.is_file()) for split in SPLITS}
    if flat["train"]:
        return "flat", flat
    found = _text_files_layout(root)
    if found is not None:
        return found
    raise DataError(f"no training split found: {_looked_for(root)}.")


def _size(path) -> int:
    """A file's size in bytes, for a `pathlib.Path` or an `etils.epath.Path` (whose stat says `length`)."""
    st = path.stat()
    return int(st.st_size if hasattr(st, "st_size") else st.length)


def _file_sources(split: str, files: Sequence[Path], skipped: list[str], name: str = "") -> list[Source]:
    """One source per non-empty file, named by the file (`name`, when given, names every one)."""
    out = []
    for path in files:
        size = _size(path)
        if size == 0:
            logging.warning("corpus file %s is empty; it is skipped.", path)
            skipped.append(str(path))
            continue
        stem = path.name[: -len(f".{split}")] if path.name.endswith(f".{split}") else path.stem
        out.append(Source(name=name or stem, split=split, origin=str(path), path=path, approx_bytes=size))
    names = [s.name for s in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"the {split} split has several files for source(s) {', '.join(dup)}; "
                        "keep one file per source and split.")
    return out


def _count_words(source: Source, opts: ReadOptions) -> int:
    return sum(len(line.split()) for line in source.raw_lines(opts))


def apply_word_budget(sources: list[Source], max_words: int, opts: ReadOptions,
                      progress: Callable[[Iterable], Iterable] = iter) -> None:
    """Sets each source's `word_limit` so that the total is about `max_words`, shared in proportion
    to the sources' sizes (in words). `max_words <= 0` or a budget above the total keeps everything."""
    if max_words <= 0 or not sources:
        return
    counts = [_count_words(s, opts) for s in progress(sources)]
    total = sum(counts)
    if total <= max_words:
        return
    for source, n in zip(sources, counts):
        source.word_limit = max(1, round(max_words * n / total)) if n else 0


def remote_uri(spec: str) -> bool:
    """`gs://...`, `s3://...`: a location only `etils.epath` can read (not `hf:` nor a local path)."""
    return uri.is_uri(spec) and not spec.startswith(choices.HF_CORPUS_PREFIX)


def find_corpus(data_cfg) -> Corpus:
    """Resolves `data.corpus` to its sources, with empty files skipped. Cheap: it lists files and reads
    no text, so the sources can be checked against the config before any expensive work (a remote
    corpus is listed where it is).

    Word budgets (`max_train_words`, `max_eval_words`) need a pass over the text, so they are applied
    separately (`apply_word_budget`), only when the data is actually built."""
    spec = str(data_cfg.corpus).strip()
    read_options(data_cfg)  # bad settings fail before anything is read
    if spec.startswith(choices.HF_CORPUS_PREFIX):
        name = spec[len(choices.HF_CORPUS_PREFIX):].strip()
        if not name:
            raise DataError("data.corpus='hf:' names no dataset; use 'hf:<dataset name>'.")
        corpus = hf_corpus(spec, name, str(data_cfg.get("hf_subset", "") or ""))
    else:
        if not spec:
            raise DataError("data.corpus is empty; use 'embedded', a corpus directory or 'hf:<dataset name>'.")
        if spec == choices.EMBEDDED_CORPUS:
            root = EMBEDDED_DIR
        elif remote_uri(spec):  # listed through etils.epath; `prepare_data` reads a local copy
            from climb_jax.data.remote import open_uri

            root = open_uri(spec)
        else:
            root = Path(spec).expanduser().resolve()
        layout, found = _directory_layout(root)
        skipped: list[str] = []
        name = root.name if layout == "split-files" else ""
        splits = {split: _file_sources(split, found[split], skipped, name) for split in SPLITS}
        carved = layout == "text-files"
        if carved:
            splits["train"], splits["dev"] = carve_dev(splits["train"])
        files = list(dict.fromkeys(s.path for split in SPLITS for s in splits[split]))
        corpus = Corpus(spec=spec, root=str(root), layout=layout, splits=splits, files=files, identity=[],
                        skipped=skipped, carved_dev=carved)
    if not corpus.splits["train"]:
        raise DataError(
            f"the corpus {corpus.root} has no training text: every training file is empty"
            + (f" ({', '.join(corpus.skipped)})" if corpus.skipped else "") + "."
        )
    if not corpus.splits["dev"]:
        logging.warning("the corpus %s has no dev split; the dev set is empty.", corpus.root)
    return corpus


def read_options(data_cfg) -> ReadOptions:
    return ReadOptions(on_decode_error=str(data_cfg.on_decode_error), max_line_chars=int(data_cfg.max_line_chars),
                       max_undecodable_fraction=float(data_cfg.max_undecodable_fraction))
