"""Records (or checks) the reference trajectories that pin the scheduled curricula bit for bit.

    python -m tests.trajectory_driver --write     # rewrite tests/data/schedule_trajectories.json

Four tiny runs on the embedded sample (vanilla, a vocabulary, a data and an objective curriculum),
40 steps each with a log line per step: every step's loss and gradient norm as exact float32 hex, and a
SHA-256 of every final parameter leaf. `test_curriculum_source.py` retrains them and compares exactly,
so a change to how the curriculum reaches the step that moves any bit fails there.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).parent / "data" / "schedule_trajectories.json"

# name -> (config file, preset words): the four smoke configurations, one per curriculum kind.
RUNS = {
    "vanilla": ("vanilla", "smoke"),
    "vocab": ("vocab_cl", "token_ids,linear,smoke"),
    "data": ("data_cl", "smoke"),
    "objective": ("objective_cl", "pos_nv_mlm,smoke"),
}


def trajectory(name: str, cache_dir: Path, workdir: Path) -> dict:
    import jax

    from tests.helpers import read_metrics, tiny_config, train

    file, arg = RUNS[name]
    # Token order pinned: the trajectories predate the change of its default and must not depend on it.
    c = tiny_config(cache_dir, name=file, arg=arg, data=dict(token_order="frequency"),
                    trainer=dict(total_steps=40, log_every=1, checkpoint_every=40))
    result = train(c, workdir)
    lines = read_metrics(workdir)
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(result["state"].params))
    return {
        "loss": [float(r["loss"]).hex() for r in lines if "loss" in r],
        "grad_norm": [float(r["grad_norm"]).hex() for r in lines if "grad_norm" in r],
        "params": {jax.tree_util.keystr(p): hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()
                   for p, x in leaves},
    }


def record(fixture: Path, compute, runs, argv) -> int:
    """Runs `compute(name, cache_dir, workdir)` for every run name; `--write` stores the results in `fixture`."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in runs:
            out[name] = compute(name, Path(tmp) / "cache", Path(tmp) / name)
    if "--write" in argv:
        fixture.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {fixture}")
    else:
        print(json.dumps(out)[:2000])
    return 0


def main(argv) -> int:
    return record(FIXTURE, trajectory, RUNS, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
