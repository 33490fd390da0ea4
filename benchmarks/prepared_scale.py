"""The prepared dataset at two corpus sizes: preparation time and peak RSS, reading rate and reader RSS.

    python benchmarks/prepared_scale.py [--corpus ../shared/data/babylm_mini] [--factor 50] [--out FILE]

  1. `prepare_data` of the corpus (n-gram order, 8 shards), in a child process: seconds, peak RSS;
  2. a synthetic corpus `--factor` times as many rows (Zipf token ids, random POS and scores; no text, so
     no tokenizing: the same tokenizer is reused) written by the same writer (`tfds_writer.write_version`),
     in a child process: seconds, rows/s, peak RSS;
  3. for each size, in a fresh child process: the training host's data side (open the version, the
     sampler on its stored scores, `InputPipeline.batch` of a 128-row batch per step for `--batches`
     steps across the schedule): rows/s, and the RSS before and after (must not grow with the corpus);
     and the same rows read from a memory-mapped `.npy` copy (the former cache's path), for comparison.

The chips' need: `large` on v4-32 consumes 0.94 M tokens/s (launch/README.md's pre-flight table), i.e.
7.3k rows/s of 128 tokens for the whole slice, 1.8k rows/s per host (4 hosts); the goal is twice that.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

LARGE_V4_32_TOKENS_PER_S = 0.94e6
V4_32_HOSTS = 4


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _config(corpus: str, cache: str):
    from tests.helpers import load_config

    c = load_config("data_cl", "ngram,linear")
    c.data.corpus, c.data.cache_dir, c.data.shards = corpus, cache, 8
    c.data.nltk_data = os.environ.get("NLTK_DATA") or str(REPO.parent / "shared" / "nltk_data")
    return c


def child_prepare(corpus: str, cache: str) -> dict:
    from climb_jax.data.dataset import prepare_data

    c = _config(corpus, cache)
    t = time.perf_counter()
    data = prepare_data(c.data, cache, progress=False, curriculum=c.data_curriculum)
    return {"stage": "prepare", "rows": len(data.train), "seconds": round(time.perf_counter() - t, 1),
            "peak_rss_mb": round(_peak_mb(), 1), "directory": str(data.directory),
            "bytes": sum(p.stat().st_size for p in Path(str(data.directory)).rglob("*") if p.is_file())}


def child_synthetic(source_dir: str, factor: int, out: str) -> dict:
    """`factor` x the rows of the prepared version in `source_dir`, written by the same writer."""
    from etils import epath

    from climb_jax.data import prepared, tfds_writer
    from climb_jax.data.dataset import ArraySplit, _open_prepared

    small = _open_prepared(epath.Path(source_dir), json.loads((Path(source_dir) / prepared.MARKER).read_text()))
    n, L = len(small.train) * factor, small.train.input_ids.shape[1]
    work = Path(out) / "arrays"
    work.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {"input_ids": ((n, L), np.int32), "pos_ids": ((n, L), np.int8), "source_ids": ((n,), np.int16),
              "positions": ((n,), np.float32)}
    mm = {k: np.lib.format.open_memmap(work / f"{k}.npy", mode="w+", dtype=d, shape=s) for k, (s, d) in arrays.items()}
    V = len(small.tokenizer)
    for i in range(0, n, 65536):
        k = min(65536, n - i)
        mm["input_ids"][i:i + k] = np.minimum(rng.zipf(1.2, (k, L)), V - 1)
        mm["pos_ids"][i:i + k] = rng.integers(0, 17, (k, L))
        mm["source_ids"][i:i + k] = rng.integers(0, len(small.sources), k)
        mm["positions"][i:i + k] = rng.random(k)
    split = ArraySplit("train", **mm)

    class Built:  # what `write_version` reads of a build
        train, dev, test = split, None, None
        tokenizer, token_counts, sources = small.tokenizer, small.token_counts, small.sources

    scores = rng.random(n).astype(np.float32)
    manifest = dict(small.manifest, data_fingerprint=f"synthetic-x{factor}")
    t = time.perf_counter()
    vdir = tfds_writer.write_version(Built, scores, f"synthetic{factor:08d}" + "0" * 48, manifest, 8, Path(out) / "out")
    seconds = time.perf_counter() - t
    return {"stage": "write_synthetic", "factor": factor, "rows": n, "seconds": round(seconds, 1),
            "rows_per_s": round(n / seconds), "peak_rss_mb": round(_peak_mb(), 1), "directory": str(vdir),
            "bytes": sum(p.stat().st_size for p in Path(vdir).rglob("*") if p.is_file())}


def child_read(directory: str, batches: int, batch: int) -> dict:
    from etils import epath

    from climb_jax.data import prepared
    from climb_jax.data.dataset import _open_prepared
    from climb_jax.data.pipeline import InputPipeline
    from climb_jax.data.sampler import BatchSampler

    base = _rss_mb()
    data = _open_prepared(epath.Path(directory), json.loads((Path(directory) / prepared.MARKER).read_text()))
    total = 10_000
    sampler = BatchSampler(len(data.train), batch, 0, scores=data.train.scores,
                           pacing=_pacing(), total_steps=total)
    pipe = InputPipeline(data.train, sampler, prefetch=0)
    steps = np.linspace(0, total - 1, batches).astype(int)
    pipe.batch(0)
    opened = _rss_mb()
    t = time.perf_counter()
    for s in steps:
        pipe.batch(int(s))
    rate = batches * batch / (time.perf_counter() - t)
    after = _rss_mb()
    # The former cache's path: the same rows from a memory-mapped .npy copy of the training ids.
    with tempfile.TemporaryDirectory() as tmp:
        ids = np.lib.format.open_memmap(Path(tmp) / "ids.npy", mode="w+", dtype=np.int32,
                                        shape=data.train.input_ids.shape)
        for i in range(0, len(data.train), 65536):
            ids[i:i + 65536] = data.train.input_ids[np.arange(i, min(i + 65536, len(data.train)))]
        ids.flush()
        del ids
        mm = np.load(Path(tmp) / "ids.npy", mmap_mode="r")
        idx = [np.sort(sampler.indices(int(s))) for s in steps]
        t = time.perf_counter()
        for r in idx:
            np.asarray(mm[r])
        memmap_rate = batches * batch / (time.perf_counter() - t)
    return {"stage": "read", "rows": len(data.train), "rows_per_s": round(rate), "memmap_rows_per_s": round(memmap_rate),
            "rss_start_mb": round(base, 1), "rss_opened_mb": round(opened, 1), "rss_after_reading_mb": round(after, 1)}


def _pacing():
    from climb_jax.curriculum import pacing

    return pacing.PacingParams(name="linear", start_percent=0.1, end_percent=0.8)


def _child(*args) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=1800)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *rest = sys.argv[2:]
        fn = {"prepare": child_prepare, "synthetic": child_synthetic, "read": child_read}[kind]
        casts = {"synthetic": (str, int, str), "read": (str, int, int), "prepare": (str, str)}[kind]
        print(json.dumps(fn(*[c(v) for c, v in zip(casts, rest)])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(REPO.parent / "shared" / "data" / "babylm_mini"))
    ap.add_argument("--factor", type=int, default=50)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    need = LARGE_V4_32_TOKENS_PER_S / 128 / V4_32_HOSTS
    lines = []

    def emit(rec):
        lines.append(json.dumps(rec))
        print(lines[-1], flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(lines[-1] + "\n")

    with tempfile.TemporaryDirectory(prefix="prepared_scale_") as tmp:
        small = _child("prepare", args.corpus, Path(tmp) / "cache")
        emit(dict(small, corpus="x1"))
        big = _child("synthetic", small["directory"], args.factor, Path(tmp) / "synthetic")
        emit(dict(big, corpus=f"x{args.factor}"))
        reads = {}
        for name, rec in (("x1", small), (f"x{args.factor}", big)):
            reads[name] = _child("read", rec["directory"], args.batches, args.batch)
            emit(dict(reads[name], corpus=name))
        slow = min(r["rows_per_s"] for r in reads.values())
        growth = (reads[f"x{args.factor}"]["rss_after_reading_mb"] - reads["x1"]["rss_after_reading_mb"])
        emit({"bench": "prepared_scale_summary", "need_rows_per_s_per_host": round(need),
              "slowest_rows_per_s": slow, "times_need": round(slow / need, 2), "goal_times_need": 2.0,
              "goal_met": slow >= 2 * need, "reader_rss_growth_mb": round(growth, 1),
              "rows": {k: v["rows"] for k, v in reads.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
