"""Data-curriculum sampling cost per batch, and n-gram scoring throughput. One JSON object per line.

  python benchmarks/sampler.py --quick        # about half a minute
  python benchmarks/sampler.py                # more repetitions, plus the reference's pure-Python loop

For 10k, 100k and 1M training sequences it times one batch of indices from `BatchSampler` (uniform and
weighted) against a re-implementation of the reference's per-batch method in the same process: the
percentile of all N scores, every score above it set to zero (or to one for uniform sampling), then a
multinomial draw of the batch without replacement over all N weights (numpy, vectorised; the reference's
list comprehension over the scores is also timed, as `reference_python`, in the full run). The sampler's
cost must not grow with N and must be at least 100x below the reference's at 1M. Then it times
`ngram_scores` on random Zipf-distributed rows, and the self-perplexity re-scoring pass of the `small`
model (the training run's `SelfPerplexityScorer`, 256 masked sequences of 128 tokens per call, on a mesh
over every local device) in sequences/s, for both estimators: `one_mask` (one forward pass per row) and
`pll` (the reference's, one pass per non-special position).

  python benchmarks/sampler.py --rescoring_only     # just the re-scoring figures
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

PACING = PacingParams("linear")  # the reference's: 0.0625 .. 0.875, from 0.1 of the data
TOTAL_STEPS = 400_000
BATCH = 128


def reference_batch(scores: np.ndarray, p: float, uniform: bool, rng: np.random.Generator) -> np.ndarray:
    """The reference's per-batch draw, vectorised with numpy (its logic, without its Python loop)."""
    threshold = np.percentile(scores, p * 100)
    weights = np.where(scores > threshold, 0.0, 1.0 if uniform else scores.astype(np.float64))
    return rng.choice(len(scores), size=BATCH, replace=False, p=weights / weights.sum())


def reference_batch_python(scores: list, p: float, uniform: bool, rng: np.random.Generator) -> np.ndarray:
    """The reference's per-batch draw as it is written: a list comprehension over every score."""
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


def bench_sampling(n: int, reps: int, reference_reps: int, python_loop: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    scores = rng.lognormal(5.0, 1.0, n).astype(np.float32)  # perplexity-like
    # Steps spread over the curriculum (not at its ends, where the reference's allowed set is trivial).
    steps = np.linspace(30_000, 340_000, reps).astype(int)
    reference_steps = np.linspace(30_000, 340_000, reference_reps).astype(int)
    rows = []
    for uniform in (True, False):
        t0 = time.perf_counter()
        sampler = BatchSampler(n, BATCH, seed=0, scores=scores, pacing=PACING, total_steps=TOTAL_STEPS,
                               uniform=uniform)
        setup_s = time.perf_counter() - t0
        sampler.indices(int(steps[0]))  # warm
        ours = median_seconds(sampler.indices, steps)
        draw = np.random.default_rng(1)
        ref = median_seconds(lambda s: reference_batch(scores, float(pace(PACING, s, TOTAL_STEPS)), uniform, draw),
                              reference_steps)
        row = {"bench": "sampler", "num_sequences": n, "batch": BATCH, "uniform": uniform,
               "ours_us_per_batch": round(ours * 1e6, 2), "reference_numpy_us_per_batch": round(ref * 1e6, 1),
               "speedup_vs_reference_numpy": round(ref / ours, 1), "ours_setup_s": round(setup_s, 4)}
        if python_loop:
            as_list = scores.tolist()
            py = median_seconds(lambda s: reference_batch_python(as_list, float(pace(PACING, s, TOTAL_STEPS)), uniform,
                                                            draw), reference_steps[:3])
            row["reference_python_us_per_batch"] = round(py * 1e6, 1)
            row["speedup_vs_reference_python"] = round(py / ours, 1)
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
        scores = ngram_scores(ids, n, vocab_size=vocab)  # the default: unsmoothed, specials counted
        dt = time.perf_counter() - t0
        assert np.all(np.isfinite(scores))
        row = {"bench": "ngram_scores", "n": n, "rows": num_rows, "tokens": tokens, "seconds": round(dt, 3),
               "tokens_per_s": round(tokens / dt)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def bench_rescoring(calls: int, batch: int, seq: int = 128) -> list[dict]:
    """Self-perplexity re-scoring by the `small` model on this machine's JAX devices (one mesh over all of
    them), through the training run's `SelfPerplexityScorer`: `batch` masked sequences of `seq` tokens per
    call (rows for `one_mask`, masked copies for `pll`). The two estimators' calls alternate, `calls` of
    each, and the fastest call of each is kept, so a change of load on a shared machine hits both alike.
    Sequences/s follows from the rows one call covers: `batch` for one_mask, `batch / (seq - 2)` for pll
    (one copy per non-special position of a one-line row; rows holding more line boundaries are a little
    cheaper). The scores of one full pass are checked for finiteness."""
    import jax
    from ml_collections import ConfigDict

    from climb_jax.config.schema import MODEL_SIZES
    from climb_jax.curriculum.self_perplexity import SelfPerplexityScorer
    from climb_jax.models.roberta import RobertaConfig, init_params
    from climb_jax.parallel.mesh import create_mesh

    vocab = 8192
    cfg = RobertaConfig(vocab_size=vocab, **MODEL_SIZES["small"], max_position_embeddings=512)
    params = init_params(jax.random.PRNGKey(0), cfg)
    mesh = create_mesh(ConfigDict(dict(data=-1, fsdp=1, model=1)))
    key = jax.random.PRNGKey(1)
    rng = np.random.default_rng(0)
    ids = (NUM_SPECIAL + np.minimum(rng.zipf(1.2, (batch, seq)), vocab - 1 - NUM_SPECIAL)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 0, 2  # one line per row: seq - 2 scored positions
    pos = np.zeros_like(ids, dtype=np.int8)
    rows_per_call = {"one_mask": batch, "pll": batch / (seq - 2)}
    pll_rows = max(1, batch // (seq - 2))
    scorers, work, first = {}, {}, {}
    for est in ("one_mask", "pll"):
        scorers[est] = SelfPerplexityScorer(cfg, est, mask_probability=0.15, batch_size=batch, mesh=mesh)
        n = batch if est == "one_mask" else pll_rows  # exactly one full call
        work[est] = (ids[:n], pos[:n], np.arange(n))
        t0 = time.perf_counter()
        scores = scorers[est](params, *work[est], key)
        first[est] = time.perf_counter() - t0
        assert np.all(np.isfinite(scores))
    times = {est: [] for est in scorers}
    for _ in range(calls):
        for est, scorer in scorers.items():
            t0 = time.perf_counter()
            scorer(params, *work[est], key)
            times[est].append(time.perf_counter() - t0)
    rows = []
    for est in scorers:
        call_s = min(times[est])
        row = {"bench": "self_perplexity_rescoring", "estimator": est, "model": "small", "seq_len": seq,
               "batch": batch, "devices": jax.device_count(), "platform": jax.devices()[0].platform,
               "calls": calls, "call_s": round(call_s, 3), "median_call_s": round(float(np.median(times[est])), 3),
               "compile_and_first_call_s": round(first[est], 2),
               "sequences_per_s": round(rows_per_call[est] / call_s, 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    ratio = {"bench": "self_perplexity_cost_ratio",
             "pll_over_one_mask_seconds_per_sequence": round(rows[0]["sequences_per_s"] / rows[1]["sequences_per_s"], 1)}
    print(json.dumps(ratio), flush=True)
    return rows + [ratio]


def bench_sampler_sizes(reps: int, reference_reps: int, python_loop: bool) -> list[dict]:
    results, by_n = [], {}
    for n in (10_000, 100_000, 1_000_000):
        rows = bench_sampling(n, reps, reference_reps, python_loop=python_loop)
        results += rows
        by_n[n] = rows
    for uniform in (True, False):
        ours = [next(r for r in by_n[n] if r["uniform"] == uniform)["ours_us_per_batch"] for n in by_n]
        speedup = next(r for r in by_n[1_000_000] if r["uniform"] == uniform)["speedup_vs_reference_numpy"]
        summary = {"bench": "sampler_summary", "uniform": uniform, "ours_us_10k_100k_1m": ours,
                   "growth_1m_over_10k": round(ours[-1] / ours[0], 2), "speedup_at_1m": speedup,
                   "at_least_100x_at_1m": speedup >= 100}
        results.append(summary)
        print(json.dumps(summary), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, no pure-Python loop of the reference")
    parser.add_argument("--out", type=str, default="", help="also append the JSON lines to this file")
    parser.add_argument("--no_rescoring", action="store_true", help="skip the self-perplexity re-scoring part")
    parser.add_argument("--rescoring_only", action="store_true", help="only the self-perplexity re-scoring part")
    parser.add_argument("--rescoring_calls", type=int, default=0,
                        help="timed scoring calls per estimator (default: 2 quick / 5)")
    args = parser.parse_args()
    reps, reference_reps = (200, 10) if args.quick else (2000, 30)
    results = [{"bench": "environment", "quick": args.quick, "cpus": os.cpu_count(), "numpy": np.__version__}]
    print(json.dumps(results[0]), flush=True)
    if not args.rescoring_only:
        results += bench_sampler_sizes(reps, reference_reps, not args.quick)
        results += bench_ngram(5_000 if args.quick else 20_000, 128, 8192, (1, 2, 3))
    if not args.no_rescoring:
        results += bench_rescoring(args.rescoring_calls or (2 if args.quick else 5), 256)
    if args.out:
        with open(args.out, "a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
