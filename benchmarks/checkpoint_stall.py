"""How long a checkpoint save stalls training: step times just before, at and after each save.

  python benchmarks/checkpoint_stall.py                 # `tiny` and `small`, 4 saves each
  python benchmarks/checkpoint_stall.py --sizes=tiny --saves=2 --every=3   # checks the script itself

The steps are the training loop's own: `RunSetup.compile`'s jitted step on a `configs/vanilla.py:<size>`
state (global batch 32 x 128, synthetic batches), and every `--every` steps `Checkpointer.save` with
the loop's settings (asynchronous orbax writes, 3 kept) into a temporary folder. Each step is timed
from its dispatch until its loss is on the host, so the time of a save step is the step plus whatever
the save does before it returns (everything it does synchronously: the stall), and the steps after a
save show what its background writes cost the steps they overlap. The save itself is also timed
alone (`save_call_s`), from when the state it saves is computed: on a busy machine that figure is
far less noisy than a difference of step times.

First, the integrity check alone, five times each, alternated on the same state: the host CRC32 that
saves computed before (`device_get` of the whole state, then CRC32 per leaf: still what restores of
older checkpoints check) and the on-device digests saves compute now (the first call compiles).

Output, one JSON object per line: the environment; per size, the integrity line, one line per save (`save_call_s`: the
time inside `Checkpointer.save`; `step_s_before`, `step_s_at`, `step_s_after`: the two steps before,
the save step, the two steps after) and a summary (`baseline_step_s`: the median step with no save
near it; `stall_s`: the median save step minus that baseline, over every save but the first, whose
time includes one-off set-up; `first_save_call_s`), with a check that the last checkpoint restores to
exactly the state it saved (`restored_equal`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from climb_jax.parallel import mesh as mesh_lib  # noqa: E402
from climb_jax.train import checkpoint as ckpt_lib  # noqa: E402
from climb_jax.train.checkpoint import Checkpointer  # noqa: E402
from climb_jax.train.setup import RunSetup  # noqa: E402

BATCH, SEQ = 32, 128


def measure(size: str, saves: int, every: int, emit) -> dict:
    config = common.load_config("vanilla", size)
    config.data.seq_len = SEQ
    config.trainer.batch_size = BATCH
    setup = RunSetup.from_config(config, vocab_size=config.data.vocab_size)
    mesh = mesh_lib.create_mesh(config.mesh)
    compiled = setup.compile(mesh, name=f"train_step_{size}")
    state = compiled.init()
    batch = mesh_lib.global_batch(common.synthetic_batch(0, BATCH, SEQ, config.data.vocab_size),
                                  compiled.batch_sharding)
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state))
    for i in range(3):  # compile and warm up
        state, metrics = compiled.step(state, batch, compiled.source.at(i))
    jax.block_until_ready(metrics)
    jax.block_until_ready(state)
    integrity = {"host_crc32_s": [], "device_digests_s": []}  # alternated, on the same state
    for _ in range(5):
        for name, check in (("host_crc32_s", ckpt_lib._crc32s), ("device_digests_s", ckpt_lib.state_digests)):
            c0 = time.perf_counter()
            check(state)
            integrity[name].append(round(time.perf_counter() - c0, 4))
    emit({"bench": "checkpoint_integrity", "size": size, "leaves": len(jax.tree_util.tree_leaves(state)),
          **integrity})
    times: list[float] = []
    calls: dict[int, float] = {}
    total = every * (saves + 1)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Checkpointer(Path(tmp) / "checkpoints", keep=config.trainer.keep_checkpoints,
                            async_save=config.trainer.async_checkpoints)
        for step in range(1, total + 1):
            t0 = time.perf_counter()
            state, metrics = compiled.step(state, batch, compiled.source.at(step))
            if step % every == 0 and step < total:
                jax.block_until_ready(state)  # the save's own time, apart from the step it waits for
                c0 = time.perf_counter()
                ckpt.save(step, state, {"step": step})
                calls[step] = time.perf_counter() - c0
            float(metrics["loss"])
            times.append(time.perf_counter() - t0)
            if step == max(calls, default=None):
                expected = jax.device_get(state)  # after the timing: what the last save must hold
        ckpt.close()  # waits for the last write
        reader = Checkpointer(Path(tmp) / "checkpoints", async_save=False)
        restored, _, _, restored_step = reader.restore_latest(compiled.abstract_state)
        reader.close()
    equal = all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(expected),
                                                     jax.tree_util.tree_leaves(jax.device_get(restored))))
    at = {s: times[s - 1] for s in calls}
    near = {s + d for s in calls for d in (0, 1, 2)}
    baseline = statistics.median(t for i, t in enumerate(times, 1) if i not in near)
    for n, (step, call) in enumerate(calls.items()):
        emit({"bench": "checkpoint_stall", "size": size, "save": n, "step": step, "save_call_s": round(call, 4),
              "step_s_before": [round(times[step - 1 - d], 4) for d in (2, 1)], "step_s_at": round(at[step], 4),
              "step_s_after": [round(times[step - 1 + d], 4) for d in (1, 2) if step - 1 + d < len(times)]})
    later = list(calls)[1:] or list(calls)
    return emit({
        "bench": "checkpoint_stall_summary", "size": size, "state_mb": round(state_bytes / 2**20, 1),
        "batch": BATCH, "seq": SEQ, "devices": mesh.size, "saves": len(calls),
        "baseline_step_s": round(baseline, 4),
        "save_step_s": round(statistics.median(at[s] for s in later), 4),
        "stall_s": round(statistics.median(at[s] for s in later) - baseline, 4),
        "save_call_s": round(statistics.median(calls[s] for s in later), 4),
        "first_save_call_s": round(calls[min(calls)], 4),
        "after_save_step_s": round(statistics.median(times[s] for s in later if s < len(times)), 4),
        "restored_step": int(restored_step), "restored_equal": bool(equal),
    })


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,small", help="comma-separated model sizes")
    parser.add_argument("--saves", type=int, default=4, help="saves per size")
    parser.add_argument("--every", type=int, default=6, help="steps between saves")
    parser.add_argument("--out", help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    if args.saves < 1 or args.every < 3:
        parser.error("--saves must be >= 1 and --every >= 3 (two steps after a save, one before the next)")
    emit = common.JsonLines(args.out)
    emit(common.environment("checkpoint_stall"))
    for size in args.sizes.split(","):
        measure(size.strip(), args.saves, args.every, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
