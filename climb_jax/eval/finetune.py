"""Fine-tuning a pretrained encoder on sentence(-pair) classification, as BabyLM does for (Super)GLUE.

The driver: for each task and seed, train the classifier (`finetune_model`), evaluate on the
validation split when the protocol says (`finetune_selection`), stop early, and report the selected
checkpoint's metrics. The settings and protocols are `finetune_config`; the task files and input
templates `tasks`. With a mesh, batches are split over its batch axes and the state is replicated
(`parallel.mesh.Placement`).

Entry points:
  * `run(config, workdir)` for `python -m climb_jax.main --config=configs/finetune.py:rte
    --config.init_from=<pretraining workdir> --workdir=<dir>`;
  * `evaluate_tasks(workdir, tasks, data_dir=..., **overrides)` for `climb_jax.evaluate --tasks`;
  * `finetune_task(...)` for any encoder parameters already in memory (tests, notebooks).
Results are JSON files `<pretraining workdir>/finetune/<task>.json` (per seed and mean).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from climb_jax.errors import ConfigError, DataError, TrainingDiverged
from climb_jax.eval import finetune_model as model_lib
from climb_jax.eval import metrics as metrics_lib
from climb_jax.eval import tasks as tasks_lib
from climb_jax.eval.finetune_config import (  # noqa: F401 - the config API, re-exported for callers
    DATA_DIR_FLAG, Settings, build_config, default_config, resolve_data_dir, settings, task_names, validate_config)
from climb_jax.eval.finetune_selection import Selector, evaluation_due
from climb_jax.models.roberta import RobertaConfig


def _model_config(cfg: RobertaConfig, s: Settings) -> RobertaConfig:
    if s.dropout_rate >= 0:
        cfg = dataclasses.replace(cfg, dropout_rate=s.dropout_rate, attention_dropout_rate=s.dropout_rate)
    if s.dtype:
        cfg = dataclasses.replace(cfg, dtype=s.dtype)
    if s.max_seq_len > cfg.max_position_embeddings:
        raise ConfigError(f"finetune.max_seq_len={s.max_seq_len} exceeds the model's max_position_embeddings="
                          f"{cfg.max_position_embeddings}.")
    return cfg


def finetune_task(encoder_params: Any, model_config: RobertaConfig, tokenizer, spec: tasks_lib.TaskSpec,
                  ft: Mapping[str, Any] | Settings, *, data_dir: str | Path, mesh=None,
                  log: Callable[[str], None] = print) -> dict:
    """Fine-tunes `encoder_params` on one task for every seed of the settings (`ft`: a `finetune`
    config section or resolved `Settings`); returns the result dictionary that `run` writes as JSON
    (without run-specific fields)."""
    from climb_jax.parallel.mesh import Placement

    t0 = time.perf_counter()
    s = ft if isinstance(ft, Settings) else settings(ft, spec.name)
    cfg = _model_config(model_config, s)
    train = tasks_lib.load_split(spec, data_dir, "train", max_examples=s.max_train_examples)
    valid = tasks_lib.load_split(spec, data_dir, "valid", max_examples=s.max_valid_examples)
    train_enc = tasks_lib.encode(tokenizer, train, s.max_seq_len)
    valid_enc = tasks_lib.encode(tokenizer, valid, s.max_seq_len)
    names, select = list(spec.metrics), spec.selection_metric
    if mesh is not None and jax.process_count() > 1:
        raise ConfigError("fine-tuning runs in one process; start it on a single host (any number of local devices).")
    place = Placement(mesh, [s.batch_size, s.eval_batch_size], what="finetune batch size")
    steps_per_epoch = math.ceil(len(train) / s.batch_size)
    total_steps = steps_per_epoch * s.epochs
    log(f"{spec.name}: {len(train)} train / {len(valid)} valid examples, length {train_enc.input_ids.shape[1]}/"
        f"{valid_enc.input_ids.shape[1]} ({train_enc.truncated + valid_enc.truncated} truncated), "
        f"{steps_per_epoch} steps per epoch, protocol {s.protocol}")

    steps = model_lib.compiled_steps(cfg, spec.num_classes, s.optimizer_key(), total_steps)
    # Host copies: every seed's state gets fresh device buffers, since the train step donates it.
    host_encoder = jax.device_get(encoder_params)
    model_lib.check_encoder(steps.encoder_shapes, host_encoder)

    def predict(params, enc: tasks_lib.Encoded) -> np.ndarray:
        order = np.arange(len(enc.labels))
        preds = [np.asarray(steps.eval(params, place.batch({k: v for k, v in b.items() if k != "weights"})))
                 for b in model_lib.batches(enc, order, s.eval_batch_size)]
        return np.concatenate(preds)[: len(order)]

    def evaluate(params, step: int, epoch: int, losses: list) -> dict:
        preds = predict(params, valid_enc)
        record = {"epoch": epoch, "step": step, "train_loss": float(np.mean(losses)) if losses else None,
                  "valid": metrics_lib.compute_metrics(names, preds, valid_enc.labels)}
        if s.eval_train:
            record["train"] = metrics_lib.compute_metrics(names, predict(params, train_enc), train_enc.labels)
        record["correct"] = (preds == valid_enc.labels).astype(int).tolist()
        return record

    per_seed = []
    for seed in s.seeds:
        init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
        state = place.params(steps.init(host_encoder, init_key))
        selector = Selector(patience=s.patience, threshold=s.threshold, select_every=s.select_every)
        history, pending, stop, step, epoch = [], [], False, 0, 0
        for epoch in range(1, s.epochs + 1):
            order = np.random.default_rng([seed, epoch]).permutation(len(train))
            for batch in model_lib.batches(train_enc, order, s.batch_size):
                state, loss = steps.train(state, place.batch(batch), dropout_key)
                pending.append(loss)
                step += 1
                if not evaluation_due(step, steps_per_epoch, s.eval_every):
                    continue
                losses = _host_losses(pending, spec.name, seed, epoch)
                pending = []
                record = evaluate(state.params, step, epoch, losses)
                history.append({k: v for k, v in record.items() if k != "correct"})
                log(f"{spec.name} seed {seed} epoch {epoch} step {step}: loss {record['train_loss']:.4f}, valid "
                    + ", ".join(f"{k} {v:.4f}" for k, v in record["valid"].items()))
                _, stop = selector.observe(step, record["valid"][select], record)
                if stop:
                    break
            if stop:
                break
        _host_losses(pending, spec.name, seed, epoch)
        best = selector.best
        if best is None:  # no evaluation could be selected: the last step is reported, as the Trainer does
            best = evaluate(state.params, step, epoch, [])
        per_seed.append({"seed": int(seed), "selected": "best" if selector.best is not None else "last",
                         "best_step": best["step"], "best_epoch": best["epoch"], "steps_run": step,
                         "epochs_run": epoch, "stopped_early": stop, "metrics": best["valid"],
                         "train_metrics": best.get("train"), "history": history, "correct": best["correct"]})
        del state

    mean, std = metrics_lib.mean_metrics([r["metrics"] for r in per_seed])
    return {
        "task": spec.name,
        "task_spec": tasks_lib.describe(spec),
        "protocol": s.protocol,
        "primary_metric": spec.primary_metric,  # the headline figure
        "selection_metric": select,  # the one that chose the checkpoint
        "metrics": names,
        "mean": mean,
        "std": std,
        "best_epoch_mean": float(np.mean([r["best_epoch"] for r in per_seed])),
        "per_seed": per_seed,
        "majority_baseline": {"valid": metrics_lib.majority_baseline(valid_enc.labels, names),
                              "train": metrics_lib.majority_baseline(train_enc.labels, names)},
        "num_train": len(train),
        "num_valid": len(valid),
        "seq_len": {"train": int(train_enc.input_ids.shape[1]), "valid": int(valid_enc.input_ids.shape[1])},
        "truncated": {"train": train_enc.truncated, "valid": valid_enc.truncated},
        "files": {"train": str(train.path), "valid": str(valid.path)},
        "hyperparameters": s.to_json(),
        "model": {"dtype": cfg.dtype, "dropout_rate": cfg.dropout_rate},
        "seconds": time.perf_counter() - t0,
    }


def _host_losses(pending: list, task: str, seed: int, epoch: int) -> list[float]:
    """The losses since the last check, on the host; TrainingDiverged when one is not finite."""
    losses = np.asarray(jax.device_get(pending), dtype=np.float64)
    if not np.isfinite(losses).all():
        raise TrainingDiverged(f"fine-tuning {task} (seed {seed}) diverged in epoch {epoch}: the loss "
                               "became non-finite; lower finetune.lr.")
    return losses.tolist()


# ------------------------------------------------------------------------------------------------
# Runs.


def _run_config(workdir: str | Path) -> dict | None:
    """The pretraining run's config.json as a dict (None if absent: loading the run reports that)."""
    try:
        doc = json.loads((Path(workdir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _check_inputs(c, flag: str = DATA_DIR_FLAG) -> Path:
    """Everything that can be checked before the checkpoint is restored: the config, the data folder
    and every task's two files. Returns the data folder."""
    validate_config(c)
    data_dir = resolve_data_dir(c.finetune, _run_config(c.init_from), flag=flag)
    for name in task_names(c.finetune):
        spec = tasks_lib.spec_from_config(c.finetune, name)
        for split in tasks_lib.SPLITS:
            path = tasks_lib.task_path(data_dir, spec, split)
            if not path.exists():
                train, valid = (tasks_lib.split_files(spec, x)[0] for x in tasks_lib.SPLITS)
                if data_dir == tasks_lib.EMBEDDED_DIR:
                    raise DataError(f"the fine-tuning sample shipped in the package (finetune.data_dir=embedded) "
                                    f"holds only {', '.join(tasks_lib.available_tasks(data_dir))}; for task '{name}' "
                                    f"set finetune.data_dir to a folder with {train} and {valid}.")
                raise DataError(f"{path} does not exist: task '{name}' needs {train} and {valid} in "
                                f"finetune.data_dir={data_dir}.")
    return data_dir


def _run_tasks(c, loaded, data_dir: Path, output_dirs: Sequence[Path],
               log: Callable[[str], None] = print) -> list[Path]:
    from climb_jax.parallel.mesh import create_mesh
    from climb_jax.train.workdir import write_json

    ft = c.finetune
    run_config = loaded.config
    mesh = create_mesh(c.mesh)
    written = []
    for name in task_names(ft):
        spec = tasks_lib.spec_from_config(ft, name)
        result = finetune_task(loaded.params["encoder"], loaded.model_config, loaded.tokenizer, spec,
                               settings(ft, name), data_dir=data_dir, mesh=mesh, log=log)
        result.update({
            "init_from": str(loaded.workdir),
            "checkpoint_step": int(loaded.step),
            "pretraining_label": run_config.get("label") or run_config.get("name"),
            "pretraining_seed": run_config.get("seed"),
            "data_dir": str(data_dir),
        })
        for out in output_dirs:
            write_json(Path(out) / f"{name}.json", result)
            written.append(Path(out) / f"{name}.json")
        mean = ", ".join(f"{k} {v:.4f}" for k, v in result["mean"].items())
        log(f"{name}: {mean} over seeds {result['hyperparameters']['seeds']} -> {Path(output_dirs[0]) / f'{name}.json'}")
    return written


def _load(workdir: str, step: int | None):
    from climb_jax.train.checkpoint import load_run  # late: keeps this module importable on its own

    return load_run(str(workdir), step)


def run(config, workdir: str) -> list[Path]:
    """Fine-tunes `config.init_from`'s checkpoint on `config.finetune.task` (one or several tasks).

    Results go to `<init_from>/finetune/<task>.json` (or `config.output_dir`), and also to
    `<workdir>/finetune/` when `workdir` is another folder.
    """
    if not config.get("init_from"):
        raise ConfigError("set --config.init_from=<pretraining workdir> (the run whose checkpoint is fine-tuned).")
    data_dir = _check_inputs(config)
    loaded = _load(config.init_from, config.get("step"))
    primary = Path(config.output_dir) if config.get("output_dir") else Path(config.init_from) / "finetune"
    outputs = [primary]
    if workdir and Path(workdir).resolve() != Path(config.init_from).resolve():
        other = Path(workdir) / "finetune"
        if other.resolve() != primary.resolve():
            outputs.append(other)
    return _run_tasks(config, loaded, data_dir, outputs)


def evaluate_tasks(workdir: str | Path, tasks: str | Sequence[str], *, data_dir: str | Path | None = None,
                   data_dir_flag: str = "data_dir", **overrides) -> Path:
    """Fine-tunes a pretraining run's latest (or `step=`) checkpoint on `tasks` and returns the folder
    that holds one `<task>.json` per task (`<workdir>/finetune`, or `output_dir=`).

    `overrides` are fields of the `finetune` config section (protocol="per_epoch", lr=1e-4, and the
    limits max_train_examples=N, max_valid_examples=N, epochs=N, seeds=(12, 13)), `smoke=True` for the
    smoke settings, or the top-level `step` and `output_dir`; an unknown one is a ConfigError. A value
    of None leaves the field as it is. `data_dir_flag` names the data folder's option in errors
    (climb_jax.evaluate: "--tasks_dir").
    """
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    names = [n.strip() for t in names for n in t.split(",") if n.strip()]
    c = build_config("smoke" if overrides.pop("smoke", False) else None)
    c.init_from = str(workdir)
    c.finetune.task = ",".join(names)
    if data_dir is not None:
        c.finetune.data_dir = str(data_dir)
    for key, value in overrides.items():
        target = c if key in ("step", "output_dir") else c.finetune
        if key not in target:
            valid = sorted(list(c.finetune.keys()) + ["step", "output_dir", "smoke"])
            raise ConfigError(f"unknown fine-tuning setting '{key}'; valid: {', '.join(valid)}.")
        if value is None:
            continue
        target[key] = tuple(value) if isinstance(value, list) else value
    data_dir = _check_inputs(c, flag=data_dir_flag)
    loaded = _load(str(workdir), c.get("step"))
    out = Path(c.output_dir) if c.get("output_dir") else Path(workdir) / "finetune"
    _run_tasks(c, loaded, data_dir, [out])
    return out
