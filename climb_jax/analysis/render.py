"""How a comparison reads: the Markdown report, its headline table for the terminal, the flat CSV
records and the JSON form. Pure formatting of `results.Report`; what is compared, and how, is decided
in `report.summarize`."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from climb_jax.analysis.results import Cell, DiffEntry, Report


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return ""
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def _num(x: float | None, signed: bool = False) -> str:
    if x is None:
        return ""
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _cell(c: Cell, fmt=_pct) -> str:
    if c.mean is None:
        return "–"
    return fmt(c.mean) if c.n < 2 else f"{fmt(c.mean)} ± {fmt(c.std)}"


def _diff_text(d: DiffEntry | None, scale_pct: bool = True) -> str:
    if d is None:
        return ""
    r = d.result
    f = (lambda v: _pct(v, signed=True)) if scale_pct else (lambda v: _num(v, signed=True))
    p = "p=n/a" if not math.isfinite(r.p_value) else f"p={r.p_value:.3g}"
    flag = "" if r.significant else " n.s."
    return f"{f(r.diff)} [{f(r.ci_low)}, {f(r.ci_high)}] {p}{flag}"


def _task_header(task: str, metric: str) -> str:
    return f"{task} ({'acc' if metric == 'accuracy' else metric.upper()})"


def render_markdown(rep: Report) -> str:
    lines = ["# Curriculum comparison", ""]
    base = rep.baseline
    lines.append(
        "Scores are percentages (perplexity raw, lower is better), mean ± standard deviation over seeds. "
        + (f"Δ is the difference to `{base}` with a {100 * (1 - rep.alpha):.0f}% bootstrap confidence interval "
           f"(items and seeds resampled) and a paired permutation p-value; **n.s.** marks a difference that "
           f"is not significant at α={rep.alpha}." if base else "")
    )
    lines.append("")
    for note in rep.notes:
        lines += [f"> {note}", ""]

    supp = any(row.supplement.mean is not None for row in rep.rows)  # the column only when measured
    header = ["Run", "Seeds", "BLiMP"] + (["Δ BLiMP"] if base else []) + (["Supplement"] if supp else []) + \
             (["Δ Supplement"] if base and supp else []) + [_task_header(t, m) for t, m in rep.tasks.items()] + \
             (["(Super)GLUE avg"] if len(rep.tasks) > 1 else []) + ["Perplexity ↓"]
    lines += ["## Summary", "", _md_row(header), _md_row(["---"] * len(header))]
    for row in rep.rows:
        cells = [f"`{row.label}`", seeds_text(row.seeds), _cell(row.blimp)]
        if base:
            cells.append("(baseline)" if row.label == base else _diff_text(rep.diff(row.label, "blimp")))
        if supp:
            cells.append(_cell(row.supplement))
            if base:
                cells.append("(baseline)" if row.label == base else _diff_text(rep.diff(row.label, "supplement")))
        cells += [_cell(row.finetune[t]) for t in rep.tasks]
        if len(rep.tasks) > 1:
            cells.append(_cell(row.finetune_avg))
        cells.append(_cell(row.perplexity, _num))
        lines.append(_md_row(cells))
    lines.append("")

    if rep.fields:
        header = ["Run"] + rep.fields
        lines += ["## BLiMP per field", "", _md_row(header), _md_row(["---"] * len(header))]
        for row in rep.rows:
            lines.append(_md_row([f"`{row.label}`"] + [_cell(row.blimp_fields[f]) for f in rep.fields]))
        lines.append("")

    if base and rep.diffs:
        header = ["Run", "Metric", "Items", "Δ", f"{100 * (1 - rep.alpha):.0f}% CI", "p", "Test", "Significant"]
        lines += [f"## Differences to `{base}`", "", _md_row(header), _md_row(["---"] * len(header))]
        for d in rep.diffs:
            r = d.result
            pct = d.metric != "perplexity"
            f = (lambda v: _pct(v, signed=True)) if pct else (lambda v: _num(v, signed=True))
            n_items = f"{r.n_items} {d.items}" if d.items != "seeds" else "seeds"
            p = "n/a" if not math.isfinite(r.p_value) else f"{r.p_value:.3g}"
            lines.append(_md_row([f"`{d.label}`", d.metric, n_items, f(r.diff), f"[{f(r.ci_low)}, {f(r.ci_high)}]",
                                  p, r.test, "yes" if r.significant else "n.s."]))
        lines.append("")
        lines.append("Seeds: "
                     "with one score per seed (no matched items) the permutation test exchanges runs between the "
                     "groups; two seeds per group cannot reach p < 0.05. No correction for multiple comparisons "
                     "is applied.")
        lines.append("")
    return "\n".join(lines)


def seeds_text(seeds: Sequence[int]) -> str:
    """`seed 3`, `seeds 0, 1`: the seeds themselves, which a bare `0` would read as a count of."""
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def headline(markdown: str) -> str:
    """The report's summary table (its first table), for the terminal."""
    lines = markdown.splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith("## Summary")), None)
    if start is None:
        return ""
    table = [l for l in lines[start + 1:] if l.strip()]
    end = next((i for i, l in enumerate(table) if not l.startswith("|")), len(table))
    return "\n".join(table[:end])


def _md_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def csv_rows(rep: Report) -> tuple[list[str], list[dict[str, Any]]]:
    """One flat record per configuration (fractions, not percentages)."""
    records = []
    for row in rep.rows:
        rec: dict[str, Any] = {"label": row.label, "n_seeds": len(row.seeds),
                               "seeds": ";".join(map(str, row.seeds)),
                               "steps": ";".join(map(str, row.steps))}

        def put(name: str, c: Cell) -> None:
            rec[f"{name}_mean"] = c.mean
            rec[f"{name}_std"] = c.std

        put("blimp", row.blimp)
        for f in rep.fields:
            put(f"blimp_{f}", row.blimp_fields[f])
        put("supplement", row.supplement)
        for t, m in rep.tasks.items():
            put(f"finetune_{t}_{m}", row.finetune[t])
        if len(rep.tasks) > 1:
            put("finetune_avg", row.finetune_avg)
        put("perplexity", row.perplexity)
        for d in rep.diffs:
            if d.label != row.label:
                continue
            key = d.metric.replace(":", "_")
            r = d.result
            rec.update({f"diff_{key}": r.diff, f"diff_{key}_ci_low": r.ci_low, f"diff_{key}_ci_high": r.ci_high,
                        f"diff_{key}_p": r.p_value, f"diff_{key}_significant": r.significant,
                        f"diff_{key}_items": d.items})
        records.append(rec)
    columns: list[str] = []
    for rec in records:
        for k in rec:
            if k not in columns:
                columns.append(k)
    return columns, records


def to_json(rep: Report) -> dict:
    cell = lambda c: {"mean": c.mean, "std": c.std, "n": c.n}
    return {
        "baseline": rep.baseline,
        "alpha": rep.alpha,
        "notes": rep.notes,
        "left_out": rep.left_out,
        "rows": [{"label": r.label, "seeds": r.seeds, "workdirs": r.workdirs, "steps": r.steps,
                  "blimp": cell(r.blimp), "blimp_fields": {k: cell(v) for k, v in r.blimp_fields.items()},
                  "supplement": cell(r.supplement), "finetune": {k: cell(v) for k, v in r.finetune.items()},
                  "finetune_avg": cell(r.finetune_avg),
                  "perplexity": cell(r.perplexity)} for r in rep.rows],
        "tasks": rep.tasks,
        "differences": [{"label": d.label, "metric": d.metric, "items": d.items, **d.result.to_dict()}
                        for d in rep.diffs],
        "paradigm_differences": rep.paradigm_diffs,
    }
