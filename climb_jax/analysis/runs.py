"""Reading finished runs from their workdirs, tolerant of missing or partial results.

A workdir holds `config.json`, `metrics.jsonl`, `eval/*.json` (one JSON per evaluation) and
`finetune/<task>.json`. A run interrupted before its first evaluation, or evaluated on only one
suite, still loads: every section that is absent is simply `None`/empty and the report leaves its
cell blank, so a comparison of a half-finished sweep is possible.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from climb_jax.errors import DataError

log = logging.getLogger(__name__)

# Keys tried, in order, for the single number of a perplexity section.
_PERPLEXITY_KEYS = ("pseudo_perplexity", "perplexity", "ppl", "value", "dev", "mean")
# Numbers in a perplexity section that are counts, not perplexities.
_COUNT_KEYS = ("sequences", "tokens", "n", "count", "num_sequences", "num_tokens", "step")


@dataclass
class Suite:
    """One zero-shot suite's result: overall, per file (paradigm) and per field accuracy."""

    overall: float | None
    per_file: dict[str, float] = field(default_factory=dict)
    per_field: dict[str, float] = field(default_factory=dict)
    pairs: np.ndarray | None = None  # flat per-pair correctness, files in sorted order
    pair_weights: np.ndarray | None = None  # per pair: 1 / (files x pairs in its file); None = uniform
    method: str | None = None

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> "Suite":
        """`overall` is BabyLM's BLiMP average, the mean over files: `macro_accuracy` when written, else
        the mean of `per_file`, else `overall`/`accuracy` (a suite without per-file results)."""
        per_file = _float_map(doc.get("per_file"))
        per_field = _fields(doc.get("per_field"))
        overall = _number(doc.get("macro_accuracy"))
        if overall is None and per_file:
            overall = float(np.mean(list(per_file.values())))
        for key in ("overall", "accuracy"):
            if overall is None:
                overall = _number(doc.get(key))
        pairs, weights = _flat_pairs(doc.get("pairs"))
        return cls(overall=overall, per_file=per_file, per_field=per_field, pairs=pairs, pair_weights=weights,
                   method=doc.get("method"))


@dataclass
class EvalPoint:
    """Everything evaluated at one checkpoint step (several eval files of the same step merged)."""

    step: int
    blimp: Suite | None = None
    supplement: Suite | None = None
    perplexity: float | None = None


@dataclass
class Run:
    """One training run (one seed of one configuration)."""

    workdir: Path
    label: str
    seed: int
    config: dict
    metrics: list[dict]
    evals: list[EvalPoint]
    finetune: dict[str, dict]

    @property
    def total_steps(self) -> int | None:
        total = (self.config.get("trainer") or {}).get("total_steps")
        return int(total) if isinstance(total, int) and not isinstance(total, bool) else None

    @property
    def last_step(self) -> int | None:
        """The last step the run logged or evaluated (None: nothing yet)."""
        steps = [r["step"] for r in self.metrics if isinstance(r.get("step"), int)] + [p.step for p in self.evals]
        return max(steps) if steps else None

    @property
    def finished(self) -> bool:
        """Trained to its `trainer.total_steps` (True when the config does not say how far it goes)."""
        total = self.total_steps
        return total is None or (self.last_step is not None and self.last_step >= total)

    def latest(self, section: str):
        """The value of `section` ('blimp', 'supplement', 'perplexity') at the last step that has it."""
        for point in reversed(self.evals):
            value = getattr(point, section)
            if value is not None:
                return value
        return None


def _number(x) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, (int, float)) and math.isfinite(float(x)):
        return float(x)
    if isinstance(x, Mapping):  # {"accuracy": 0.7, ...} or {"mean": ...}
        for key in ("accuracy", "acc", "mean", "value"):
            if key in x:
                return _number(x[key])
    return None


def _float_map(x) -> dict[str, float]:
    if not isinstance(x, Mapping):
        return {}
    out = {}
    for k, v in x.items():
        num = _number(v)
        if num is not None:
            out[str(k)] = num
    return out


def field_name(name: str) -> str:
    """One spelling per BLiMP field: the data itself writes both `syntax/semantics` (one paradigm) and
    `syntax_semantics` (the others) for the same field."""
    return str(name).replace("/", "_").replace("-", "_")


def _fields(x) -> dict[str, float]:
    """Per-field accuracies with the spellings of one field merged, weighted by their pair counts."""
    if not isinstance(x, Mapping):
        return {}
    sums: dict[str, list[float]] = {}
    for k, v in x.items():
        acc = _number(v)
        if acc is None:
            continue
        n = v.get("num_pairs") if isinstance(v, Mapping) else None
        n = float(n) if isinstance(n, (int, float)) and not isinstance(n, bool) and n > 0 else 1.0
        total = sums.setdefault(field_name(k), [0.0, 0.0])
        total[0] += acc * n
        total[1] += n
    return {k: s / n for k, (s, n) in sums.items()}


def _flat_pairs(x) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-pair correctness as one float vector, and the weights that make its weighted mean the mean
    over files: a list (uniform weights, None), or {file: list} flattened in sorted file order."""
    if x is None:
        return None, None
    try:
        if isinstance(x, Mapping):
            files = [np.asarray(x[k], dtype=np.float64).reshape(-1) for k in sorted(x)]
            files = [f for f in files if f.size]
            if not files:
                return None, None
            weights = np.concatenate([np.full(f.size, 1.0 / (len(files) * f.size)) for f in files])
            return np.concatenate(files), weights
        arr = np.asarray(x, dtype=np.float64).reshape(-1)
        return (arr, None) if arr.size else (None, None)
    except (TypeError, ValueError):
        log.warning("ignoring unreadable per-pair results")
        return None, None


def _perplexity(x) -> float | None:
    if isinstance(x, Mapping):
        for key in _PERPLEXITY_KEYS:
            if key in x and _number(x[key]) is not None:
                return _number(x[key])
        for key, value in x.items():
            if key not in _COUNT_KEYS and isinstance(value, float) and math.isfinite(value):
                return value
        return None
    return _number(x)


def _suite_kind(doc: Mapping[str, Any]) -> str | None:
    """For a single-suite eval file ({"suite": name, "overall", "per_file", ...}, as `climb_jax.evaluate
    --suite` writes): the report section it fills, or None for a suite the report has no column for."""
    name = str(doc.get("suite") or doc.get("name") or "").lower()
    if "supplement" in name:
        return "supplement"
    if "blimp" in name or name in ("", "embedded"):
        return "blimp"
    return None


def parse_eval(doc: Mapping[str, Any]) -> EvalPoint | None:
    """One eval JSON: the full shape {"step", "blimp", "supplement", "perplexity"} or a single
    suite's {"step", "suite", "overall", "per_file", ...}. None when it has no step."""
    step = doc.get("step")
    if not isinstance(step, int):
        return None
    point = EvalPoint(step=step)
    if isinstance(doc.get("blimp"), Mapping):
        point.blimp = Suite.parse(doc["blimp"])
    if isinstance(doc.get("supplement"), Mapping):
        point.supplement = Suite.parse(doc["supplement"])
    if "perplexity" in doc:
        point.perplexity = _perplexity(doc["perplexity"])
    if point.blimp is None and point.supplement is None and any(k in doc for k in ("overall", "per_file", "accuracy")):
        kind = _suite_kind(doc)
        if kind is not None:
            setattr(point, kind, Suite.parse(doc))
    return point


def _merge(points: Iterable[EvalPoint]) -> list[EvalPoint]:
    """One point per step; the first file that has a section keeps it (training-time files come first)."""
    by_step: dict[int, EvalPoint] = {}
    for p in points:
        merged = by_step.setdefault(p.step, EvalPoint(step=p.step))
        for section in ("blimp", "supplement", "perplexity"):
            if getattr(p, section) is not None and getattr(merged, section) is None:
                setattr(merged, section, getattr(p, section))
    return [by_step[s] for s in sorted(by_step)]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not readable JSON ({e}); delete or repair it and run again.") from None


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl records; a torn last line (a run killed mid-write) is skipped with a warning."""
    if not path.exists():
        return []
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s line %d is not JSON; skipped", path, i)
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def run_label(config: Mapping[str, Any], workdir: Path) -> str:
    """The run's name in reports: config `label`, else `name`, else the workdir's name."""
    return str(config.get("label") or config.get("name") or workdir.name)


def load_run(workdir: str | Path) -> Run:
    """Reads one workdir; raises DataError when it has no config.json."""
    wd = Path(workdir)
    cfg_path = wd / "config.json"
    if not cfg_path.exists():
        raise DataError(f"{wd} has no config.json: is it a training run's workdir?")
    config = _read_json(cfg_path)
    if not isinstance(config, dict):
        raise DataError(f"{cfg_path} does not hold a JSON object.")
    points = []
    # The training loop's own evaluations (step_*.json) first: they win over later on-demand ones.
    for path in sorted((wd / "eval").glob("*.json"), key=lambda p: (not p.name.startswith("step_"), p.name)):
        doc = _read_json(path)
        point = parse_eval(doc) if isinstance(doc, Mapping) else None
        if point is None:
            log.warning("%s has no integer 'step'; skipped", path)
        else:
            points.append(point)
    finetune = {}
    for path in sorted((wd / "finetune").glob("*.json")):
        doc = _read_json(path)
        if isinstance(doc, Mapping):
            finetune[str(doc.get("task") or path.stem)] = dict(doc)
    seed = config.get("seed", 0)
    return Run(workdir=wd, label=run_label(config, wd), seed=int(seed) if isinstance(seed, int) else 0,
               config=config, metrics=read_metrics(wd / "metrics.jsonl"), evals=_merge(points),
               finetune=finetune)


def _export_folder(folder: Path) -> bool:
    """A Hugging Face checkpoint (`climb_jax.export`'s output): its config.json is a transformers config."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and ("model_type" in config or "architectures" in config)


def find_workdirs(paths: Iterable[str | Path], max_depth: int = 3) -> list[Path]:
    """The run workdirs named, or found below a named folder (a sweep's output), in sorted order.

    Fine-tuning-only workdirs (config mode "finetune") and Hugging Face exports (`climb_jax.export`
    writes a config.json too) are not training runs: skipped below a folder, refused when named.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise DataError(f"run directory {p} does not exist.")
        if (p / "config.json").exists():
            if _export_folder(p):
                raise DataError(f"{p} is a Hugging Face export (climb_jax.export), not a training run: pass the "
                                "run's workdir (the folder with metrics.jsonl and checkpoints/).")
            found.append(p)
            continue
        runs_at = lambda depth: sorted(c.parent for c in p.glob("/".join(["*"] * depth) + "/config.json")
                                       if not _export_folder(c.parent))
        below, depth = runs_at(1), 1
        while not below and depth < max_depth:
            depth += 1
            below = runs_at(depth)
        if not below:
            raise DataError(f"{p} holds no config.json (nor do its sub-folders): pass training workdirs.")
        found.extend(below)
    out = []
    for wd in dict.fromkeys(found):
        try:
            mode = json.loads((wd / "config.json").read_text()).get("mode", "pretrain")
        except (OSError, json.JSONDecodeError, AttributeError):
            mode = "pretrain"
        if mode != "finetune":
            out.append(wd)
    return out


UNFINISHED = " (unfinished)"


def group_runs(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """Runs by label, seeds sorted; labels in first-seen order. A label's runs that have not reached their
    `trainer.total_steps` form a group of their own, `<label> (unfinished)`: averaging a half-trained
    seed with finished ones would report neither."""
    runs = list(runs)
    finished_labels = {run.label for run in runs if run.finished}
    groups: dict[str, list[Run]] = {}
    for run in runs:
        label = run.label if run.finished or run.label not in finished_labels else run.label + UNFINISHED
        groups.setdefault(label, []).append(run)
    for members in groups.values():
        members.sort(key=lambda r: r.seed)
    return groups
