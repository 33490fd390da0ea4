"""Tiny run configs on the corpus sample shipped in the package, shared by the training-level tests.

The sample (`climb_jax/data/sample/`, `data.corpus="embedded"`) and the bundled part-of-speech tagger
make these tests run on any checkout: no `../shared`, no network.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.conftest import REPO


def load_config(name: str, arg: str | None = None):
    """`configs/<name>.py` with its preset argument (the tests' one config loader)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def tiny_config(cache_dir: Path, name: str = "vanilla", arg: str = "smoke", corpus: str = "embedded", **sections):
    """A 2-layer width-64 model on ~30k words of `corpus` (default: the embedded sample), a few dozen
    steps, no evaluation. `sections` maps a dotted section to the fields to set in it:
    `tiny_config(cache, trainer=dict(total_steps=60), **{"data_curriculum.pacing": dict(name="root")})`."""
    c = load_config(name, arg)
    c.data.corpus = str(corpus)
    c.data.cache_dir = str(cache_dir)
    c.data.max_train_words = 30_000
    c.data.max_eval_words = 3_000
    c.data.vocab_size = 600
    c.data.seq_len = 32
    c.model.update(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128)
    c.trainer.update(total_steps=40, warmup_steps=5, batch_size=16, log_every=10, checkpoint_every=20,
                     async_checkpoints=False)
    c.eval.at_end = False
    for section, values in sections.items():
        target = c
        for part in section.split("."):
            target = target[part]
        for key, value in values.items():
            target[key] = value
    return c


def train(config, workdir, **kwargs) -> dict:
    """Runs (or resumes) `config` in `workdir` and returns `Trainer.run()`'s result: `step`, `stop_reason`,
    `state` (the final train state), `eval`, `train_step_compiles`, `best_step`."""
    from climb_jax.train.loop import Trainer

    return Trainer(config, str(workdir), progress=False, **kwargs).run()


def read_metrics(workdir: Path, drop=("step_time_s", "tokens_per_s")) -> list[dict]:
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(l).items() if k not in drop} for l in lines]


def checkpoint_meta(workdir: Path, step: int) -> dict:
    """The JSON saved beside a checkpoint's state (step, sampler position and version, data fingerprint)."""
    return json.loads((Path(workdir) / "checkpoints" / str(step) / "meta" / "metadata").read_text())


def params_equal(a, b) -> bool:
    import jax

    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))
