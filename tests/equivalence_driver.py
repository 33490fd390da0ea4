"""Runs the tiny run of each curriculum kind in this process and writes its metrics; the scale-out test
starts it once with 1 CPU device and once with 8 fake ones (XLA_FLAGS set before JAX is imported).

    python -m tests.equivalence_driver CACHE_DIR OUT_DIR vanilla,vocab,data,objective [CPU_DEVICES]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

KINDS = {
    "vanilla": ("vanilla", "smoke", {}),
    "vocab": ("vanilla", "smoke", {"vocab_curriculum": dict(kind="pos_tags_and_token_ids")}),
    "data": ("vanilla", "smoke", {"data_curriculum": dict(scorer="self_perplexity", update_every=50,
                                                         rescore_batch_size=32)}),
    "objective": ("objective_cl", "multitask_pos_nv_all_mlm,smoke", {}),
}


def main(cache: str, out: str, kinds: str, cpu_devices: str = "1") -> None:
    """`cpu_devices` other than 1 sets `mesh.cpu_devices`, so the run itself splits the CPU: JAX must not
    start before the first Trainer does."""
    from tests.helpers import tiny_config, train

    result = {}
    for kind in kinds.split(","):
        name, arg, sections = KINDS[kind]
        c = tiny_config(Path(cache), name=name, arg=arg, **sections)
        c.trainer.total_steps = 200
        c.trainer.log_every = 10
        c.mesh.cpu_devices = int(cpu_devices)
        if os.environ.get("CLIMB_TEST_PROCESS_ID"):  # one of several processes of one run (multi-host)
            c.distributed.initialize = True
            c.distributed.coordinator_address = os.environ["CLIMB_TEST_COORDINATOR"]
            c.distributed.num_processes = int(os.environ["CLIMB_TEST_NUM_PROCESSES"])
            c.distributed.process_id = int(os.environ["CLIMB_TEST_PROCESS_ID"])
            if os.environ.get("CLIMB_TEST_OTHER_DATA") == os.environ["CLIMB_TEST_PROCESS_ID"]:
                c.data.max_train_words = 20_000  # this process alone prepares (and opens) another dataset
            if os.environ.get("CLIMB_TEST_SKEW_CURRICULUM") == os.environ["CLIMB_TEST_PROCESS_ID"]:
                from climb_jax.curriculum.source import CurriculumSource

                CurriculumSource.vocab_pace = lambda self, step: 0.5  # this process alone sets another pace
        workdir = Path(out) / f"{kind}_{os.environ.get('CLIMB_TEST_RUN_TAG') or os.getpid()}"
        train(c, workdir)
        result[kind] = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    import jax

    result["devices"] = jax.device_count()
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
