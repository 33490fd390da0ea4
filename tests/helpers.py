"""Tiny run configs over slices of the shared data, shared by the training-level tests."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from tests.conftest import REPO


def load_config(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def tiny_config(shared_data: Path, cache_dir: Path, name: str = "vanilla", arg: str = "smoke", **sections):
    """A 2-layer width-64 model on ~30k words of babylm_mini, a few dozen steps, no evaluation."""
    c = load_config(name, arg)
    c.data.corpus = str(shared_data / "babylm_mini")
    c.data.cache_dir = str(cache_dir)
    c.data.max_train_words = 30_000
    c.data.max_eval_words = 3_000
    c.data.vocab_size = 600
    c.data.seq_len = 32
    c.data.nltk_data = str(shared_data.parent / "nltk_data")
    c.model.update(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128)
    c.trainer.update(total_steps=40, warmup_steps=5, batch_size=16, log_every=10, checkpoint_every=20,
                     async_checkpoints=False)
    c.eval.at_end = False
    for section, values in sections.items():
        for key, value in values.items():
            target = c
            for part in section.split("."):
                target = target[part]
            target[key] = value
    return c


def read_metrics(workdir: Path, drop=("step_time_s", "tokens_per_s")) -> list[dict]:
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(l).items() if k not in drop} for l in lines]


def params_equal(a, b) -> bool:
    import jax

    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))
