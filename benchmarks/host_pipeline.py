"""Does the host keep the chips fed? The host side of training alone, in sequences/s per host.

  python benchmarks/host_pipeline.py --quick          # the embedded sample, a few hundred batches
  python benchmarks/host_pipeline.py --corpus=../shared/data/babylm_mini
  python benchmarks/host_pipeline.py --target_sequences_per_s=30000   # compare with a given rate

For each curriculum, the stages the training loop runs on the host, built exactly as it builds them
(`prepare_data` -> the prepared dataset, `DataCurriculum` initial scores, `BatchSampler`,
`InputPipeline`, `mesh.global_batch`), timed over four runs of consecutive steps spread across the
schedule (a batch is a pure function of the step, so any step can be drawn at any time):

  sampler     `sampler.indices(step)`: which rows (pacing, percentile, weighted draws)
  assembly    `pipeline.batch(step)`: indices plus the rows read by random access from the array_record shards
  prefetched  what the consumer of `pipeline.iterate` receives (the background thread at work)
  transfer    `mesh.global_batch` of an assembled batch onto this machine's devices, waited for
  loop        the training loop without the device step: prefetched batches, each put on the devices

The vocabulary and objective curricula run on the device; on the host they are the vanilla pipeline
(listed anyway, so every curriculum has its row).

The rate the chips consume comes from the pre-flight (`climb_jax.aot`) of `small` (bfloat16, global
batch 128) on a v4-8, one host: global batch / estimated step time. It is read from the pre-flight's
cache, compiling it if needed (minutes; libtpu required); `--target_sequences_per_s` gives it instead.
The host must deliver at least twice that: the summary line names every stage and curriculum that
falls short. On this CPU machine "transfer" is a host-to-host copy; on a TPU VM it is a DMA over PCIe,
which the same stage measures there.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

# (name, config file, preset words): every curriculum kind, and the data curriculum's host-side variants.
CURRICULA = (
    ("vanilla", "vanilla", ""),
    ("vocab", "vocab_cl", "token_ids"),
    ("objective", "objective_cl", "pos_nv_mlm"),
    ("data:ngram", "data_cl", "ngram"),
    ("data:ngram_weighted", "data_cl", "ngram,weighted"),
    ("data:source_order", "data_cl", "source_order"),
    ("data:child_age", "data_cl", "child_age"),
    ("data:self_perplexity", "data_cl", "self_perplexity"),
)
STAGES = ("sampler", "assembly", "prefetched", "transfer", "loop")
HEADROOM = 2.0  # the host must deliver this multiple of what the chips consume


def make_config(stem: str, words: str, args):
    config = common.load_config(stem, ",".join(w for w in (words, "small") if w))
    config.data.corpus = args.corpus
    config.data.cache_dir = args.cache_dir
    if args.max_train_words:
        config.data.max_train_words = args.max_train_words
        config.data.max_eval_words = max(args.max_train_words // 10, 1000)
    config.trainer.batch_size = args.batch
    return config


def schedule_steps(total: int, batches: int, blocks: int = 4) -> list[int]:
    """`batches` steps in `blocks` runs of consecutive steps spread over the schedule: the pace changes
    along the run (so does the sampler's allowed set), and consecutive steps share an epoch's
    permutation as they do in training."""
    per = max(batches // blocks, 1)
    starts = np.linspace(0, max(total - per, 0), blocks).astype(int)
    return [int(s) + i for s in starts for i in range(per)]


def _rate(fn, steps: list[int], batch: int) -> float:
    fn(steps[0])  # warm: first-touch page faults of the memory map, thread start
    t0 = time.perf_counter()
    for s in steps:
        fn(s)
    return batch * len(steps) / (time.perf_counter() - t0)


def measure(config, data, steps: list[int], mesh) -> dict:
    """Sequences/s of each host stage for one curriculum (see the module docstring)."""
    import jax

    from climb_jax.config import schema
    from climb_jax.curriculum.data_curriculum import DataCurriculum
    from climb_jax.data.pipeline import InputPipeline
    from climb_jax.data.sampler import BatchSampler
    from climb_jax.parallel import mesh as mesh_lib

    parsed = schema.validate(config)
    t = config.trainer
    model = dataclasses.replace(parsed.model, vocab_size=len(data.tokenizer))  # re-scoring's model (not run here)
    curriculum = DataCurriculum.from_config(config, data, model, mesh)
    sampler = BatchSampler(len(data.train), t.batch_size, config.seed, process_index=jax.process_index(),
                           process_count=jax.process_count(), scores=curriculum.initial_scores(),
                           pacing=parsed.data_pacing, total_steps=t.total_steps,
                           uniform=config.data_curriculum.uniform_sampling)
    pipeline = InputPipeline(data.train, sampler, prefetch=config.data.prefetch)
    sharding = mesh_lib.batch_sharding(mesh)
    local = mesh_lib.batch_size_per_process(t.batch_size, mesh)
    rates = {"sampler": _rate(sampler.indices, steps, local), "assembly": _rate(pipeline.batch, steps, local)}

    # The prefetching thread, consumed as the training loop consumes it (consecutive steps).
    start = steps[len(steps) // 2]
    it = pipeline.iterate(start, start + len(steps) + 1)
    next(it)
    t0 = time.perf_counter()
    for _ in range(len(steps)):
        next(it)
    rates["prefetched"] = local * len(steps) / (time.perf_counter() - t0)
    pipeline.close()

    device_keys = ("input_ids", "pos_ids")
    ready = [pipeline.batch(s) for s in steps]  # a fresh batch per step, as training transfers
    queue = iter(ready * 2)

    def transfer(_step):
        b = next(queue)
        jax.block_until_ready(mesh_lib.global_batch({k: b[k] for k in device_keys}, sharding))

    rates["transfer"] = _rate(transfer, steps, local)

    # The training loop without the device step: the prefetched batches, each put on the devices.
    it = pipeline.iterate(start, start + len(steps) + 1)
    next(it)
    t0 = time.perf_counter()
    for _ in range(len(steps)):
        _, b = next(it)
        jax.block_until_ready(mesh_lib.global_batch({k: b[k] for k in device_keys}, sharding))
    rates["loop"] = local * len(steps) / (time.perf_counter() - t0)
    pipeline.close()
    return rates


def predicted_rate(args) -> tuple[float | None, str]:
    """Sequences/s the chips consume, per host, and where the figure comes from."""
    if args.target_sequences_per_s:
        return float(args.target_sequences_per_s), "--target_sequences_per_s"
    if args.quick:
        return None, "not computed with --quick (give --target_sequences_per_s)"
    from climb_jax.preflight import aot
    from climb_jax.preflight import table as aot_table

    if not aot.libtpu_available():
        return None, "libtpu is not installed: no pre-flight (give --target_sequences_per_s)"
    config = aot_table.table_config("vanilla", "small")
    report = aot.preflight(config, "v4-8", extras=False, cache_dir=aot.default_cache_dir())
    return report.sequences_per_s / report.hosts, (f"pre-flight of small (bfloat16, batch {report.global_batch}) on "
                                                   f"v4-8: {report.step_s * 1e3:.2f} ms per step (estimate)")


def shortfalls(results: dict[str, dict], needed: float | None) -> list[dict]:
    """Every (curriculum, stage) whose rate is below `needed`; stages that overlap with the device
    (prefetched, transfer) and the stages a training step runs in sequence are all checked."""
    if needed is None:
        return []
    return [{"curriculum": name, "stage": stage, "sequences_per_s": round(rate, 1),
             "fraction_of_needed": round(rate / needed, 3)}
            for name, rates in results.items() for stage, rate in rates.items() if rate < needed]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the embedded sample, fewer batches")
    parser.add_argument("--corpus", default="embedded", help="data.corpus (default: the embedded sample)")
    parser.add_argument("--cache_dir", default=None, help="prepared-data cache (default: a temporary folder)")
    parser.add_argument("--max_train_words", type=int, default=0, help="data.max_train_words (0: all)")
    parser.add_argument("--batch", type=int, default=128, help="global batch (the presets' 128)")
    parser.add_argument("--batches", type=int, default=0, help="batches timed per stage (default 200; 40 with --quick)")
    parser.add_argument("--curricula", default=",".join(c[0] for c in CURRICULA), help="comma-separated subset")
    parser.add_argument("--target_sequences_per_s", type=float, default=0.0,
                        help="what the chips consume per host (default: from the pre-flight of small on v4-8)")
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    emit = common.JsonLines(args.out)
    batches = args.batches or (40 if args.quick else 200)
    if args.quick and not args.max_train_words and args.corpus == "embedded":
        args.max_train_words = 60_000
    wanted = [w for w in args.curricula.split(",") if w]
    unknown = sorted(set(wanted) - {c[0] for c in CURRICULA})
    if unknown:
        parser.error(f"unknown curricula {unknown}; choose from {[c[0] for c in CURRICULA]}")
    tmp = None
    if args.cache_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="host_pipeline_")
        args.cache_dir = tmp.name

    from etils import epath

    from climb_jax.data.dataset import prepare_data
    from climb_jax.parallel import mesh as mesh_lib

    emit(common.environment("host_pipeline", corpus=args.corpus, batch=args.batch, batches=batches))
    results: dict[str, dict] = {}
    data = None
    for name, stem, words in CURRICULA:
        if name not in wanted:
            continue
        config = make_config(stem, words, args)
        if data is None:
            t0 = time.perf_counter()
            data = prepare_data(config.data, epath.Path(args.cache_dir), progress=False)
            emit({"bench": "host_pipeline_data", "train_sequences": len(data.train), "seq_len": int(config.data.seq_len),
                  "prepare_s": round(time.perf_counter() - t0, 2), "prepared": str(data.directory)})
            mesh = mesh_lib.create_mesh(config.mesh)
        steps = schedule_steps(config.trainer.total_steps, batches)
        rates = measure(config, data, steps, mesh)
        results[name] = rates
        emit({"bench": "host_pipeline", "curriculum": name, "batch": args.batch,
              **{f"{stage}_sequences_per_s": round(rates[stage], 1) for stage in STAGES}})
    rate, source = predicted_rate(args)
    needed = None if rate is None else HEADROOM * rate
    short = shortfalls(results, needed)
    emit({"bench": "host_pipeline_summary", "chips_consume_sequences_per_s": rate, "source": source,
          "needed_sequences_per_s": needed, "headroom": HEADROOM,
          "slowest": min(((n, s, r) for n, rs in results.items() for s, r in rs.items()), key=lambda x: x[2],
                         default=None),
          "keeps_up": None if needed is None else not short, "shortfalls": short})
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
