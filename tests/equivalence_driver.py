"""Runs the tiny run of each curriculum kind in this process and writes its metrics; the scale-out test
starts it once with 1 CPU device and once with 8 fake ones (XLA_FLAGS set before JAX is imported)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

KINDS = {
    "vanilla": ("vanilla", "smoke", {}),
    "vocab": ("vanilla", "smoke", {"vocab_curriculum": dict(kind="pos_tags_and_token_ids")}),
    "data": ("vanilla", "smoke", {"data_curriculum": dict(scorer="self_perplexity", update_every=10,
                                                         rescore_batch_size=32)}),
    "objective": ("objective_cl", "multitask_pos_nv_all_mlm,smoke", {}),
}


def main(shared: str, cache: str, out: str, kinds: str) -> None:
    import jax

    from climb_jax.train.loop import Trainer
    from tests.helpers import tiny_config

    result = {"devices": jax.device_count()}
    for kind in kinds.split(","):
        name, arg, sections = KINDS[kind]
        c = tiny_config(Path(shared), Path(cache), name=name, arg=arg, **sections)
        c.trainer.total_steps = 30
        c.trainer.log_every = 5
        workdir = Path(out) / f"{kind}_{jax.device_count()}"
        Trainer(c, str(workdir), progress=False).run()
        result[kind] = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
