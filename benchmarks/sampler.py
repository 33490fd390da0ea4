"""Data-curriculum sampling cost per batch, and n-gram scoring throughput. One JSON object per line.

  python benchmarks/sampler.py --quick        # about half a minute
  python benchmarks/sampler.py                # more repetitions, plus the seed's pure-Python loop

For 10k, 100k and 1M training sequences it times one batch of indices from `BatchSampler` (uniform and
weighted) against a re-implementation of the seed's per-batch method in the same process: the
percentile of all N scores, every score above it set to zero (or to one for uniform sampling), then a
multinomial draw of the batch without replacement over all N weights (numpy, vectorised; the seed's
list comprehension over the scores is also timed, as `seed_python`, in the full run). The sampler's
cost must not grow with N and must be at least 100x below the seed's at 1M. Then it times
`ngram_scores` on random Zipf-distributed rows, and the self-perplexity re-scoring pass of the `small`
model (the training loop's jitted `make_score_fn`, batches of 256 rows of 128 tokens) in sequences/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from climb_jax.constants import NUM_SPECIAL  # noqa: E402
from climb_jax.curriculum.difficulty import ngram_scores  # noqa: E402
from climb_jax.curriculum.pacing import PacingParams, pace  # noqa: E402
from climb_jax.data.sampler import BatchSampler  # noqa: E402

PACING = PacingParams("linear")  # the seed's: 0.0625 .. 0.875, from 0.1 of the data
TOTAL_STEPS = 400_000
BATCH = 128


def seed_batch(scores: np.ndarray, p: float, uniform: bool, rng: np.random.Generator) -> np.ndarray:
    """The seed's per-batch draw, vectorised with numpy (its logic, without its Python loop)."""
    threshold = np.percentile(scores, p * 100)
    weights = np.where(scores > threshold, 0.0, 1.0 if uniform else scores.astype(np.float64))
    return rng.choice(len(scores), size=BATCH, replace=False, p=weights / weights.sum())


def seed_batch_python(scores: list, p: float, uniform: bool, rng: np.random.Generator) -> np.ndarray:
    """The seed's per-batch draw as it is written: a list comprehension over every score."""
    threshold = float(np.percentile(scores, p * 100))
    weights = np.array([0.0 if s > threshold else float(s) if not uniform else 1.0 for s in scores])
    return rng.choice(len(scores), size=BATCH, replace=False, p=weights / weights.sum())


def median_seconds(fn, steps) -> float:
    times = []
    for step in steps:
        t0 = time.perf_counter()
        fn(step)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_sampling(n: int, reps: int, seed_reps: int, python_loop: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    scores = rng.lognormal(5.0, 1.0, n).astype(np.float32)  # perplexity-like
    # Steps spread over the curriculum (not at its ends, where the seed's allowed set is trivial).
    steps = np.linspace(30_000, 340_000, reps).astype(int)
    seed_steps = np.linspace(30_000, 340_000, seed_reps).astype(int)
    rows = []
    for uniform in (True, False):
        t0 = time.perf_counter()
        sampler = BatchSampler(n, BATCH, seed=0, scores=scores, pacing=PACING, total_steps=TOTAL_STEPS,
                               uniform=uniform)
        setup_s = time.perf_counter() - t0
        sampler.indices(int(steps[0]))  # warm
        ours = median_seconds(sampler.indices, steps)
        draw = np.random.default_rng(1)
        seed = median_seconds(lambda s: seed_batch(scores, float(pace(PACING, s, TOTAL_STEPS)), uniform, draw),
                              seed_steps)
        row = {"bench": "sampler", "num_sequences": n, "batch": BATCH, "uniform": uniform,
               "ours_us_per_batch": round(ours * 1e6, 2), "seed_numpy_us_per_batch": round(seed * 1e6, 1),
               "speedup_vs_seed_numpy": round(seed / ours, 1), "ours_setup_s": round(setup_s, 4)}
        if python_loop:
            as_list = scores.tolist()
            py = median_seconds(lambda s: seed_batch_python(as_list, float(pace(PACING, s, TOTAL_STEPS)), uniform,
                                                            draw), seed_steps[:3])
            row["seed_python_us_per_batch"] = round(py * 1e6, 1)
            row["speedup_vs_seed_python"] = round(py / ours, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def bench_ngram(num_rows: int, seq_len: int, vocab: int, orders) -> list[dict]:
    rng = np.random.default_rng(0)
    ids = (rng.zipf(1.2, (num_rows, seq_len)) % (vocab - NUM_SPECIAL) + NUM_SPECIAL).astype(np.int32)
    ids[:, 0], ids[:, -1] = 0, 2
    tokens = int((ids >= NUM_SPECIAL).sum())
    rows = []
    for n in orders:
        t0 = time.perf_counter()
        scores = ngram_scores(ids, n, 1.0, vocab)
        dt = time.perf_counter() - t0
        assert np.all(np.isfinite(scores))
        row = {"bench": "ngram_scores", "n": n, "rows": num_rows, "tokens": tokens, "seconds": round(dt, 3),
               "tokens_per_s": round(tokens / dt)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def bench_rescoring(num_rows: int, batch: int, seq: int = 128) -> dict:
    """Self-perplexity re-scoring of `num_rows` sequences by the `small` model on this machine's default
    JAX device: the training loop's jitted `make_score_fn` called through `self_perplexity_scores`."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    from climb_jax.config_lib import MODEL_SIZES
    from climb_jax.curriculum.difficulty import self_perplexity_scores
    from climb_jax.models.roberta import RobertaConfig, init_params
    from climb_jax.train.step import make_score_fn

    vocab = 8192
    cfg = RobertaConfig(vocab_size=vocab, **MODEL_SIZES["small"], max_position_embeddings=512)
    params = init_params(jax.random.PRNGKey(0), cfg)
    fn = jax.jit(make_score_fn(cfg, 0.15))
    key = jax.random.PRNGKey(1)
    rng = np.random.default_rng(0)
    ids = (NUM_SPECIAL + np.minimum(rng.zipf(1.2, (num_rows, seq)), vocab - 1 - NUM_SPECIAL)).astype(np.int32)
    pos = np.zeros_like(ids, dtype=np.int8)

    def score_fn(i, p, idx):
        return np.asarray(fn(params, i, idx, key))

    t0 = time.perf_counter()
    self_perplexity_scores(score_fn, ids[:batch], pos[:batch], batch_size=batch)  # compile
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = self_perplexity_scores(score_fn, ids, pos, batch_size=batch)
    dt = time.perf_counter() - t0
    assert scores.shape == (num_rows,) and np.all(np.isfinite(scores))
    row = {"bench": "self_perplexity_rescoring", "model": "small", "sequences": num_rows, "seq_len": seq,
           "batch": batch, "devices": 1, "seconds": round(dt, 2), "compile_and_first_batch_s": round(compile_s, 2),
           "sequences_per_s": round(num_rows / dt, 1), "tokens_per_s": round(num_rows * seq / dt)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, no pure-Python seed loop")
    parser.add_argument("--out", type=str, default="", help="also append the JSON lines to this file")
    parser.add_argument("--no_rescoring", action="store_true", help="skip the self-perplexity re-scoring part")
    args = parser.parse_args()
    reps, seed_reps = (200, 10) if args.quick else (2000, 30)
    results = [{"bench": "environment", "quick": args.quick, "cpus": os.cpu_count(), "numpy": np.__version__}]
    print(json.dumps(results[0]), flush=True)
    by_n = {}
    for n in (10_000, 100_000, 1_000_000):
        rows = bench_sampling(n, reps, seed_reps, python_loop=not args.quick)
        results += rows
        by_n[n] = rows
    for uniform in (True, False):
        ours = [next(r for r in by_n[n] if r["uniform"] == uniform)["ours_us_per_batch"] for n in by_n]
        speedup = next(r for r in by_n[1_000_000] if r["uniform"] == uniform)["speedup_vs_seed_numpy"]
        summary = {"bench": "sampler_summary", "uniform": uniform, "ours_us_10k_100k_1m": ours,
                   "growth_1m_over_10k": round(ours[-1] / ours[0], 2), "speedup_at_1m": speedup,
                   "at_least_100x_at_1m": speedup >= 100}
        results.append(summary)
        print(json.dumps(summary), flush=True)
    results += bench_ngram(5_000 if args.quick else 20_000, 128, 8192, (1, 2, 3))
    if not args.no_rescoring:
        results.append(bench_rescoring(512 if args.quick else 2048, 256))
    if args.out:
        with open(args.out, "a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
