"""Fine-tuning tasks: what a JSON-lines classification task looks like, and loading it.

A task is described by its input templates, its label field and its number of classes. The text of
an example is one or two *segments* (a sentence or a sentence pair); each segment is a template over
the record's fields (`"{premise}"`, or the BabyLM 2023 pipeline's `'Does "{span2_text}" refer to
"{span1_text}" in this passage?'` for WSC). The built-in descriptions depend on the fine-tuning
protocol (`choices.FINETUNE_PROTOCOLS`): under `babylm2023` they are the inputs and metrics the BabyLM
2023 pipeline built from the files' columns as the reference ran it (binary tasks are scored by
accuracy and F1 and the checkpoint is selected by F1, the others by accuracy; the headline figure is
accuracy, F1 for MRPC and QQP, as BabyLM's tables); under `per_epoch` they are this project's earlier
descriptions, kept so that results of that option do not change.

Files are `<data_dir>/<task>.train.jsonl` and `<data_dir>/<task>.valid.jsonl`; the pipeline's own
names (`<task>.train.json`, `<task>.validation.json`, `mnli.validation_matched.json`, ...) are found
too, so its `filter-data/glue_filtered` folder works as it is. `mnli-mm` (MNLI scored on the
mismatched validation set) trains on MNLI's training file, as the pipeline did.

Any other task is described in the fine-tuning config (`finetune.text_fields` etc., see
`spec_from_config`). Labels are integers in [0, num_classes), booleans, or strings listed in
`label_names` (the position of a name is its class id).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from climb_jax.config import choices
from climb_jax.errors import ConfigError, DataError
from climb_jax.eval.metrics import METRICS

SPLITS = ("train", "valid")
# `finetune.data_dir=embedded` (choices.EMBEDDED_FINETUNE_DATA): the first 48 training and 32 validation
# lines of BabyLM's filtered WSC, unchanged (its NOTICE.md), for smoke runs on a fresh clone.
EMBEDDED_DIR = Path(__file__).resolve().parent / "sample" / "glue"


def template_fields(template: str) -> tuple[str, ...]:
    """The field names a template reads, in order: '{question} {answer}' -> ('question', 'answer')."""
    try:
        return tuple(name for _, name, _, _ in string.Formatter().parse(template) if name is not None)
    except ValueError as e:
        raise ConfigError(f"input template {template!r} is malformed ({e}).") from None


@dataclass(frozen=True)
class TaskSpec:
    """A sentence(-pair) classification task over JSON lines."""

    name: str
    segments: tuple[str, ...]  # one or two input templates over the record's fields
    label_field: str = "label"
    num_classes: int = 2
    metrics: tuple[str, ...] = ("accuracy",)  # the first is the headline figure reports use
    select_metric: str = ""  # the one that selects the checkpoint ("" = the first metric)
    label_names: tuple[str, ...] = ()  # for string labels: label_names[i] is class i
    train_stem: str = ""  # the training file's stem ("" = name): mnli-mm trains on mnli's file
    pipeline_valid: str = ""  # the pipeline's validation file name ("" = <name>.validation.json)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    @property
    def selection_metric(self) -> str:
        return self.select_metric or self.metrics[0]

    @property
    def fields(self) -> tuple[str, ...]:
        """Every field an example must have."""
        names = [f for seg in self.segments for f in template_fields(seg)] + [self.label_field]
        return tuple(dict.fromkeys(names))

    def validate(self) -> None:
        where = f"task '{self.name}'"
        if not self.name or "/" in self.name:
            raise ConfigError(f"task name '{self.name}' must be a non-empty file-name stem.")
        if not 1 <= len(self.segments) <= 2 or not all(self.segments) or \
                not all(template_fields(seg) and all(template_fields(seg)) for seg in self.segments):
            raise ConfigError(
                f"{where}: text_fields must be one or two segments of field names, e.g. 'sentence1,sentence2' "
                f"or 'paragraph,question+answer'; got {self.segments!r}."
            )
        if not self.label_field:
            raise ConfigError(f"{where}: label_field is empty.")
        if self.num_classes < 2:
            raise ConfigError(f"{where}: num_classes must be at least 2, got {self.num_classes}.")
        if not self.metrics:
            raise ConfigError(f"{where}: name at least one metric ({', '.join(METRICS)}).")
        for m in self.metrics:
            if m not in METRICS:
                raise ConfigError(f"{where}: unknown metric '{m}'; choose from: {', '.join(METRICS)}.")
        if self.select_metric and self.select_metric not in self.metrics:
            raise ConfigError(f"{where}: the selection metric '{self.select_metric}' is not among its metrics "
                              f"({', '.join(self.metrics)}).")
        if "f1" in self.metrics and self.num_classes != 2:
            raise ConfigError(f"{where}: f1 is the binary F1 of class 1 and needs num_classes=2.")
        if self.label_names and len(self.label_names) != self.num_classes:
            raise ConfigError(
                f"{where}: label_names has {len(self.label_names)} names for num_classes={self.num_classes}."
            )

    def texts(self, record: Mapping[str, Any]) -> tuple[str, ...]:
        """The example's one or two text segments."""
        return tuple(seg.format_map({k: str(v) for k, v in record.items()}) for seg in self.segments)

    def label(self, value: Any, where: str) -> int:
        """The class id of a label value; DataError (naming `where`) when it is not a class."""
        if isinstance(value, bool):
            value = int(value)
        elif isinstance(value, str):
            if value in self.label_names:
                return self.label_names.index(value)
            if value.strip().lstrip("-").isdigit():
                value = int(value)
            else:
                known = f"known names: {', '.join(self.label_names)}" if self.label_names else \
                    "set finetune.label_names to map string labels to classes"
                raise DataError(f"{where}: label '{value}' is not a class of task '{self.name}' ({known}).")
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise DataError(f"{where}: label {value!r} is not an integer class id.")
        if not 0 <= value < self.num_classes:
            raise DataError(
                f"{where}: label {value} is outside [0, {self.num_classes}) for task '{self.name}'; "
                f"fix the line or set finetune.num_classes."
            )
        return value


def parse_text_fields(text: str, joiner: str = " ") -> tuple[str, ...]:
    """'sentence1,sentence2' -> ('{sentence1}', '{sentence2}'); '+' joins fields of one segment with
    `joiner`: 'question+answer' -> '{question} {answer}'. A list (the config grammar's) is taken as
    the segments already split."""
    segments = text if isinstance(text, (list, tuple)) else str(text).split(",")
    glue = joiner.replace("{", "{{").replace("}", "}}")
    return tuple(glue.join("{%s}" % f.strip() for f in seg.split("+")) for seg in segments if str(seg).strip())


def _default_metrics(protocol: str, num_classes: int) -> tuple[str, ...]:
    """The metrics of a task the config does not name them for: the BabyLM 2023 pipeline computed
    accuracy and F1 for binary tasks, accuracy otherwise."""
    if protocol == "babylm2023" and num_classes == 2:
        return ("accuracy", "f1")
    return ("accuracy",)


def _selection(protocol: str, num_classes: int, metrics: tuple[str, ...]) -> str:
    """babylm2023: the pipeline's `metric_for_best_model`, F1 for binary tasks ("" = the first metric)."""
    return "f1" if protocol == "babylm2023" and num_classes == 2 and "f1" in metrics else ""


# name -> (segments, num_classes, per_epoch metrics). The segments are the pipeline's pairing of each
# file's columns (its choice by column name); MultiRC and WSC are templates. MRPC and QQP report F1.
_BUILTIN: dict[str, tuple[tuple[str, ...], int, tuple[str, ...]]] = {
    "rte": (("{sentence1}", "{sentence2}"), 2, ("accuracy",)),
    "mrpc": (("{sentence1}", "{sentence2}"), 2, ("f1", "accuracy")),
    "wsc": (('Does "{span2_text}" refer to "{span1_text}" in this passage?', "{text}"), 2, ("accuracy",)),
    "boolq": (("{question}", "{passage}"), 2, ("accuracy",)),
    "multirc": (("Question: {question} Answer: {answer}", "{paragraph}"), 2, ("accuracy",)),
    "mnli": (("{premise}", "{hypothesis}"), 3, ("accuracy",)),
    "mnli-mm": (("{premise}", "{hypothesis}"), 3, ("accuracy",)),
    "qqp": (("{question1}", "{question2}"), 2, ("f1", "accuracy")),
    "cola": (("{sentence}",), 2, ("mcc", "accuracy")),
    "sst2": (("{sentence}",), 2, ("accuracy",)),
    "qnli": (("{question}", "{sentence}"), 2, ("accuracy",)),
}
# The `per_epoch` protocol keeps this project's earlier inputs for the two template tasks.
_PER_EPOCH_SEGMENTS = {"wsc": ("{span2_text}: {text}", "{span1_text}"), "multirc": ("{paragraph}", "{question} {answer}")}
_FILES = {"mnli": ("mnli", "mnli.validation_matched.json"), "mnli-mm": ("mnli", "mnli.validation_mismatched.json")}


def builtin_tasks(protocol: str = choices.DEFAULT_FINETUNE_PROTOCOL) -> dict[str, TaskSpec]:
    """The built-in task descriptions under a fine-tuning protocol."""
    out = {}
    for name in choices.TASKS:
        segments, classes, old_metrics = _BUILTIN[name]
        if protocol == "babylm2023":
            metrics = _default_metrics(protocol, classes)
            if old_metrics[0] == "f1":
                metrics = ("f1", "accuracy")
        else:
            metrics, segments = old_metrics, _PER_EPOCH_SEGMENTS.get(name, segments)
        train_stem, valid = _FILES.get(name, ("", ""))
        out[name] = TaskSpec(name=name, segments=segments, num_classes=classes, metrics=metrics,
                             select_metric=_selection(protocol, classes, metrics), train_stem=train_stem,
                             pipeline_valid=valid)
    return out


# The default protocol's descriptions.
BUILTIN_TASKS: dict[str, TaskSpec] = builtin_tasks()


def _csv(text: Any) -> tuple[str, ...]:
    items = text if isinstance(text, (list, tuple)) else str(text or "").split(",")
    return tuple(str(x).strip() for x in items if str(x).strip())


def spec_from_config(ft: Mapping[str, Any], task: str | None = None) -> TaskSpec:
    """The task of a `finetune` config section, under its `protocol`.

    A built-in task name gives its built-in description; any field set in the config
    (`text_fields`, `label_field`, `num_classes`, `metrics`, `label_names`, `joiner`) overrides it,
    and a name that is not built in needs at least `text_fields`.
    """
    name = task or ft["task"]
    protocol = ft.get("protocol") or choices.DEFAULT_FINETUNE_PROTOCOL
    base = builtin_tasks(protocol).get(name) if protocol in choices.FINETUNE_PROTOCOLS else None
    text = ft.get("text_fields") or ""
    if base is None and not text:
        raise ConfigError(
            f"unknown task '{name}'. Built-in tasks: {', '.join(choices.TASKS)}; for another task set "
            "finetune.text_fields (e.g. 'sentence1,sentence2'), finetune.label_field and finetune.num_classes."
        )
    kwargs: dict[str, Any] = {}
    if text:
        kwargs["segments"] = parse_text_fields(text, ft.get("joiner") or " ")
    if ft.get("label_field"):
        kwargs["label_field"] = ft["label_field"]
    if ft.get("num_classes"):
        kwargs["num_classes"] = int(ft["num_classes"])
    if ft.get("metrics"):
        kwargs["metrics"] = _csv(ft["metrics"])
    elif "num_classes" in kwargs or base is None:
        kwargs["metrics"] = _default_metrics(protocol, kwargs.get("num_classes", 2))
    if ft.get("label_names"):
        kwargs["label_names"] = _csv(ft["label_names"])
    if "metrics" in kwargs:
        kwargs["select_metric"] = _selection(protocol, kwargs.get("num_classes", base.num_classes if base else 2),
                                             kwargs["metrics"])
    if base is None:
        return TaskSpec(name=name, **kwargs)
    return TaskSpec(**{**base.__dict__, **kwargs})


@dataclass
class TaskData:
    """One split of a task: text segments and integer labels."""

    path: Path
    texts: list[tuple[str, ...]]
    labels: np.ndarray  # [N] int32
    line_numbers: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int) -> "TaskData":
        """The first n examples (n <= 0: all)."""
        if n <= 0 or n >= len(self):
            return self
        return TaskData(self.path, self.texts[:n], self.labels[:n], self.line_numbers[:n])


def split_files(spec: TaskSpec, split: str) -> tuple[str, ...]:
    """The file names a split may have, preferred first: this project's `<task>.<split>.jsonl`, then
    the BabyLM 2023 pipeline's names."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "train":
        stem = spec.train_stem or spec.name
        return f"{stem}.train.jsonl", f"{stem}.train.json"
    return f"{spec.name}.valid.jsonl", spec.pipeline_valid or f"{spec.name}.validation.json"


def task_path(data_dir: str | Path, spec: TaskSpec, split: str) -> Path:
    """The split's file in `data_dir`: the first of `split_files` that exists, else the preferred name."""
    names = split_files(spec, split)
    for name in names:
        if (Path(data_dir) / name).exists():
            return Path(data_dir) / name
    return Path(data_dir) / names[0]


def load_split(spec: TaskSpec, data_dir: str | Path, split: str, *, max_examples: int = 0) -> TaskData:
    """Reads and checks a split's file (stops after `max_examples` if > 0).

    DataError when the file is missing, a line is not a JSON object, a field the task needs is
    absent (the message lists the fields the line has) or a label is not a class.
    """
    path = task_path(data_dir, spec, split)
    if not Path(data_dir).is_dir():
        raise DataError(f"fine-tuning data folder {data_dir} does not exist; set finetune.data_dir.")
    if not path.exists():
        stem = spec.train_stem or spec.name
        present = sorted({p.name for n in {spec.name, stem} for p in Path(data_dir).glob(f"{n}.*.json*")})
        raise DataError(
            f"{path} does not exist (files for '{spec.name}' there: {', '.join(present) or 'none'}). "
            f"Each task needs <task>.train.jsonl and <task>.valid.jsonl."
        )
    texts, labels, lines = [], [], []
    needed = spec.fields
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where} is not valid JSON ({e.msg}).") from None
            if not isinstance(record, dict):
                raise DataError(f"{where} is not a JSON object.")
            missing = [f for f in needed if f not in record]
            if missing:
                raise DataError(
                    f"{where}: task '{spec.name}' needs field(s) {', '.join(missing)}, but the line has "
                    f"{', '.join(sorted(record)) or 'no fields'}. Set finetune.text_fields / finetune.label_field "
                    "to the names this file uses."
                )
            texts.append(spec.texts(record))
            labels.append(spec.label(record[spec.label_field], where))
            lines.append(lineno)
            if 0 < max_examples <= len(texts):
                break
    if not texts:
        raise DataError(f"{path} holds no examples.")
    return TaskData(path=path, texts=texts, labels=np.asarray(labels, dtype=np.int32), line_numbers=lines)


@dataclass
class Encoded:
    """Token ids padded to one fixed length, so every batch has the same shape (one compile)."""

    input_ids: np.ndarray  # [N, L] int32
    attention_mask: np.ndarray  # [N, L] int32
    labels: np.ndarray  # [N] int32
    truncated: int  # examples longer than L


def encode(tokenizer, data: TaskData, max_len: int, *, round_to: int = 8) -> Encoded:
    """Tokenizes with the tokenizer's special tokens (`<s> a </s></s> b </s>` for a pair), truncating
    the longer segment first. The length is the longest example, rounded up to `round_to`, capped at
    `max_len`: short tasks do not pay for 128 positions."""
    first = [t[0] for t in data.texts]
    second = [t[1] for t in data.texts] if data.texts and len(data.texts[0]) > 1 else None
    full = tokenizer(first, second, truncation=False, padding=False)["input_ids"]
    longest = max(len(x) for x in full)
    length = min(max_len, -(-longest // round_to) * round_to)
    enc = tokenizer(first, second, truncation="longest_first" if second is not None else True,
                    max_length=length, padding="max_length", return_tensors="np")
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    mask = np.asarray(enc["attention_mask"], dtype=np.int32)
    if ids.shape[1] != length:
        raise DataError(f"tokenizer returned length {ids.shape[1]} instead of {length}; check its padding settings.")
    return Encoded(ids, mask, data.labels.astype(np.int32), truncated=sum(len(x) > length for x in full))


def describe(spec: TaskSpec) -> dict[str, Any]:
    """The task description as plain JSON."""
    return {"name": spec.name, "segments": list(spec.segments), "label_field": spec.label_field,
            "num_classes": spec.num_classes, "metrics": list(spec.metrics), "selection_metric": spec.selection_metric,
            "label_names": list(spec.label_names), "train_stem": spec.train_stem or spec.name}


def available_tasks(data_dir: str | Path, protocol: str = choices.DEFAULT_FINETUNE_PROTOCOL) -> list[str]:
    """Built-in tasks with both splits present in `data_dir`, and any other `<name>.train.jsonl` with
    its `<name>.valid.jsonl`."""
    d = Path(data_dir)
    found = {name for name, spec in builtin_tasks(protocol).items()
             if all(task_path(d, spec, split).exists() for split in SPLITS)}
    found |= {p.name[: -len(".train.jsonl")] for p in d.glob("*.train.jsonl")
              if (d / p.name.replace(".train.", ".valid.")).exists()}
    return sorted(found)
