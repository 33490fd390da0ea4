"""Building one cache entry: word budgets, the BPE, the packed rows of every split, token counts and
re-numbering, the final arrays and the manifest. `prepare_data` runs `build` in a temporary folder
that it publishes afterwards; each stage below is one function.

Stages:
  1. word budgets (`max_train_words`, `max_eval_words`) become per-source line limits;
  2. the byte-level BPE is trained on the training lines;
  3. each split is tokenized and tagged (`encoding`), and each source packed into rows (`packing`,
     layout `data.packing`) written to a part file;
  4. with `token_order="frequency"` the vocabulary is re-numbered by the training rows' token counts
     (dev and test are encoded with the raw BPE and mapped: re-numbering changes ids, never strings);
  5. the part files become the split's `.npy` arrays, and `manifest.json` is written last.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
from absl import logging
from tqdm.auto import tqdm

from climb_jax.data import cache, corpus as corpus_lib, packing, pos as pos_lib, text, tokenizer as tok_lib
from climb_jax.data.encoding import Encoder, encode_sources, worker_count
from climb_jax.data.sources import Corpus, Source
from climb_jax.errors import DataError

ARRAYS = {"input_ids": np.int32, "pos_ids": np.int8, "source_ids": np.int16, "positions": np.float32}
MODEL_MAX_LENGTH = 512  # the tokenizer's advertised limit: the encoder's position table


@dataclasses.dataclass
class SplitStats:
    lines: int = 0
    words: int = 0
    tokens: int = 0
    rows: int = 0
    dropped_tokens: int = 0
    per_source: dict = dataclasses.field(default_factory=dict)


def nltk_data_of(data_cfg) -> str | None:
    v = data_cfg.get("nltk_data", None)
    return str(v) if v else None


def apply_budgets(corpus: Corpus, data_cfg, opts, progress: bool) -> None:
    bar = (lambda xs: tqdm(xs, desc="counting words", unit="file", leave=False)) if progress else iter
    corpus_lib.apply_word_budget(corpus.splits["train"], int(data_cfg.max_train_words), opts, bar)
    for split in ("dev", "test"):
        corpus_lib.apply_word_budget(corpus.splits[split], int(data_cfg.max_eval_words), opts, bar)


def train_tokenizer(corpus: Corpus, vocab_size: int, opts, progress: bool):
    """The byte-level BPE trained on every training line."""
    lines_read = [0]

    def training_lines():
        reading = tqdm(total=corpus.approx_bytes("train") or None, unit="B", unit_scale=True,
                       desc="train: BPE", disable=not progress, leave=False)
        for src in corpus.splits["train"]:
            for line in src.lines(opts):
                lines_read[0] += 1
                reading.update(len(line) + 1)
                yield line
        reading.close()

    t = time.time()
    tok = tok_lib.train_bpe(training_lines(), vocab_size)
    if lines_read[0] == 0:
        raise DataError(f"the corpus {corpus.root} has no training text: its training files hold only blank lines.")
    if tok.get_vocab_size() < vocab_size:
        logging.warning("the training text supports only %d of the %d tokens asked for (data.vocab_size): merges "
                        "must occur at least %d times. The vocabulary is smaller.", tok.get_vocab_size(),
                        vocab_size, tok_lib.MIN_FREQUENCY)
    logging.info("trained a byte-level BPE of %d tokens on %d lines in %.1f s", tok.get_vocab_size(), lines_read[0],
                 time.time() - t)
    return tok


def pack_split(split: str, sources: list[Source], source_index: dict[str, int], encoder: Encoder,
               opts, report, seq_len: int, layout: str, parts_dir: Path,
               progress: bool) -> tuple[list[Path], SplitStats]:
    """Tokenizes, tags and packs one split's sources; each source's rows go to a part file."""
    stats = SplitStats()
    parts: list[Path] = []
    parts_dir.mkdir(parents=True, exist_ok=True)
    for i, enc in encode_sources(split, sources, encoder, opts, report, progress):
        src = sources[i]
        rows = packing.pack_source(enc.ids, enc.pos, enc.line_lengths, seq_len, layout)
        path = parts_dir / f"{i:04d}.npz"
        np.savez(path, input_ids=rows.input_ids, pos_ids=rows.pos_ids, positions=rows.positions,
                 source_ids=np.full(len(rows), source_index[src.name], np.int16))
        parts.append(path)
        n_lines = len(enc.line_lengths)
        stats.lines += n_lines
        stats.words += enc.words
        stats.tokens += len(enc.ids)
        stats.rows += len(rows)
        stats.dropped_tokens += rows.dropped_tokens
        stats.per_source[src.name] = {"origin": src.origin, "lines": int(n_lines), "words": int(enc.words),
                                      "tokens": int(len(enc.ids)), "rows": int(len(rows))}
        if src.word_limit:
            stats.per_source[src.name]["word_limit"] = int(src.word_limit)
    return parts, stats


def count_and_renumber(tok, parts: list[Path], token_order: str):
    """(tokenizer, token counts [V] in the final numbering, raw->final id map or None)."""
    size = tok.get_vocab_size(with_added_tokens=True)
    raw_counts = np.zeros(size, np.int64)
    for p in parts:
        with np.load(p) as z:
            raw_counts += np.bincount(z["input_ids"].ravel(), minlength=size)[:size]
    if token_order != "frequency":
        return tok, raw_counts, None
    remap = tok_lib.frequency_order(raw_counts)
    counts = np.zeros(size, np.int64)
    counts[remap] = raw_counts
    return tok_lib.renumber(tok, remap), counts, remap.astype(np.int32)


def assemble(split: str, parts: list[Path], out_dir: Path, seq_len: int, remap: np.ndarray | None) -> dict:
    """Concatenates part files into the split's `.npy` arrays (written through memory maps)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = []
    for p in parts:
        with np.load(p) as z:
            sizes.append(z["source_ids"].shape[0])
    n = int(sum(sizes))
    shapes = {"input_ids": (n, seq_len), "pos_ids": (n, seq_len), "source_ids": (n,), "positions": (n,)}
    records = {}
    for name, dtype in ARRAYS.items():
        path = out_dir / f"{name}.npy"
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shapes[name])
        offset = 0
        for p, k in zip(parts, sizes):
            if k:
                with np.load(p) as z:
                    block = z[name]
                mm[offset:offset + k] = remap[block] if (remap is not None and name == "input_ids") else block
            offset += k
        mm.flush()
        del mm
        records[f"{split}/{name}.npy"] = cache.array_record(path)
    return records


def build(data_cfg, corpus: Corpus, files: list[dict], key: str, settings: dict, tmp: Path,
          progress: bool) -> dict:
    """Builds the entry for fingerprint `key` in `tmp` and returns its manifest (already written)."""
    t_start = time.time()
    opts = corpus_lib.read_options(data_cfg)
    seq_len, vocab_size, layout = int(data_cfg.seq_len), int(data_cfg.vocab_size), str(data_cfg.packing)
    nltk_data = nltk_data_of(data_cfg)
    pos_lib.load_tagger(nltk_data)  # fail early (with the install command) when the tagger is missing
    text.check_decodable(corpus.files, opts)  # a file that is not UTF-8 text is refused before any work
    apply_budgets(corpus, data_cfg, opts, progress)
    source_index = {s: i for i, s in enumerate(corpus.sources)}
    timings = {}
    t = time.time()
    tok = train_tokenizer(corpus, vocab_size, opts, progress)
    timings["tokenizer_s"] = time.time() - t

    workers = worker_count(data_cfg, corpus.approx_bytes("train"))
    report = text.DecodeReport()
    encoder = Encoder(tok, nltk_data, workers)
    stats: dict[str, SplitStats] = {}
    parts: dict[str, list[Path]] = {}
    try:
        for split in ("train", "dev", "test"):
            if split == "test" and not corpus.splits["test"]:
                continue
            t = time.time()
            parts[split], stats[split] = pack_split(split, corpus.splits[split], source_index, encoder, opts, report,
                                                    seq_len, layout, tmp / "parts" / split, progress)
            timings[f"{split}_encode_s"] = time.time() - t
            if split == "train" and stats["train"].rows == 0:
                raise DataError(
                    f"the training split ({stats['train'].tokens} tokens) yields no sequence of "
                    f"data.seq_len={seq_len} tokens: every source is shorter than one sequence. Use more text "
                    "(data.max_train_words) or a shorter data.seq_len.")
    finally:
        encoder.close()
    tok, counts, remap = count_and_renumber(tok, parts["train"], str(data_cfg.token_order))
    tok_lib.to_transformers(tok, MODEL_MAX_LENGTH).save_pretrained(str(tmp / "tokenizer"))
    np.save(tmp / "token_counts.npy", counts)

    arrays = {}
    for split, split_parts in parts.items():
        arrays.update(assemble(split, split_parts, tmp / split, seq_len, remap))
    shutil.rmtree(tmp / "parts")
    arrays["token_counts.npy"] = cache.array_record(tmp / "token_counts.npy")
    checksums = {str(p.relative_to(tmp)): cache.sha256_file(p) for p in sorted((tmp / "tokenizer").iterdir())}
    checksums["token_counts.npy"] = cache.sha256_file(tmp / "token_counts.npy")
    decode = report.as_dict()
    for origin, rec in decode.items():
        logging.warning("%s: %d undecodable bytes on %d lines were replaced by U+FFFD", origin, rec["bytes"],
                        rec["lines"])
    for split, st in stats.items():
        logging.info("%s: %d sources, %d lines, %d words, %d tokens, %d sequences of %d (%d tokens dropped)",
                     split, len(st.per_source), st.lines, st.words, st.tokens, st.rows, seq_len, st.dropped_tokens)
    timings["total_s"] = time.time() - t_start
    manifest = {
        "format_version": cache.FORMAT_VERSION,
        "fingerprint": key,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "corpus": {"spec": corpus.spec, "root": corpus.root, "layout": corpus.layout, "files": files,
                   "identity": corpus.identity, "skipped_empty": corpus.skipped},
        "settings": settings,
        "seq_len": seq_len,
        "packing": layout,
        "vocab_size": int(tok.get_vocab_size(with_added_tokens=True)),
        "vocab_size_requested": vocab_size,
        "token_order": str(data_cfg.token_order),
        "sources": list(corpus.sources),
        "splits": {k: dataclasses.asdict(v) for k, v in stats.items()},
        "decode_errors": decode,
        "workers": workers,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "arrays": arrays,
        "checksums": checksums,
    }
    cache.write_manifest(tmp, manifest)
    logging.info("prepared data in %.1f s: %s", timings["total_s"], json.dumps(manifest["timings"]))
    return manifest
