"""Throughput of each data-preparation stage, with the projection to a 10M-word corpus.

    python benchmarks/data_prep.py [--quick] [--corpus DIR] [--nltk-data DIR] [--workers N]

Prints one JSON object per line: one per stage (words/s on the training split, seconds projected
for 10M words), then the whole `prepare_data` run. `--quick` uses the first 150k words of the
corpus (shared among the sources), three timing rounds per stage, and skips the end-to-end run;
the full mode uses all of it (babylm_mini: 1.9M words). On a shared machine the best round is the
number to read; projections are linear (BPE training grows a little faster than linearly).
Stages:
  read           streaming and cleaning the corpus files
  bpe_train      training the byte-level BPE (reading included)
  tokenize       `encode_batch` of every line (the Rust tokenizer, all cores)
  pos_fast       word splitting + the numpy perceptron tagger (one core)
  pos_nltk       the same with NLTK's own tagger, on a slice (the reference speed)
  encode_one_process  the pipeline's work item (tokenize + tag + align to subwords), in one process
  pack           packing token streams into rows (`data.packing`, default the reference's layout)
  prepare_data   the whole preparation (`--workers`, 0 = auto), cache writing included
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from climb_jax.config import schema  # noqa: E402
from climb_jax.data import corpus as corpus_lib  # noqa: E402
from climb_jax.data import dataset, encoding, packing, pos as pos_lib, tokenizer as tok_lib  # noqa: E402

TARGET_WORDS = 10_000_000


def emit(stage: str, words: int, seconds: float, **extra) -> None:
    rate = words / seconds if seconds > 0 else float("inf")
    rec = {"stage": stage, "words": words, "seconds": round(seconds, 3), "words_per_s": round(rate),
           "projected_10M_words_s": round(TARGET_WORDS / rate, 1), **extra}
    print(json.dumps(rec), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(REPO.parent / "shared" / "data" / "babylm_mini"))
    ap.add_argument("--nltk-data", default=os.environ.get("NLTK_DATA") or str(REPO.parent / "shared" / "nltk_data"))
    ap.add_argument("--quick", action="store_true", help="150k words, stages only")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--workers", type=int, default=0, help="prepare_data workers (0 = auto)")
    ap.add_argument("--rounds", type=int, default=0, help="timing rounds per stage (default: 3 quick, 1 full)")
    args = ap.parse_args()

    cfg = schema.base_config().data
    cfg.corpus = args.corpus
    cfg.vocab_size = args.vocab_size
    cfg.seq_len = args.seq_len
    cfg.nltk_data = args.nltk_data
    cfg.num_workers = args.workers
    if args.quick:
        cfg.max_train_words = 150_000
        cfg.max_eval_words = 20_000
    args.rounds = args.rounds or (3 if args.quick else 1)
    opts = corpus_lib.read_options(cfg)
    corpus = corpus_lib.find_corpus(cfg)
    corpus_lib.apply_word_budget(corpus.splits["train"], int(cfg.max_train_words), opts)
    print(json.dumps({"corpus": corpus.root, "layout": corpus.layout, "quick": args.quick,
                      "cpus": len(os.sched_getaffinity(0)), "vocab_size": args.vocab_size,
                      "seq_len": args.seq_len}), flush=True)

    # Stages are timed in rounds, each round running every stage once: a burst of outside load on a
    # shared machine hits them alike. Reported: the best round (least disturbed) and the median.
    per_source = [list(s.lines(opts)) for s in corpus.splits["train"]]
    lines = [x for src in per_source for x in src]
    words = sum(len(x.split()) for x in lines)
    tagger = pos_lib.load_tagger(args.nltk_data)
    ref = pos_lib.PosTagger(args.nltk_data, engine="nltk")
    sample = lines[:: max(1, len(lines) // 3000)][:3000]
    sample_words = sum(len(x.split()) for x in sample)
    state: dict = {}

    def read():
        return {"lines": sum(1 for s in corpus.splits["train"] for _ in s.lines(opts))}

    def bpe_train():
        state["tok"] = tok_lib.train_bpe((x for s in corpus.splits["train"] for x in s.lines(opts)), args.vocab_size)
        return {"vocab": state["tok"].get_vocab_size()}

    def tokenize():
        n = 0
        for i in range(0, len(lines), 4096):
            n += sum(len(e.ids) for e in state["tok"].encode_batch(lines[i:i + 4096], add_special_tokens=False))
        return {"tokens": n}

    def pos_fast():
        for i in range(0, len(lines), 4096):
            tagger.tag_lines(lines[i:i + 4096])
        return {}

    def pos_nltk():
        ref.tag_lines(sample)
        return {}

    def encode_one_process():
        state["encoded"] = [[encoding.encode_lines(src[i:i + 4096], state["tok"], tagger)
                             for i in range(0, len(src), 4096)] for src in per_source]
        return {}

    def pack():
        rows = 0
        for parts in state["encoded"]:
            ids = np.concatenate([p.ids for p in parts])
            pos = np.concatenate([p.pos for p in parts])
            lens = np.concatenate([p.line_lengths for p in parts])
            rows += len(packing.pack_source(ids, pos, lens, args.seq_len, str(cfg.packing)))
        return {"rows": rows}

    stages = [(read, words), (bpe_train, words), (tokenize, words), (pos_fast, words), (pos_nltk, sample_words),
              (encode_one_process, words), (pack, words)]
    times: dict[str, list[float]] = {f.__name__: [] for f, _ in stages}
    extras: dict[str, dict] = {}
    for _ in range(args.rounds):
        for fn, _n in stages:
            t = time.perf_counter()
            extras[fn.__name__] = fn()
            times[fn.__name__].append(time.perf_counter() - t)
    for fn, n in stages:
        ts = times[fn.__name__]
        emit(fn.__name__, n, min(ts), median_s=round(float(np.median(ts)), 3), rounds=len(ts), **extras[fn.__name__])

    if not args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            data = dataset.prepare_data(cfg, Path(tmp), progress=False)
            total_s = time.perf_counter() - t
            m = data.manifest
            emit("prepare_data", m["splits"]["train"]["words"], total_s, workers=m["workers"],
                 timings=m["timings"], train_rows=len(data.train),
                 all_words=sum(s["words"] for s in m["splits"].values()))


if __name__ == "__main__":
    main()
