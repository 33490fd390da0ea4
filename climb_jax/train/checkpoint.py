"""Checkpoints with orbax: the train state, the data sampler's position and scores, and run metadata.

Saves are atomic (orbax writes into a temporary directory and renames it when complete), so a run
killed mid-save leaves the previous checkpoint intact. On restore, a checkpoint that cannot be read
(truncated or corrupt files) is reported and the next older one is tried; nothing is deleted.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from ml_collections import ConfigDict

from climb_jax.errors import CheckpointError


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` with fallback to older steps on a bad checkpoint."""

    def __init__(self, directory, keep: int = 3, async_save: bool = True):
        self.directory = epath.Path(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, meta: dict, host: dict[str, np.ndarray] | None = None) -> None:
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if host:
            items["host"] = ocp.args.StandardSave(host)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, abstract_state, with_host: bool = False):
        items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        if with_host:
            items["host"] = ocp.args.StandardRestore()
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        return out["state"], out["meta"], (out["host"] if with_host else None)

    def has_host(self, step: int) -> bool:
        return (self.directory / str(step) / "host").exists()

    def restore_latest(self, abstract_state):
        """(state, meta, host, step) of the newest readable checkpoint, or None when there is none."""
        self.manager.wait_until_finished()
        steps = self.all_steps()
        for step in reversed(steps):
            try:
                state, meta, host = self.restore(step, abstract_state, with_host=self.has_host(step))
                _check_finite(state, step)
                return state, meta, host, step
            except Exception as e:  # noqa: BLE001 - any failure to read means "do not use this one"
                logging.warning("checkpoint at step %d in %s cannot be restored (%s: %s); trying an older one",
                                step, self.directory, type(e).__name__, str(e).splitlines()[0][:300])
                print(f"warning: checkpoint at step {step} is unreadable ({type(e).__name__}); "
                      "falling back to an older checkpoint", flush=True)
        if steps:
            raise CheckpointError(
                f"none of the checkpoints in {self.directory} (steps {steps}) can be restored. They are kept "
                "as they are; move them away to start the run from scratch."
            )
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _check_finite(state, step: int) -> None:
    leaves = jax.tree_util.tree_leaves(state.params)
    if not all(bool(np.isfinite(np.asarray(x)).all()) for x in leaves):
        raise CheckpointError(f"checkpoint {step} holds non-finite parameters")


# --------------------------------------------------------------------------------------------
# Loading a finished (or running) run for evaluation, export and fine-tuning.


@dataclasses.dataclass
class LoadedRun:
    config: ConfigDict
    params: dict
    step: int
    model_config: Any  # RobertaConfig
    tokenizer: Any  # PreTrainedTokenizerFast
    workdir: str


def read_config(workdir) -> ConfigDict:
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{workdir} is not a training run: it has no config.json. Point --workdir at a "
                              "directory written by `python -m climb_jax.main`.")
    return ConfigDict(json.loads(path.read_text()))


def load_run(workdir: str, step: int | None = None) -> LoadedRun:
    """The parameters of a run's latest (or given) checkpoint, with its config and tokenizer."""
    from climb_jax.data.dataset import load_tokenizer
    from climb_jax.train.setup import RunSetup

    root = epath.Path(workdir)
    config = read_config(root)
    tok_dir = root / "tokenizer"
    if not tok_dir.exists():
        raise CheckpointError(f"{workdir} has no tokenizer/ folder; the run did not finish its data preparation.")
    tokenizer = load_tokenizer(tok_dir)
    setup = RunSetup.from_config(config, vocab_size=len(tokenizer), token_rank=np.arange(len(tokenizer)))
    ckpt_dir = root / "checkpoints"
    if not ckpt_dir.exists():
        raise CheckpointError(f"{workdir} has no checkpoints/ yet; train first or wait for the first save.")
    ckpt = Checkpointer(ckpt_dir, keep=max(int(config.trainer.keep_checkpoints), 1), async_save=False)
    abstract = setup.abstract_state(jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    if step is None:
        found = ckpt.restore_latest(abstract)
        if found is None:
            raise CheckpointError(f"{workdir}/checkpoints holds no checkpoint yet.")
        state, _, _, step = found
    else:
        if step not in ckpt.all_steps():
            raise CheckpointError(f"{workdir} has no checkpoint at step {step}; available: {ckpt.all_steps()}.")
        state, _, _ = ckpt.restore(step, abstract)
    ckpt.close()
    return LoadedRun(config=config, params=state.params, step=int(step), model_config=setup.model,
                     tokenizer=tokenizer, workdir=str(workdir))
