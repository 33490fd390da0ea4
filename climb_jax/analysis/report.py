"""The "curriculum vs vanilla" report: one table per benchmark, differences with their uncertainty.

Shaped like the CLIMB paper's tables: one row per configuration (seeds averaged, with their standard
deviation), columns for BLiMP overall and per field, the BLiMP supplement, each fine-tuning task and
perplexity; then every configuration's difference to the baseline with a bootstrap confidence
interval and a permutation p-value, marked "n.s." where the difference is not significant. The
tests pair matched items (BLiMP pairs when every run stored them, else paradigms; fine-tuning
validation examples) and resample seeds, as `climb_jax.analysis.stats` describes.

Outputs: `report.md`, `report.csv` (one row per configuration, raw fractions, every difference
flattened into columns), `report.json` (the same, structured) and the plots of `plots.py`.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from climb_jax.analysis import arms, stats
from climb_jax.analysis.render import csv_rows, render_markdown, to_json
from climb_jax.analysis.results import Cell, DiffEntry, Report, Row
from climb_jax.analysis.runs import Run, Suite, find_workdirs, group_runs, load_run
from climb_jax.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_BASELINE = "vanilla"


# ------------------------------------------------------------------------------------------------
# Per-run values.


def _suite_overall(run: Run, section: str) -> float | None:
    suite = run.latest(section)
    return suite.overall if suite is not None else None


def _finetune_primary(result: dict) -> tuple[str, float | None]:
    metric = str(result.get("primary_metric") or "accuracy")
    mean = result.get("mean") or {}
    value = mean.get(metric) if isinstance(mean, dict) else None
    if value is None and isinstance(result.get("metrics"), dict):
        value = result["metrics"].get(metric)
    return metric, float(value) if isinstance(value, (int, float)) else None


def _finetune_items(result: dict) -> np.ndarray | None:
    """Per validation example correctness, averaged over the fine-tuning seeds (None if absent)."""
    rows = [s.get("correct") for s in result.get("per_seed", []) if isinstance(s, dict)]
    rows = [r for r in rows if isinstance(r, list) and r]
    if not rows or len({len(r) for r in rows}) != 1:
        return None
    return np.asarray(rows, dtype=np.float64).mean(axis=0)


# ------------------------------------------------------------------------------------------------
# Item matrices for the difference tests.


def _suite_items(runs_a: list[Run], runs_b: list[Run], section: str) -> tuple[np.ndarray, np.ndarray, str] | None:
    suites_a = [run.latest(section) for run in runs_a]
    suites_b = [run.latest(section) for run in runs_b]
    if any(s is None for s in suites_a + suites_b):
        return None
    everyone = suites_a + suites_b
    pairs = [s.pairs for s in everyone]
    if all(p is not None for p in pairs) and len({p.size for p in pairs}) == 1:
        weights = everyone[0].pair_weights
        same = all((s.pair_weights is None) == (weights is None)
                   and (weights is None or np.allclose(s.pair_weights, weights)) for s in everyone)
        if not same:
            weights = None  # runs disagree on the files: fall back to a plain mean over pairs
        return (np.stack([s.pairs for s in suites_a]), np.stack([s.pairs for s in suites_b]), "pairs", weights)
    common = set.intersection(*(set(s.per_file) for s in suites_a + suites_b))
    if len(common) > 1:  # one common file is just one number per seed: compare seeds below
        names = sorted(common)
        mat = lambda suites: np.array([[s.per_file[n] for n in names] for s in suites])
        return mat(suites_a), mat(suites_b), "paradigms", None
    overall = [s.overall for s in suites_a + suites_b]
    if all(v is not None for v in overall):
        return (np.array([[s.overall] for s in suites_a]), np.array([[s.overall] for s in suites_b]), "seeds", None)
    return None


def _scalar_items(a: list[float | None], b: list[float | None]):
    a = [v for v in a if v is not None]
    b = [v for v in b if v is not None]
    if not a or not b:
        return None
    return np.array(a)[:, None], np.array(b)[:, None], "seeds", None


def _finetune_avg(run: Run, tasks: Sequence[str]) -> float | None:
    """Mean primary metric over `tasks` (BabyLM's (Super)GLUE average); None unless the run has them all."""
    values = [_finetune_primary(run.finetune[t])[1] if t in run.finetune else None for t in tasks]
    return float(np.mean(values)) if len(values) > 1 and all(v is not None for v in values) else None


def _finetune_matrices(runs_a: list[Run], runs_b: list[Run], task: str):
    res_a = [r.finetune.get(task) for r in runs_a]
    res_b = [r.finetune.get(task) for r in runs_b]
    res_a, res_b = [x for x in res_a if x], [x for x in res_b if x]
    if not res_a or not res_b:
        return None
    metric = _finetune_primary(res_a[0])[0]
    if metric == "accuracy":
        items = [_finetune_items(x) for x in res_a + res_b]
        if all(i is not None for i in items) and len({i.size for i in items}) == 1:
            return np.stack(items[:len(res_a)]), np.stack(items[len(res_a):]), "examples", None
    return _scalar_items([_finetune_primary(x)[1] for x in res_a], [_finetune_primary(x)[1] for x in res_b])


# ------------------------------------------------------------------------------------------------


def summarize(groups: dict[str, list[Run]], baseline: str | None = DEFAULT_BASELINE, *,
              alpha: float = 0.05, n_boot: int = 2000, n_perm: int = 10_000, seed: int = 0,
              left_out: Sequence[dict] = (), notes: Sequence[str] = ()) -> Report:
    """Builds the report's numbers from runs grouped by label (`runs.group_runs`); `left_out` (the runs
    found but not compared, `arms.left_out_unfinished`) and `notes` are listed in the report."""
    notes = list(notes) + [f"Left out `{r['label']}` seed {r['seed']} ({r['workdir']}): {r['why']}; "
                           "--include_unfinished compares it as an arm of its own." for r in left_out]
    for label, runs in groups.items():
        unfinished = [r for r in runs if not r.finished]
        if unfinished:
            where = ", ".join(f"seed {r.seed} at step {r.last_step if r.last_step is not None else 0} of "
                              f"{r.total_steps}" for r in unfinished)
            notes.append(f"`{label}` has not finished training ({where}): its numbers are those of its last "
                         "evaluation.")
    if baseline is not None and baseline not in groups:
        notes.append(f"No run is labelled '{baseline}': differences to a baseline are not computed.")
        baseline = None
    methods = sorted({s.method for runs in groups.values() for r in runs
                      for s in [r.latest("blimp")] if s is not None and s.method})
    if len(methods) > 1:
        notes.append(f"BLiMP was scored with different methods across runs ({', '.join(methods)}): "
                     "differences mix scoring methods.")
    fields = sorted({f for runs in groups.values() for r in runs
                     for f in ((r.latest("blimp") or Suite(None)).per_field)})
    tasks: dict[str, str] = {}
    for runs in groups.values():
        for r in runs:
            for task, result in sorted(r.finetune.items()):
                tasks.setdefault(task, _finetune_primary(result)[0])

    # The baseline first, then every other configuration by label (the CLIMB paper's order).
    groups = dict(sorted(groups.items(), key=lambda kv: (kv[0] != baseline, kv[0])))
    rows = []
    for label, runs in groups.items():
        blimps = [r.latest("blimp") for r in runs]
        rows.append(Row(
            label=label,
            seeds=[r.seed for r in runs],
            workdirs=[str(r.workdir) for r in runs],
            blimp=Cell.of([b.overall if b else None for b in blimps]),
            blimp_fields={f: Cell.of([b.per_field.get(f) if b else None for b in blimps]) for f in fields},
            supplement=Cell.of([_suite_overall(r, "supplement") for r in runs]),
            finetune={t: Cell.of([_finetune_primary(r.finetune[t])[1] if t in r.finetune else None for r in runs])
                      for t in tasks},
            finetune_avg=Cell.of([_finetune_avg(r, list(tasks)) for r in runs]),
            perplexity=Cell.of([r.latest("perplexity") for r in runs]),
            steps=[max((p.step for p in r.evals), default=-1) for r in runs],
        ))

    diffs: list[DiffEntry] = []
    paradigm_diffs: dict[str, dict[str, float]] = {}
    if baseline is not None:
        base = groups[baseline]
        for label, runs in groups.items():
            if label == baseline:
                continue
            candidates: list[tuple[str, Callable[[], Any]]] = [
                ("blimp", lambda: _suite_items(runs, base, "blimp")),
                ("supplement", lambda: _suite_items(runs, base, "supplement")),
                *[(f"finetune:{t}", lambda t=t: _finetune_matrices(runs, base, t)) for t in tasks],
                ("finetune_avg", lambda: _scalar_items([_finetune_avg(r, list(tasks)) for r in runs],
                                                       [_finetune_avg(r, list(tasks)) for r in base])),
                ("perplexity", lambda: _scalar_items([r.latest("perplexity") for r in runs],
                                                     [r.latest("perplexity") for r in base])),
            ]
            for metric, get in candidates:
                got = get()
                if got is None:
                    continue
                a, b, items, weights = got
                result = stats.compare(a, b, weights=weights, n_boot=n_boot, n_perm=n_perm, alpha=alpha, seed=seed)
                diffs.append(DiffEntry(label, metric, items, result))
            para = _paradigm_diff(runs, base)
            if para:
                paradigm_diffs[label] = para
    return Report(baseline=baseline, alpha=alpha, rows=rows, fields=fields, tasks=tasks, diffs=diffs,
                  paradigm_diffs=paradigm_diffs, notes=notes, left_out=list(left_out))


def _paradigm_diff(runs: list[Run], base: list[Run]) -> dict[str, float]:
    """Per paradigm: mean over seeds of the run's accuracy minus the baseline's."""
    suites = [r.latest("blimp") for r in runs]
    base_suites = [r.latest("blimp") for r in base]
    suites = [s for s in suites if s is not None and s.per_file]
    base_suites = [s for s in base_suites if s is not None and s.per_file]
    if not suites or not base_suites:
        return {}
    common = set.intersection(*(set(s.per_file) for s in suites + base_suites))
    return {p: float(np.mean([s.per_file[p] for s in suites]) - np.mean([s.per_file[p] for s in base_suites]))
            for p in sorted(common)}


def write_report(rep: Report, groups: dict[str, list[Run]], out_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
    """Writes report.md, report.csv, report.json and (optionally) the PNG plots; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "csv": out / "report.csv", "json": out / "report.json"}
    md = render_markdown(rep)
    if plots:
        from climb_jax.analysis import plots as plots_mod  # matplotlib only when drawing

        skipped: dict[str, str] = {}
        drawn = plots_mod.draw_all(groups, rep, out, skipped)
        paths.update(drawn)
        if drawn or skipped:
            md += "\n## Plots\n\n" + "\n".join(
                [f"![{name}]({p.name})" for name, p in drawn.items()]
                + [f"`{name}.png`: {why}." for name, why in skipped.items()]) + "\n"
    paths["markdown"].write_text(md)
    columns, records = csv_rows(rep)
    with paths["csv"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for rec in records:
            writer.writerow({k: ("" if v is None else v) for k, v in rec.items()})
    paths["json"].write_text(json.dumps(to_json(rep), indent=2))
    return paths


def build_report(run_dirs: Sequence[str | Path], out_dir: str | Path, *, baseline: str | None = DEFAULT_BASELINE,
                 require_baseline: bool = False, alpha: float = 0.05, n_boot: int = 2000,
                 n_perm: int = 10_000, seed: int = 0, plots: bool = True, include_unfinished: bool = False,
                 allow_mixed: bool = False) -> dict[str, Path]:
    """Reads the runs, checks that each label's runs are seeds of one configuration (`arms`), computes
    the comparison and writes it to `out_dir`."""
    workdirs = find_workdirs(run_dirs)
    if not workdirs:
        raise DataError("no training runs found in " + ", ".join(map(str, run_dirs)) + ".")
    kept, left_out = arms.left_out_unfinished([load_run(wd) for wd in workdirs], include_unfinished)
    if not kept:
        first = left_out[0]
        raise DataError(f"none of the {len(left_out)} runs found has finished training ({first['workdir']}: "
                        f"{first['why']}); pass --include_unfinished to compare them as they are.")
    groups = group_runs(kept)
    notes = arms.check(groups, allow_mixed=allow_mixed)
    if baseline is not None and baseline not in groups and require_baseline:
        raise DataError(f"baseline '{baseline}' is not among the run labels: {', '.join(groups)}. "
                        "Pass --baseline=<one of them>.")
    rep = summarize(groups, baseline, alpha=alpha, n_boot=n_boot, n_perm=n_perm, seed=seed, left_out=left_out,
                    notes=notes)
    return write_report(rep, groups, out_dir, plots=plots)
