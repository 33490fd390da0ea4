"""Fine-tuning a pretrained encoder on sentence(-pair) classification, as BabyLM does for (Super)GLUE.

The model is the pretrained `RobertaEncoder` with a fresh `ClassificationHead` (first token,
dense + tanh, as RoBERTa), trained with AdamW (linear warmup, linear decay over the maximum number
of epochs, gradient clipping, weight decay on matrices only) for several seeds. After every epoch
the validation split is scored; the best epoch by the task's primary metric (accuracy; F1 for
MRPC/QQP; MCC for CoLA) is reported, and training stops after `patience` epochs without
improvement. One jitted train step and one jitted eval step, each compiled once: every batch has
the same shape (sequences padded to one length per task, the last batch filled with zero-weight
rows). With a mesh, batches are split over its batch axes and parameters are replicated.

Entry points:
  * `run(config, workdir)` for `python -m climb_jax.main --config=configs/finetune.py:rte
    --config.init_from=<pretraining workdir> --workdir=<dir>`;
  * `evaluate_tasks(workdir, tasks, data_dir=..., **overrides)` for `climb_jax.evaluate --tasks`;
  * `finetune_task(...)` for any encoder parameters already in memory (tests, notebooks).
Results are JSON files `<pretraining workdir>/finetune/<task>.json` (per seed and mean).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from ml_collections import ConfigDict, config_dict

from climb_jax.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from climb_jax.eval import metrics as metrics_lib
from climb_jax.eval import tasks as tasks_lib
from climb_jax.models.roberta import ClassificationHead, RobertaConfig, RobertaEncoder

# ------------------------------------------------------------------------------------------------
# Configuration.


def default_config(task: str = "rte") -> ConfigDict:
    """The fine-tuning config: the BabyLM 2023 pipeline's hyperparameters (lr 5e-5, batch 64, up to
    10 epochs) with early stopping after 3 epochs without improvement."""
    c = ConfigDict()
    c.mode = "finetune"
    c.name = "finetune"
    c.init_from = config_dict.placeholder(str)  # the pretraining run's workdir
    c.step = config_dict.placeholder(int)  # its checkpoint step; default: the latest
    c.output_dir = config_dict.placeholder(str)  # default: <init_from>/finetune
    c.finetune = ConfigDict(dict(
        task=task,  # a task name, or several separated by commas
        data_dir=config_dict.placeholder(str),  # folder of <task>.train.jsonl / <task>.valid.jsonl
        # Task description; empty = the built-in one (tasks.BUILTIN_TASKS).
        text_fields="",  # "sentence1,sentence2"; '+' joins fields of one segment: "paragraph,question+answer"
        label_field="",
        num_classes=0,
        metrics="",  # "f1,accuracy": the first one selects the best epoch
        label_names="",  # for string labels: "entailment,not_entailment" (position = class id)
        joiner="",
        lr=5e-5,
        batch_size=64,
        eval_batch_size=128,
        epochs=10,
        max_seq_len=128,
        patience=3,  # epochs without improvement before stopping; 0 = never stop early
        seeds=(0,),
        warmup_fraction=0.1,
        weight_decay=0.01,
        max_grad_norm=1.0,
        adam_b1=0.9,
        adam_b2=0.999,
        adam_eps=1e-8,
        dropout_rate=-1.0,  # < 0: the pretrained model's dropout
        dtype="",  # "" = the pretrained model's; "float32" or "bfloat16"
        max_train_examples=0,  # 0 = all; >0: the first N training examples
        max_valid_examples=0,
        eval_train=False,  # also score the training examples after every epoch
    ))
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, model=1))
    return c


_LARGE = {"mnli", "qqp", "qnli", "sst2"}


def _task_preset(task: str) -> Callable[[ConfigDict], None]:
    def apply(c: ConfigDict) -> None:
        c.finetune.task = task
        if task in _LARGE:  # hundreds of thousands of examples: a few epochs suffice
            c.finetune.epochs = 3
            c.finetune.patience = 1

    return apply


def apply_smoke(c: ConfigDict) -> None:
    """A few examples and epochs: checks the whole path in seconds on a CPU."""
    ft = c.finetune
    ft.max_train_examples = 64
    ft.max_valid_examples = 64
    ft.epochs = 2
    ft.batch_size = 16
    ft.eval_batch_size = 32
    ft.max_seq_len = 64
    ft.patience = 0


PRESETS: dict[str, Callable[[ConfigDict], None]] = {
    **{name: _task_preset(name) for name in tasks_lib.BUILTIN_TASKS},
    "seeds3": lambda c: setattr(c.finetune, "seeds", (0, 1, 2)),
    "seeds5": lambda c: setattr(c.finetune, "seeds", (0, 1, 2, 3, 4)),
}


def build_config(arg: str | None = None) -> ConfigDict:
    """`configs/finetune.py:<words>`: task names, `seeds3`/`seeds5`, `smoke` (applied last) and
    key=value pairs (`finetune.lr=1e-4`). An unknown word is a ConfigError listing the valid ones;
    a task that is not built in is set with `finetune.task=<name>` plus its text fields."""
    from climb_jax import config_lib

    c = default_config()
    smoke, pairs = False, []
    for word in (w.strip() for w in (arg or "").split(",")):
        if not word:
            continue
        if "=" in word:
            pairs.append(word.split("=", 1))
        elif word == "smoke":
            smoke = True
        elif word in PRESETS:
            PRESETS[word](c)
        else:
            valid = sorted(set(PRESETS) | {"smoke"})
            close = difflib.get_close_matches(word, valid, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown preset word '{word}' for configs/finetune.py.{hint} Valid words: {', '.join(valid)}; "
                "or key=value pairs such as finetune.lr=1e-4 (another task: finetune.task=<name>,"
                "finetune.text_fields=<fields>)."
            )
    if smoke:
        apply_smoke(c)
    for key, raw in pairs:
        config_lib.set_path(c, key.strip(), raw.strip())
    return c


def task_names(ft: Mapping[str, Any]) -> list[str]:
    names = [t.strip() for t in str(ft["task"]).split(",") if t.strip()]
    if not names:
        raise ConfigError("finetune.task is empty; name a task, e.g. rte (or several: rte,mrpc).")
    return names


def validate_config(c: ConfigDict) -> None:
    """Raises ConfigError for settings that cannot work, before any model is loaded."""
    ft = c.finetune
    for name in task_names(ft):
        tasks_lib.spec_from_config(ft, name)
    for key in ("batch_size", "eval_batch_size", "epochs", "max_seq_len"):
        if int(ft[key]) <= 0:
            raise ConfigError(f"finetune.{key} must be positive, got {ft[key]}.")
    if ft.max_seq_len < 8:
        raise ConfigError(f"finetune.max_seq_len={ft.max_seq_len} is too short; use at least 8.")
    if ft.lr <= 0:
        raise ConfigError(f"finetune.lr must be positive, got {ft.lr}.")
    if not 0 <= ft.warmup_fraction < 1:
        raise ConfigError(f"finetune.warmup_fraction must lie in [0, 1), got {ft.warmup_fraction}.")
    if ft.patience < 0 or ft.max_train_examples < 0 or ft.max_valid_examples < 0 or ft.weight_decay < 0:
        raise ConfigError("finetune.patience, max_train_examples, max_valid_examples and weight_decay must be >= 0.")
    seeds = tuple(ft.seeds)
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"finetune.seeds must be distinct integers, e.g. (0, 1, 2); got {ft.seeds!r}.")
    if ft.dtype not in ("", "float32", "bfloat16"):
        raise ConfigError(f"finetune.dtype='{ft.dtype}' is not valid; choose '', 'float32' or 'bfloat16'.")
    if ft.dropout_rate >= 1:
        raise ConfigError(f"finetune.dropout_rate must be below 1, got {ft.dropout_rate}.")


def resolve_data_dir(ft: Mapping[str, Any], run_config: Mapping[str, Any] | None = None) -> Path:
    """finetune.data_dir, else the pretraining run's own `finetune.data_dir`; no built-in default."""
    data_dir = ft.get("data_dir")
    if not data_dir and run_config is not None:
        data_dir = (run_config.get("finetune") or {}).get("data_dir")
    if not data_dir:
        raise ConfigError(
            "no fine-tuning data: set finetune.data_dir (e.g. --config.finetune.data_dir=<folder of "
            "<task>.train.jsonl and <task>.valid.jsonl files>, such as BabyLM's filtered GLUE data)."
        )
    path = Path(os.path.expanduser(str(data_dir)))
    if not path.is_dir():
        raise ConfigError(f"finetune.data_dir={data_dir} is not a folder.")
    return path


# ------------------------------------------------------------------------------------------------
# Model, state, steps.


class SequenceClassifier(nn.Module):
    """The encoder (parameters 'encoder', as in pretraining) and a classification head ('classifier')."""

    config: RobertaConfig
    num_classes: int

    @nn.compact
    def __call__(self, input_ids, attention_mask, *, deterministic: bool = True):
        hidden = RobertaEncoder(self.config, name="encoder")(input_ids, attention_mask, deterministic=deterministic)
        return ClassificationHead(self.config, self.num_classes, name="classifier")(hidden, deterministic=deterministic)


@struct.dataclass
class FTState:
    step: jax.Array
    params: Any
    opt_state: Any


def make_optimizer(ft: Mapping[str, Any], total_steps: int) -> optax.GradientTransformation:
    """AdamW with linear warmup over `warmup_fraction` of the steps and linear decay to 0 at the end;
    weight decay on matrices only (not biases or layer norms), as Hugging Face's Trainer."""
    warmup = int(round(ft["warmup_fraction"] * total_steps))
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, ft["lr"], max(warmup, 1)),
         optax.linear_schedule(ft["lr"], 0.0, max(total_steps - warmup, 1))], [warmup])
    decay_mask = lambda params: jax.tree_util.tree_map(lambda x: x.ndim >= 2, params)
    return optax.chain(
        optax.clip_by_global_norm(ft["max_grad_norm"]) if ft["max_grad_norm"] > 0 else optax.identity(),
        optax.adamw(schedule, b1=ft["adam_b1"], b2=ft["adam_b2"], eps=ft["adam_eps"],
                    weight_decay=ft["weight_decay"], mask=decay_mask),
    )


def make_steps(model: SequenceClassifier, tx: optax.GradientTransformation):
    """(train_step, eval_step), both to be jitted: pure functions of arrays only."""

    def finetune_train_step(state: FTState, batch: dict, key: jax.Array):
        dropout_key = jax.random.fold_in(key, state.step)

        def loss_fn(params):
            logits = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                                 deterministic=False, rngs={"dropout": dropout_key})
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
            w = batch["weights"]
            return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return FTState(step=state.step + 1, params=params, opt_state=opt_state), loss

    def finetune_eval_step(params, batch: dict):
        logits = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], deterministic=True)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return finetune_train_step, finetune_eval_step


_OPTIMIZER_KEYS = ("lr", "warmup_fraction", "weight_decay", "max_grad_norm", "adam_b1", "adam_b2", "adam_eps")


@dataclasses.dataclass(frozen=True)
class _Steps:
    train: Callable
    eval: Callable
    init: Callable
    encoder_shapes: Any


@functools.lru_cache(maxsize=8)
def _compiled_steps(cfg: RobertaConfig, num_classes: int, hp: tuple[float, ...], total_steps: int) -> _Steps:
    """The jitted init/train/eval functions of one model and schedule, kept so that fine-tuning again
    with the same shapes (another task, seed or checkpoint of the same run) does not compile again."""
    model = SequenceClassifier(cfg, num_classes)
    tx = make_optimizer(dict(zip(_OPTIMIZER_KEYS, hp)), total_steps)
    train_step, eval_step = make_steps(model, tx)
    dummy = jnp.zeros((1, 8), jnp.int32)

    def init_state(encoder, key):
        fresh = model.init(key, dummy, jnp.ones_like(dummy))["params"]
        params = {"encoder": encoder, "classifier": fresh["classifier"]}
        return FTState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    shapes = jax.eval_shape(lambda k: model.init(k, dummy, jnp.ones_like(dummy)), jax.random.PRNGKey(0))["params"]
    return _Steps(train=jax.jit(train_step, donate_argnums=(0,)), eval=jax.jit(eval_step),
                  init=jax.jit(init_state), encoder_shapes=shapes["encoder"])


def _batches(enc: tasks_lib.Encoded, order: np.ndarray, batch_size: int):
    """Fixed-shape batches over `order`; the last one filled with zero-weight copies of row 0."""
    n = order.size
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        weights = np.ones(batch_size, np.float32)
        if idx.size < batch_size:
            weights[idx.size:] = 0.0
            idx = np.concatenate([idx, np.full(batch_size - idx.size, order[0])])
        yield {"input_ids": enc.input_ids[idx], "attention_mask": enc.attention_mask[idx],
               "labels": enc.labels[idx], "weights": weights}


class _Placement:
    """Puts batches and state on the devices: a mesh splits the batch over its batch axes."""

    def __init__(self, mesh, batch_sizes: Sequence[int]):
        self.mesh = mesh
        if mesh is None:
            return
        from climb_jax.parallel.mesh import BATCH_AXES, batch_sharding, replicated

        if jax.process_count() > 1:
            raise ConfigError("fine-tuning runs in one process; start it on a single host (any number of local devices).")
        shards = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
        for b in batch_sizes:
            if b % shards:
                raise ConfigError(f"finetune batch size {b} is not divisible by the mesh's {shards} batch devices; "
                                  f"use a multiple of {shards}.")
        self.batch = batch_sharding(mesh)
        self.replicated = replicated(mesh)

    def state(self, tree):
        if self.mesh is None:
            return jax.device_put(tree)
        return jax.device_put(tree, self.replicated)

    def batch_arrays(self, batch: dict):
        if self.mesh is None:
            return batch
        return jax.device_put(batch, self.batch)


# ------------------------------------------------------------------------------------------------
# Fine-tuning one task.


def _check_encoder(fresh: Any, pretrained: Any) -> None:
    got = jax.tree_util.tree_map(lambda x: tuple(np.shape(x)), pretrained)
    want = jax.tree_util.tree_map(lambda x: tuple(np.shape(x)), fresh)
    if jax.tree_util.tree_structure(got) != jax.tree_util.tree_structure(want) or got != want:
        raise CheckpointError("the pretrained encoder parameters do not match the model config "
                              "(different tree or shapes); was the checkpoint written by another model size?")


def finetune_task(encoder_params: Any, model_config: RobertaConfig, tokenizer, spec: tasks_lib.TaskSpec,
                  ft: Mapping[str, Any], *, data_dir: str | Path, mesh=None,
                  log: Callable[[str], None] = print) -> dict:
    """Fine-tunes `encoder_params` on one task for every seed in `ft['seeds']`; returns the result
    dictionary that `run` writes as JSON (without run-specific fields)."""
    t0 = time.perf_counter()
    cfg = model_config
    if ft.get("dropout_rate", -1.0) >= 0:
        cfg = dataclasses.replace(cfg, dropout_rate=float(ft["dropout_rate"]),
                                  attention_dropout_rate=float(ft["dropout_rate"]))
    if ft.get("dtype"):
        cfg = dataclasses.replace(cfg, dtype=ft["dtype"])
    if ft["max_seq_len"] > cfg.max_position_embeddings:
        raise ConfigError(f"finetune.max_seq_len={ft['max_seq_len']} exceeds the model's max_position_embeddings="
                          f"{cfg.max_position_embeddings}.")

    train = tasks_lib.load_split(spec, data_dir, "train", max_examples=int(ft["max_train_examples"]))
    valid = tasks_lib.load_split(spec, data_dir, "valid", max_examples=int(ft["max_valid_examples"]))
    train_enc = tasks_lib.encode(tokenizer, train, int(ft["max_seq_len"]))
    valid_enc = tasks_lib.encode(tokenizer, valid, int(ft["max_seq_len"]))
    names = list(spec.metrics)
    primary = spec.primary_metric
    batch_size, eval_bs = int(ft["batch_size"]), int(ft["eval_batch_size"])
    place = _Placement(mesh, [batch_size, eval_bs])
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total_steps = steps_per_epoch * int(ft["epochs"])
    log(f"{spec.name}: {len(train)} train / {len(valid)} valid examples, length {train_enc.input_ids.shape[1]}/"
        f"{valid_enc.input_ids.shape[1]} ({train_enc.truncated + valid_enc.truncated} truncated), "
        f"{steps_per_epoch} steps per epoch")

    hp = tuple(float(ft[k]) for k in _OPTIMIZER_KEYS)
    steps = _compiled_steps(cfg, spec.num_classes, hp, total_steps)
    p_train, p_eval, init_state = steps.train, steps.eval, steps.init
    # Host copies: every seed's state gets fresh device buffers, since the train step donates it.
    host_encoder = jax.device_get(encoder_params)
    _check_encoder(steps.encoder_shapes, host_encoder)

    def predict(params, enc: tasks_lib.Encoded) -> np.ndarray:
        order = np.arange(len(enc.labels))
        preds = [np.asarray(p_eval(params, place.batch_arrays({k: v for k, v in b.items() if k != "weights"})))
                 for b in _batches(enc, order, eval_bs)]
        return np.concatenate(preds)[: len(order)]

    per_seed = []
    for seed in tuple(ft["seeds"]):
        init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
        state = place.state(init_state(host_encoder, init_key))
        best: dict[str, Any] | None = None
        history, since_best = [], 0
        for epoch in range(1, int(ft["epochs"]) + 1):
            order = np.random.default_rng([seed, epoch]).permutation(len(train))
            losses = []
            for batch in _batches(train_enc, order, batch_size):
                state, loss = p_train(state, place.batch_arrays(batch), dropout_key)
                losses.append(loss)
            losses = np.asarray(jax.device_get(losses), dtype=np.float64)
            if not np.isfinite(losses).all():
                raise TrainingDiverged(f"fine-tuning {spec.name} (seed {seed}) diverged in epoch {epoch}: the loss "
                                       "became non-finite; lower finetune.lr.")
            preds = predict(state.params, valid_enc)
            record = {"epoch": epoch, "step": int(state.step), "train_loss": float(losses.mean()),
                      "valid": metrics_lib.compute_metrics(names, preds, valid_enc.labels)}
            if ft.get("eval_train"):
                record["train"] = metrics_lib.compute_metrics(names, predict(state.params, train_enc), train_enc.labels)
            history.append(record)
            log(f"{spec.name} seed {seed} epoch {epoch}: loss {record['train_loss']:.4f}, valid "
                + ", ".join(f"{k} {v:.4f}" for k, v in record["valid"].items()))
            if best is None or record["valid"][primary] > best["metrics"][primary]:
                best = {"epoch": epoch, "metrics": record["valid"], "train_metrics": record.get("train"),
                        "correct": (preds == valid_enc.labels).astype(int).tolist()}
                since_best = 0
            else:
                since_best += 1
                if ft["patience"] and since_best >= ft["patience"]:
                    break
        per_seed.append({"seed": int(seed), "best_epoch": best["epoch"], "epochs_run": len(history),
                         "stopped_early": len(history) < int(ft["epochs"]), "metrics": best["metrics"],
                         "train_metrics": best["train_metrics"], "history": history, "correct": best["correct"]})
        del state

    mean, std = metrics_lib.mean_metrics([s["metrics"] for s in per_seed])
    return {
        "task": spec.name,
        "task_spec": tasks_lib.describe(spec),
        "primary_metric": primary,
        "metrics": names,
        "mean": mean,
        "std": std,
        "best_epoch_mean": float(np.mean([s["best_epoch"] for s in per_seed])),
        "per_seed": per_seed,
        "majority_baseline": {"valid": metrics_lib.majority_baseline(valid_enc.labels, names),
                              "train": metrics_lib.majority_baseline(train_enc.labels, names)},
        "num_train": len(train),
        "num_valid": len(valid),
        "seq_len": {"train": int(train_enc.input_ids.shape[1]), "valid": int(valid_enc.input_ids.shape[1])},
        "truncated": {"train": train_enc.truncated, "valid": valid_enc.truncated},
        "files": {"train": str(train.path), "valid": str(valid.path)},
        "hyperparameters": {k: (list(v) if isinstance(v, tuple) else v)
                            for k, v in (ft.to_dict() if hasattr(ft, "to_dict") else dict(ft)).items()},
        "model": {"dtype": cfg.dtype, "dropout_rate": cfg.dropout_rate},
        "seconds": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------------------------------------
# Runs.


def _mesh(c: ConfigDict):
    from climb_jax.parallel.mesh import create_mesh

    return create_mesh(c.mesh)


def _run_config(workdir: str | Path) -> dict | None:
    """The pretraining run's config.json as a dict (None if absent: loading the run reports that)."""
    import json

    path = Path(workdir) / "config.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _check_inputs(c: ConfigDict) -> Path:
    """Everything that can be checked before the checkpoint is restored: the config, the data folder
    and every task's two files. Returns the data folder."""
    validate_config(c)
    data_dir = resolve_data_dir(c.finetune, _run_config(c.init_from))
    for name in task_names(c.finetune):
        spec = tasks_lib.spec_from_config(c.finetune, name)
        for split in tasks_lib.SPLITS:
            path = tasks_lib.task_path(data_dir, spec.name, split)
            if not path.exists():
                raise DataError(f"{path} does not exist: task '{name}' needs {spec.name}.train.jsonl and "
                                f"{spec.name}.valid.jsonl in finetune.data_dir={data_dir}.")
    return data_dir


def _run_tasks(c: ConfigDict, loaded, data_dir: Path, output_dirs: Sequence[Path],
               log: Callable[[str], None] = print) -> list[Path]:
    from climb_jax.train.workdir import write_json

    ft = c.finetune
    run_config = loaded.config
    mesh = _mesh(c)
    written = []
    for name in task_names(ft):
        spec = tasks_lib.spec_from_config(ft, name)
        result = finetune_task(loaded.params["encoder"], loaded.model_config, loaded.tokenizer, spec, ft,
                               data_dir=data_dir, mesh=mesh, log=log)
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
        log(f"{name}: {mean} over seeds {list(ft.seeds)} -> {Path(output_dirs[0]) / f'{name}.json'}")
    return written


def _load(workdir: str, step: int | None):
    from climb_jax.train.checkpoint import load_run  # late: keeps this module importable on its own

    return load_run(str(workdir), step)


def run(config: ConfigDict, workdir: str) -> list[Path]:
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
                   **overrides) -> Path:
    """Fine-tunes a pretraining run's latest (or `step=`) checkpoint on `tasks` and returns the folder
    that holds one `<task>.json` per task (`<workdir>/finetune`, or `output_dir=`).

    `overrides` are fields of the `finetune` config section (lr=1e-4, seeds=(0, 1), smoke=True for
    the smoke settings) or the top-level `step` and `output_dir`; an unknown one is a ConfigError.
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
    data_dir = _check_inputs(c)
    loaded = _load(str(workdir), c.get("step"))
    out = Path(c.output_dir) if c.get("output_dir") else Path(workdir) / "finetune"
    _run_tasks(c, loaded, data_dir, [out])
    return out
