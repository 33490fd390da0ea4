"""The comparison's figures (matplotlib, Agg backend, PNG).

* `learning_curves.png`: the training loss of every run on one figure, one colour per configuration
  and one line style per seed.
* `blimp_over_steps.png`: BLiMP overall accuracy at each evaluated checkpoint (not drawn when every run
  was evaluated at one step only: the report says so instead).
* `paradigm_diff_<label>.png`: per-paradigm accuracy difference to the baseline, sorted.
* `pacing_curves.png`: the curricula the runs followed: the pacing function of the vocabulary and
  data curricula and the active windows of the objective units.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from climb_jax.analysis.runs import Run

log = logging.getLogger(__name__)

_STYLES = ("-", "--", ":", "-.")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def safe_name(label: str) -> str:
    """A label as a file-name part: `vocab_cl:pos_tags-log` -> `vocab_cl_pos_tags-log`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "run"


def loss_key(records: Sequence[Mapping[str, Any]]) -> str | None:
    """The training-loss field of metrics.jsonl: `loss`, else the first numeric key naming a loss."""
    keys: list[str] = []
    for rec in records:
        for k, v in rec.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in keys:
                keys.append(k)
    if "loss" in keys:
        return "loss"
    for candidate in ("train/loss", "train_loss", "mlm_loss", "train/mlm_loss"):
        if candidate in keys:
            return candidate
    return next((k for k in keys if "loss" in k and "eval" not in k), None)


def learning_curves(groups: Mapping[str, list[Run]], path: Path) -> bool:
    plt = _plt()
    colors = _colors(list(groups))
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = False
    for label, runs in groups.items():
        for i, run in enumerate(runs):
            key = loss_key(run.metrics)
            pts = [(r["step"], r[key]) for r in run.metrics
                   if key and isinstance(r.get("step"), (int, float)) and isinstance(r.get(key), (int, float))]
            if not pts:
                continue
            steps, values = zip(*sorted(pts))
            ax.plot(steps, values, _STYLES[i % len(_STYLES)], color=colors[label], lw=1.2,
                    label=label if i == 0 else None)
            drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set(xlabel="step", ylabel="training loss", title="Learning curves (line style = seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def blimp_over_steps(groups: Mapping[str, list[Run]], path: Path) -> bool | str:
    """True when drawn; False without any BLiMP result; the reason when a curve would be a single point."""
    counts = [sum(p.blimp is not None and p.blimp.overall is not None for p in run.evals)
              for runs in groups.values() for run in runs]
    if not any(counts):
        return False
    if max(counts) < 2:
        return ("not drawn: every run was evaluated at one step only (set trainer.eval_every to evaluate "
                "during training)")
    plt = _plt()
    colors = _colors(list(groups))
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = False
    for label, runs in groups.items():
        for i, run in enumerate(runs):
            pts = [(p.step, p.blimp.overall) for p in run.evals if p.blimp is not None and p.blimp.overall is not None]
            if not pts:
                continue
            steps, values = zip(*pts)
            ax.plot(steps, 100 * np.asarray(values), _STYLES[i % len(_STYLES)], marker="o", ms=3,
                    color=colors[label], label=label if i == 0 else None)
            drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set(xlabel="step", ylabel="BLiMP accuracy (%)", title="BLiMP over training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def paradigm_diff(label: str, baseline: str, diffs: Mapping[str, float], path: Path) -> bool:
    """Horizontal bars, sorted, green where the curriculum is better."""
    if not diffs:
        return False
    plt = _plt()
    items = sorted(diffs.items(), key=lambda kv: kv[1])
    names = [k for k, _ in items]
    values = 100 * np.array([v for _, v in items])
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.18 * len(items) + 1.2)))
    ax.barh(np.arange(len(items)), values, color=np.where(values >= 0, "tab:green", "tab:red"))
    ax.set_yticks(np.arange(len(items)), names, fontsize=6 if len(items) > 30 else 8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set(xlabel=f"accuracy difference to {baseline} (points)", title=f"{label} − {baseline}, per paradigm")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------------------
# Pacing curves.


def _pace_fn():
    """`pace(params, step, total)` and `PacingParams` from the curriculum package."""
    from climb_jax.curriculum import pacing

    return pacing


def _cfg(section: Mapping[str, Any]):
    from ml_collections import ConfigDict

    return ConfigDict(dict(section))


def _pacing_values(pacing_cfg: Mapping[str, Any], steps: np.ndarray, total: int) -> np.ndarray | None:
    try:
        pacing = _pace_fn()
        params = pacing.PacingParams.from_config(_cfg(pacing_cfg))
    except Exception as e:  # noqa: BLE001 — a plot must not fail the report
        log.warning("cannot draw pacing %s: %s", dict(pacing_cfg), e)
        return None
    try:
        values = np.asarray(pacing.pace(params, steps, total), dtype=np.float64)
        if values.shape == steps.shape:
            return values
    except Exception:  # noqa: BLE001 — fall back to one step at a time
        pass
    try:
        return np.array([float(pacing.pace(params, int(s), total)) for s in steps])
    except Exception as e:  # noqa: BLE001
        log.warning("cannot evaluate pacing %s: %s", dict(pacing_cfg), e)
        return None


def _curriculum_curves(config: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    """`climb_jax.curriculum.plot.curriculum_curves` of a full run config; None when it cannot be used
    (an older or partial config.json), and the pacing functions are drawn from their parameters."""
    try:
        from climb_jax.curriculum.plot import curriculum_curves

        return dict(curriculum_curves(_cfg(config)))
    except Exception as e:  # noqa: BLE001 — fall back to drawing the pacing functions here
        log.debug("curriculum_curves unavailable for this config: %s", e)
        return None


def curricula(config: Mapping[str, Any]) -> dict[str, Any]:
    """The curricula a run config switches on: {"vocabulary": pacing, "data": pacing, "units": {...}}."""
    out: dict[str, Any] = {}
    vocab = config.get("vocab_curriculum") or {}
    if vocab.get("kind", "none") != "none" and isinstance(vocab.get("pacing"), Mapping):
        out["vocabulary"] = vocab["pacing"]
    data = config.get("data_curriculum") or {}
    if data.get("scorer", "none") != "none" and isinstance(data.get("pacing"), Mapping):
        out["data"] = data["pacing"]
    units = ((config.get("objective_curriculum") or {}).get("units") or {})
    if isinstance(units, Mapping) and (len(units) > 1 or any(
            isinstance(u, Mapping) and (u.get("task") != "mlm" or u.get("start", 0) > 0 or u.get("end", 1) < 1)
            for u in units.values())):
        out["units"] = {name: u for name, u in units.items() if isinstance(u, Mapping)}
    return out


def _applied_paces(ax, config: Mapping[str, Any], run: Run) -> bool:
    """An adaptive run's paces as its log recorded them (curriculum.source=adaptive decides them as the
    run goes), drawn over the schedule the paper's pacing would have followed."""
    if (config.get("curriculum") or {}).get("source") != "adaptive":
        return False
    drawn = False
    for key, style in (("vocab_pace", "-"), ("data_pace", "--")):
        points = [(r["step"], r[key]) for r in run.metrics if key in r and isinstance(r.get("step"), int)]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, style, color="black", lw=1.4,
                    label=f"{key.split('_')[0]} pace applied (adaptive, seed {run.seed})")
            drawn = True
    return drawn


def pacing_curves(groups: Mapping[str, list[Run]], path: Path) -> bool:
    """One panel per configuration with a curriculum: pacing curves and objective-unit windows."""
    plans = {label: curricula(runs[0].config) for label, runs in groups.items()}
    plans = {k: v for k, v in plans.items() if v}
    if not plans:
        return False
    plt = _plt()
    n = len(plans)
    cols = min(3, n)
    rows = -(-n // cols)
    # At least 6.5 inches wide, so the title fits above a single panel.
    fig, axes = plt.subplots(rows, cols, figsize=(max(4.5 * cols, 6.5), 3.2 * rows + 0.4), squeeze=False)
    drawn = False
    for ax, (label, plan) in zip(axes.flat, plans.items()):
        config = groups[label][0].config
        total = int(((config.get("trainer") or {}).get("total_steps")) or 1)
        curves = _curriculum_curves(config)
        if curves is not None:  # the curriculum package's own curves (pace and allowed vocabulary)
            steps = curves.pop("step")
            for name, values in curves.items():
                ax.plot(steps, values, "--" if name.startswith("allowed") else "-", label=name)
                drawn = True
        else:
            steps = np.linspace(0, total, 201).round().astype(np.int64)
            for kind, style in (("vocabulary", "-"), ("data", "--")):
                if kind in plan:
                    values = _pacing_values(plan[kind], steps, total)
                    if values is not None:
                        ax.plot(steps, values, style, label=f"{kind} pace ({plan[kind].get('name', '?')})")
                        drawn = True
        drawn |= _applied_paces(ax, config, groups[label][0])
        units = plan.get("units") or {}
        for i, (name, unit) in enumerate(sorted(units.items())):
            start, end = float(unit.get("start", 0.0)), float(unit.get("end", 1.0))
            y = -0.08 - 0.08 * i
            ax.plot([start * total, min(end, 1.0) * total], [y, y], lw=4, solid_capstyle="butt",
                    label=f"unit {name}")
            drawn = True
        ax.set_title(label, fontsize=9)
        ax.set(xlabel="step", ylabel="fraction available", xlim=(0, total),
               ylim=(-0.12 - 0.08 * len(units), 1.05))
        ax.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if not drawn:
        plt.close(fig)
        return False
    fig.suptitle("Curricula: pacing functions; bars = objective units' active windows", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def draw_all(groups: Mapping[str, list[Run]], report, out: Path,
             skipped: dict[str, str] | None = None) -> dict[str, Path]:
    """Every plot that has data; returns {name: path}. A plot that fails is logged, not fatal; a plot left
    out on purpose puts its reason in `skipped`."""
    out = Path(out)
    jobs = [
        ("learning_curves", lambda p: learning_curves(groups, p)),
        ("blimp_over_steps", lambda p: blimp_over_steps(groups, p)),
        ("pacing_curves", lambda p: pacing_curves(groups, p)),
    ]
    for label, diffs in (report.paradigm_diffs or {}).items():
        jobs.append((f"paradigm_diff_{safe_name(label)}",
                     lambda p, label=label, diffs=diffs: paradigm_diff(label, report.baseline, diffs, p)))
    written = {}
    for name, draw in jobs:
        path = out / f"{name}.png"
        try:
            result = draw(path)
            if isinstance(result, str):
                if skipped is not None:
                    skipped[name] = result
            elif result:
                written[name] = path
        except Exception as e:  # noqa: BLE001 — the tables matter more than any one figure
            log.warning("plot %s failed: %s", name, e)
    return written
