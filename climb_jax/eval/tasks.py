"""Fine-tuning tasks: what a JSON-lines classification task looks like, and loading it.

A task is described by its text fields, its label field and its number of classes, as the BabyLM
pipeline does for (Super)GLUE. The text of an example is one or two *segments* (a sentence or a
sentence pair); a segment is one field, or several fields joined by the task's `joiner` (WSC puts
the pronoun before the text, "he: Mark told Pete ...", and pairs it with the candidate referent;
MultiRC pairs the paragraph with "question answer"), as the BabyLM pipeline builds them.
Files are `<data_dir>/<task>.train.jsonl` and `<data_dir>/<task>.valid.jsonl`.

Any other task is described in the fine-tuning config (`finetune.text_fields` etc., see
`spec_from_config`). Labels are integers in [0, num_classes), booleans, or strings listed in
`label_names` (the position of a name is its class id).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from climb_jax.errors import ConfigError, DataError
from climb_jax.eval.metrics import METRICS

SPLITS = ("train", "valid")


@dataclass(frozen=True)
class TaskSpec:
    """A sentence(-pair) classification task over JSON lines."""

    name: str
    text_fields: tuple[tuple[str, ...], ...]  # one or two segments, each one or more fields
    label_field: str = "label"
    num_classes: int = 2
    metrics: tuple[str, ...] = ("accuracy",)  # the first is the one early stopping and reports use
    label_names: tuple[str, ...] = ()  # for string labels: label_names[i] is class i
    joiner: str = " "  # between the fields of one segment

    def __post_init__(self) -> None:
        self.validate()

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    @property
    def fields(self) -> tuple[str, ...]:
        """Every field an example must have."""
        names = [f for seg in self.text_fields for f in seg] + [self.label_field]
        return tuple(dict.fromkeys(names))

    def validate(self) -> None:
        where = f"task '{self.name}'"
        if not self.name or "/" in self.name:
            raise ConfigError(f"task name '{self.name}' must be a non-empty file-name stem.")
        if not 1 <= len(self.text_fields) <= 2 or any(not seg or not all(seg) for seg in self.text_fields):
            raise ConfigError(
                f"{where}: text_fields must be one or two segments of field names, e.g. 'sentence1,sentence2' "
                f"or 'paragraph,question+answer'; got {self.text_fields!r}."
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
        if "f1" in self.metrics and self.num_classes != 2:
            raise ConfigError(f"{where}: f1 is the binary F1 of class 1 and needs num_classes=2.")
        if self.label_names and len(self.label_names) != self.num_classes:
            raise ConfigError(
                f"{where}: label_names has {len(self.label_names)} names for num_classes={self.num_classes}."
            )

    def texts(self, record: Mapping[str, Any]) -> tuple[str, ...]:
        """The example's one or two text segments."""
        return tuple(self.joiner.join(str(record[f]) for f in seg) for seg in self.text_fields)

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


def _spec(name: str, text: str, num_classes: int = 2, metrics: tuple[str, ...] = ("accuracy",),
          joiner: str = " ") -> TaskSpec:
    return TaskSpec(name=name, text_fields=parse_text_fields(text), num_classes=num_classes, metrics=metrics,
                    joiner=joiner)


def parse_text_fields(text: str) -> tuple[tuple[str, ...], ...]:
    """'sentence1,sentence2' -> (('sentence1',), ('sentence2',)); '+' joins fields in one segment."""
    return tuple(tuple(f.strip() for f in seg.split("+")) for seg in text.split(",") if seg.strip())


# The BabyLM 2023 filtered (Super)GLUE tasks, with the BabyLM pipeline's inputs and metrics.
BUILTIN_TASKS: dict[str, TaskSpec] = {
    s.name: s
    for s in (
        _spec("rte", "sentence1,sentence2"),
        _spec("mrpc", "sentence1,sentence2", metrics=("f1", "accuracy")),
        _spec("wsc", "span2_text+text,span1_text", joiner=": "),
        _spec("boolq", "question,passage"),
        _spec("multirc", "paragraph,question+answer"),
        _spec("mnli", "premise,hypothesis", num_classes=3),
        _spec("qqp", "question1,question2", metrics=("f1", "accuracy")),
        _spec("cola", "sentence", metrics=("mcc", "accuracy")),
        _spec("sst2", "sentence"),
        _spec("qnli", "question,sentence"),
    )
}


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in str(text or "").split(",") if x.strip())


def spec_from_config(ft: Mapping[str, Any], task: str | None = None) -> TaskSpec:
    """The task of a `finetune` config section.

    A built-in task name gives its built-in description; any field set in the config
    (`text_fields`, `label_field`, `num_classes`, `metrics`, `label_names`, `joiner`) overrides it,
    and a name that is not built in needs at least `text_fields`.
    """
    name = task or ft["task"]
    base = BUILTIN_TASKS.get(name)
    text = ft.get("text_fields") or ""
    if base is None and not text:
        raise ConfigError(
            f"unknown task '{name}'. Built-in tasks: {', '.join(BUILTIN_TASKS)}; for another task set "
            "finetune.text_fields (e.g. 'sentence1,sentence2'), finetune.label_field and finetune.num_classes."
        )
    kwargs: dict[str, Any] = {}
    if text:
        kwargs["text_fields"] = parse_text_fields(text)
    if ft.get("label_field"):
        kwargs["label_field"] = ft["label_field"]
    if ft.get("num_classes"):
        kwargs["num_classes"] = int(ft["num_classes"])
    if ft.get("metrics"):
        kwargs["metrics"] = _csv(ft["metrics"])
    if ft.get("label_names"):
        kwargs["label_names"] = _csv(ft["label_names"])
    if ft.get("joiner"):
        kwargs["joiner"] = ft["joiner"]
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


def task_path(data_dir: str | Path, task: str, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return Path(data_dir) / f"{task}.{split}.jsonl"


def load_split(spec: TaskSpec, data_dir: str | Path, split: str, *, max_examples: int = 0) -> TaskData:
    """Reads and checks `<data_dir>/<task>.<split>.jsonl` (stops after `max_examples` if > 0).

    DataError when the file is missing, a line is not a JSON object, a field the task needs is
    absent (the message lists the fields the line has) or a label is not a class.
    """
    path = task_path(data_dir, spec.name, split)
    if not Path(data_dir).is_dir():
        raise DataError(f"fine-tuning data folder {data_dir} does not exist; set finetune.data_dir.")
    if not path.exists():
        present = sorted(p.name for p in Path(data_dir).glob(f"{spec.name}.*.jsonl"))
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
    return {"name": spec.name, "text_fields": [list(s) for s in spec.text_fields], "label_field": spec.label_field,
            "num_classes": spec.num_classes, "metrics": list(spec.metrics), "label_names": list(spec.label_names),
            "joiner": spec.joiner}


def available_tasks(data_dir: str | Path) -> list[str]:
    """Tasks with both splits present in `data_dir`."""
    d = Path(data_dir)
    return sorted(p.name[: -len(".train.jsonl")] for p in d.glob("*.train.jsonl")
                  if (d / p.name.replace(".train.", ".valid.")).exists())

