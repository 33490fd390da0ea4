"""The comparison's numbers as data: a configuration's cells, its row, a difference to the baseline, and
the whole report. `report.summarize` computes them; `render` formats them; neither needs the other's
code, so both import these from here."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from climb_jax.analysis import stats


@dataclass
class Cell:
    """A configuration's value of one metric: mean and std over its seeds (None = not measured)."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> "Cell":
        vals = [v for v in values if v is not None and math.isfinite(v)]
        if not vals:
            return cls(None, None, 0)
        return cls(float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals))


@dataclass
class Row:
    label: str
    seeds: list[int]
    workdirs: list[str]
    blimp: Cell
    blimp_fields: dict[str, Cell]
    supplement: Cell
    finetune: dict[str, Cell]  # task -> primary metric
    finetune_avg: Cell  # mean of the primary metrics over all tasks (runs that have every task)
    perplexity: Cell
    steps: list[int]  # the checkpoint step each seed's final evaluation used


@dataclass
class DiffEntry:
    label: str
    metric: str  # "blimp", "supplement", "finetune:<task>", "finetune_avg", "perplexity"
    items: str  # "pairs", "paradigms", "examples", "seeds"
    result: stats.Difference


@dataclass
class Report:
    baseline: str | None
    alpha: float
    rows: list[Row]
    fields: list[str]
    tasks: dict[str, str]  # task -> primary metric name
    diffs: list[DiffEntry]
    paradigm_diffs: dict[str, dict[str, float]]  # label -> paradigm -> mean diff to baseline
    notes: list[str] = field(default_factory=list)
    # Runs found but not compared: {"workdir", "label", "seed", "why"} (unfinished runs, by default)
    left_out: list[dict] = field(default_factory=list)

    def diff(self, label: str, metric: str) -> DiffEntry | None:
        for d in self.diffs:
            if d.label == label and d.metric == metric:
                return d
        return None

