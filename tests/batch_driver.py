"""Records (or checks) the batches and losses that tiny data-curriculum runs draw, so a change to how the
training rows are stored or read is shown to draw exactly the same batches.

    python -m tests.batch_driver --write     # rewrite tests/data/batch_trajectories.json

Each run trains 16 steps on the embedded sample with a log line per step. For every step the fixture
holds a SHA-256 of the batch's token and POS ids (row contents, not row numbers: how rows are numbered
is the storage's business) and the loss as exact float32 hex. `test_prepared_batches.py` retrains them
and compares exactly.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from tests.trajectory_driver import record

FIXTURE = Path(__file__).parent / "data" / "batch_trajectories.json"

# name -> (config file, preset words, sections): the static scorers (with and without ties) and the
# epoch shuffle without a curriculum.
RUNS = {
    "ngram": ("data_cl", "ngram,linear,smoke", {}),
    "source_order": ("data_cl", "source_order,linear,smoke", {"data_curriculum": dict(uniform_sampling=True)}),
    "vanilla": ("vanilla", "smoke", {}),
}
STEPS = 16


def batches_and_losses(name: str, cache_dir: Path, workdir: Path) -> dict:
    from climb_jax.data import pipeline
    from tests.helpers import read_metrics, tiny_config, train

    file, arg, sections = RUNS[name]
    c = tiny_config(cache_dir, name=file, arg=arg, data=dict(token_order="frequency"),
                    trainer=dict(total_steps=STEPS, log_every=1, checkpoint_every=STEPS), **sections)
    c.data.prefetch = 0
    seen: dict[int, str] = {}
    original = pipeline.InputPipeline.batch

    def batch(self, step):
        out = original(self, step)
        h = hashlib.sha256(np.ascontiguousarray(out["input_ids"], np.int32).tobytes())
        h.update(np.ascontiguousarray(out["pos_ids"], np.int8).tobytes())
        seen[int(step)] = h.hexdigest()
        return out

    pipeline.InputPipeline.batch = batch
    try:
        train(c, workdir)
    finally:
        pipeline.InputPipeline.batch = original
    lines = read_metrics(workdir)
    return {"batches": [seen[s] for s in range(STEPS)],
            "loss": [float(r["loss"]).hex() for r in lines if "loss" in r]}


def main(argv) -> int:
    return record(FIXTURE, batches_and_losses, RUNS, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
