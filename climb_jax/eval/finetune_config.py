"""Fine-tuning settings: the protocols' values, the config and preset words of `configs/finetune.py`,
and the frozen `Settings` one task is fine-tuned with.

Why protocols: the reference fine-tuned with the BabyLM 2023 pipeline (`finetune_classification.py`
run by its evaluator): lr 5e-5, batch 64, up to 10 epochs, length 128, no warmup, weight decay 0,
an evaluation every 200 steps with early stopping after 10 evaluations without an improvement above
0.001, seed 12, and the best checkpoint by F1 (binary tasks) or accuracy. That is `babylm2023`, the
default. `per_epoch` is this project's earlier recipe (an evaluation after every epoch, patience 3,
10 % warmup, weight decay 0.01, seed 0), kept under its name so that its results do not move.

A field left unset (`None`, or `()` for the seeds) takes the protocol's value, so
`--config.finetune.protocol=per_epoch` on the command line switches every such value at once while
any field set explicitly wins. The `finetune` section itself is the schema's
(`climb_jax.config.finetune_section`): `schema.base_config()` carries it too, so a pre-training run's
config can name its fine-tuning data and settings.

This module imports no JAX: the config files and `--help` read it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from ml_collections import ConfigDict, config_dict

from climb_jax.config import choices, schema
from climb_jax.config.finetune_section import finetune_section
from climb_jax.errors import ConfigError

# The values each protocol gives to the fields it decides (every other field has one default).
PROTOCOLS: dict[str, dict[str, Any]] = {
    "babylm2023": dict(
        epochs=10,
        patience=10,  # evaluations without an improvement above `threshold`
        threshold=0.001,
        eval_every=200,  # steps
        # The reference ran the pipeline without --save_steps: the Trainer saved every 500 steps (its
        # default) and records its best metric only when an evaluation coincides with a save, so a
        # checkpoint is selected at multiples of 1000 steps, and a run shorter than that reports its
        # last step (the pipeline's own script saves at every evaluation: select_every=0).
        select_every=500,
        seeds=(12,),
        warmup_fraction=0.0,
        weight_decay=0.0,
    ),
    "per_epoch": dict(
        epochs=10,
        patience=3,  # epochs without improvement
        threshold=0.0,
        eval_every=0,  # 0: after every epoch
        select_every=0,  # every evaluation may be the best
        seeds=(0,),
        warmup_fraction=0.1,
        weight_decay=0.01,
    ),
}
# per_epoch only: tasks with hundreds of thousands of examples run a few epochs.
PER_EPOCH_LARGE_TASKS = ("mnli", "mnli-mm", "qqp", "qnli", "sst2")
PER_EPOCH_LARGE = dict(epochs=3, patience=1)

_PROTOCOL_FIELDS = ("epochs", "patience", "threshold", "eval_every", "select_every", "warmup_fraction", "weight_decay")


def default_config(task: str = "rte") -> ConfigDict:
    """The config of `configs/finetune.py`: the run to fine-tune, the `finetune` section, and the base
    config's `mesh` and `distributed` sections."""
    base = schema.base_config()
    c = ConfigDict()
    c.mode = "finetune"
    c.name = "finetune"
    c.init_from = config_dict.placeholder(str)  # the pretraining run's workdir
    c.step = config_dict.placeholder(int)  # its checkpoint step; default: the latest
    c.output_dir = config_dict.placeholder(str)  # default: <init_from>/finetune
    c.finetune = finetune_section(task)
    c.mesh = base.mesh
    c.distributed = base.distributed
    return c


def apply_smoke(c: ConfigDict, task_given: bool = True) -> None:
    """A few examples and epochs: checks the whole path in seconds on a CPU. Without a data folder it
    fine-tunes on the sample shipped in the package (and on its task, unless a task word was given),
    so a fresh clone can try fine-tuning with no data to fetch."""
    c.finetune.update(dict(max_train_examples=64, max_valid_examples=64, epochs=2, batch_size=16,
                           eval_batch_size=32, max_seq_len=64, patience=0))
    if not c.finetune.data_dir:
        c.finetune.data_dir = choices.EMBEDDED_FINETUNE_DATA
        if not task_given:
            c.finetune.task = choices.EMBEDDED_FINETUNE_TASK


PRESETS: dict[str, Callable[[ConfigDict], None]] = {
    **{name: (lambda c: None) for name in choices.TASKS},  # collected by build_config
    **{name: (lambda c, name=name: setattr(c.finetune, "protocol", name)) for name in choices.FINETUNE_PROTOCOLS},
    "seeds3": lambda c: setattr(c.finetune, "seeds", (0, 1, 2)),
    "seeds5": lambda c: setattr(c.finetune, "seeds", (0, 1, 2, 3, 4)),
}


def build_config(arg: str | None = None) -> ConfigDict:
    """`configs/finetune.py:<items>` in the shared preset grammar (schema.parse_arg): task names
    (every task word given, in order), a protocol name, `seeds3`/`seeds5`, `smoke` (applied last) and
    key=value items (`finetune.lr=1e-4`, `finetune.text_fields=[premise,hypothesis]`)."""
    c = default_config()
    task_words = [w for w in schema.parse_arg(arg).words if w in choices.TASKS]
    if task_words:
        c.finetune.task = ",".join(dict.fromkeys(task_words))
    smoke = functools.partial(apply_smoke, task_given=bool(task_words))
    return schema.apply_arg(c, arg, PRESETS, smoke=smoke, common={}, where="configs/finetune.py")


def task_names(ft: Mapping[str, Any]) -> list[str]:
    raw = ft["task"]
    items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
    names = list(dict.fromkeys(str(t).strip() for t in items if str(t).strip()))
    if not names:
        raise ConfigError("finetune.task is empty; name a task, e.g. rte (or several: rte,mrpc).")
    return names


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that decides how one task is fine-tuned, with the protocol's values filled in."""

    protocol: str
    lr: float
    batch_size: int
    eval_batch_size: int
    epochs: int
    max_seq_len: int
    patience: int
    threshold: float
    eval_every: int
    select_every: int
    seeds: tuple[int, ...]
    warmup_fraction: float
    weight_decay: float
    max_grad_norm: float
    adam_b1: float
    adam_b2: float
    adam_eps: float
    dropout_rate: float
    dtype: str
    max_train_examples: int
    max_valid_examples: int
    eval_train: bool

    def optimizer_key(self) -> tuple:
        """The values the optimizer is built from (the compiled steps are cached on them)."""
        return (self.lr, self.warmup_fraction, self.weight_decay, self.max_grad_norm, self.adam_b1, self.adam_b2,
                self.adam_eps)

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def settings(ft: Mapping[str, Any], task: str = "") -> Settings:
    """The settings of `task` under `ft` (a `finetune` section): unset fields take the protocol's
    values. ConfigError for a value that cannot work."""
    protocol = ft.get("protocol") or choices.DEFAULT_FINETUNE_PROTOCOL
    if protocol not in choices.FINETUNE_PROTOCOLS:
        import difflib

        close = difflib.get_close_matches(str(protocol), choices.FINETUNE_PROTOCOLS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"finetune.protocol='{protocol}' is not valid.{hint} Choose one of: "
                          f"{', '.join(choices.FINETUNE_PROTOCOLS)}.")
    values = dict(PROTOCOLS[protocol])
    if protocol == "per_epoch" and task in PER_EPOCH_LARGE_TASKS:
        values.update(PER_EPOCH_LARGE)
    for key in _PROTOCOL_FIELDS:
        if ft.get(key) is not None:
            values[key] = ft[key]
    seeds = tuple(ft.get("seeds") or ()) or values["seeds"]
    try:  # a preset list arrives as strings when the field's default is the empty tuple
        seeds = tuple(int(x) for x in seeds)
    except (TypeError, ValueError):
        raise ConfigError(f"finetune.seeds must be integers, e.g. finetune.seeds=[12,13]; got {seeds!r}.") from None
    s = Settings(
        protocol=protocol, lr=float(ft["lr"]), batch_size=int(ft["batch_size"]),
        eval_batch_size=int(ft["eval_batch_size"]), epochs=int(values["epochs"]), max_seq_len=int(ft["max_seq_len"]),
        patience=int(values["patience"]), threshold=float(values["threshold"]), eval_every=int(values["eval_every"]),
        select_every=int(values["select_every"]), seeds=seeds, warmup_fraction=float(values["warmup_fraction"]),
        weight_decay=float(values["weight_decay"]), max_grad_norm=float(ft["max_grad_norm"]),
        adam_b1=float(ft["adam_b1"]), adam_b2=float(ft["adam_b2"]), adam_eps=float(ft["adam_eps"]),
        dropout_rate=float(ft.get("dropout_rate", -1.0)), dtype=str(ft.get("dtype") or ""),
        max_train_examples=int(ft.get("max_train_examples") or 0),
        max_valid_examples=int(ft.get("max_valid_examples") or 0), eval_train=bool(ft.get("eval_train")),
    )
    _check(s)
    return s


def _check(s: Settings) -> None:
    for key in ("batch_size", "eval_batch_size", "epochs", "max_seq_len"):
        if getattr(s, key) <= 0:
            raise ConfigError(f"finetune.{key} must be positive, got {getattr(s, key)}.")
    if s.max_seq_len < 8:
        raise ConfigError(f"finetune.max_seq_len={s.max_seq_len} is too short; use at least 8.")
    if s.lr <= 0:
        raise ConfigError(f"finetune.lr must be positive, got {s.lr}.")
    if not 0 <= s.warmup_fraction < 1:
        raise ConfigError(f"finetune.warmup_fraction must lie in [0, 1), got {s.warmup_fraction}.")
    for key in ("patience", "max_train_examples", "max_valid_examples", "weight_decay", "threshold", "eval_every",
                "select_every"):
        if getattr(s, key) < 0:
            raise ConfigError(f"finetune.{key} must be >= 0, got {getattr(s, key)}.")
    if len(set(s.seeds)) != len(s.seeds):
        raise ConfigError(f"finetune.seeds must be distinct integers, e.g. (0, 1, 2); got {s.seeds!r}.")
    if s.dtype not in ("",) + choices.DTYPES:
        raise ConfigError(f"finetune.dtype='{s.dtype}' is not valid; choose '' (the model's) or one of "
                          f"{', '.join(choices.DTYPES)}.")
    if s.dropout_rate >= 1:
        raise ConfigError(f"finetune.dropout_rate must be below 1, got {s.dropout_rate}.")


def validate_config(c: ConfigDict) -> None:
    """Raises ConfigError for settings that cannot work, before any model is loaded."""
    from climb_jax.eval import tasks as tasks_lib

    for name in task_names(c.finetune):
        settings(c.finetune, name)
        tasks_lib.spec_from_config(c.finetune, name)


DATA_DIR_FLAG = "--config.finetune.data_dir"


def resolve_data_dir(ft: Mapping[str, Any], run_config: Mapping[str, Any] | None = None, *,
                     flag: str = DATA_DIR_FLAG) -> Path:
    """finetune.data_dir, else the pretraining run's own `finetune.data_dir`; no built-in default
    (`embedded`, the smoke preset's, names the sample shipped in the package). `flag` is how the
    caller's user sets the folder (climb_jax.evaluate: --tasks_dir)."""
    data_dir = ft.get("data_dir")
    if not data_dir and run_config is not None:
        data_dir = (run_config.get("finetune") or {}).get("data_dir")
    if not data_dir:
        raise ConfigError(
            f"no fine-tuning data: set finetune.data_dir (e.g. {flag}=<folder of <task>.train.jsonl and "
            "<task>.valid.jsonl files>, such as BabyLM's filtered GLUE data), or finetune.data_dir=embedded for "
            f"the {choices.EMBEDDED_FINETUNE_TASK} sample shipped in the package."
        )
    if data_dir == choices.EMBEDDED_FINETUNE_DATA:
        from climb_jax.eval.tasks import EMBEDDED_DIR

        return EMBEDDED_DIR
    path = Path(os.path.expanduser(str(data_dir)))
    if not path.is_dir():
        raise ConfigError(f"the fine-tuning data folder {flag}={data_dir} is not a folder.")
    return path
