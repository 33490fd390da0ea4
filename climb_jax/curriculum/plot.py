"""A picture of a run's curricula before it starts: pacing curves and the allowed vocabulary over training.

`plot_curricula(config, out_png)` draws, against the training step, the pacing value of the vocabulary
and data curricula that the config switches on, the share of the vocabulary the vocabulary curriculum
allows, and (when the objective curriculum has more than one unit) each objective unit's active window.
It reads only the config: no data or model is needed, so it runs in a second before training.
"""

from __future__ import annotations

import os

import numpy as np
from etils import epath
from ml_collections import ConfigDict

from climb_jax.config import schema
from climb_jax.curriculum import pacing as pacing_lib
from climb_jax.curriculum import vocabulary

_POINTS = 801


def _steps(total: int) -> np.ndarray:
    return np.unique(np.linspace(0, total, min(_POINTS, total + 1)).round().astype(np.int64))


def curriculum_curves(config: ConfigDict, vocab_size: int | None = None, parsed=None) -> dict[str, np.ndarray]:
    """The curves `plot_curricula` draws, by label (plus 'step'), for tests and reports. `parsed` is
    `schema.validate(config)` (computed here when not given)."""
    parsed = parsed or schema.validate(config)
    total = parsed.total_steps
    steps = _steps(total)
    curves: dict[str, np.ndarray] = {"step": steps}
    vc, dc = config.vocab_curriculum, config.data_curriculum
    if parsed.vocab_pacing is not None:
        p = parsed.vocab_pacing
        pace = np.asarray(pacing_lib.pace(p, steps, total), np.float64)
        v = int(vocab_size or config.data.vocab_size)
        curves[f"vocabulary pace ({vc.kind}, {p.name})"] = pace
        if vc.kind != "word_list":  # a word list's share depends on the tokenizer: the run logs it
            curves["allowed vocabulary fraction"] = np.asarray(vocabulary.allowed_vocab_fraction(vc.kind, pace, v))
    if parsed.data_pacing is not None:
        p = parsed.data_pacing
        curves[f"data pace ({dc.scorer}, {p.name})"] = np.asarray(pacing_lib.pace(p, steps, total), np.float64)
    return curves


def _unit_windows(config: ConfigDict) -> list[tuple[str, float, float]]:
    units = config.objective_curriculum.units
    return [(name, float(u.start), float(u.end)) for name, u in units.items()]


def plot_curricula(config: ConfigDict, out_png: str | os.PathLike, vocab_size: int | None = None,
                   parsed=None) -> epath.Path:
    """Draws the config's curricula over training steps to `out_png` (matplotlib, Agg canvas); returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = curriculum_curves(config, vocab_size, parsed)
    steps = curves.pop("step")
    windows = _unit_windows(config)
    with_units = len(windows) > 1
    # The object API with the Agg canvas: no global pyplot state, safe beside a training thread.
    fig = Figure(figsize=(8, 6.5 if with_units else 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 if with_units else 1, 1, squeeze=False, sharex=True,
                        gridspec_kw={"height_ratios": [3, 1]} if with_units else None)
    ax = axes[0, 0]
    if curves:
        for label, values in curves.items():
            style = "--" if label.startswith("allowed") else "-"
            ax.plot(steps, values, style, label=label, linewidth=1.8)
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no vocabulary or data curriculum", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(-0.02, 1.05)
    ax.set_ylabel("difficulty / fraction")
    ax.grid(alpha=0.3)
    ax.set_title(f"curricula of {config.get('label') or config.name}")
    if with_units:
        ux = axes[1, 0]
        total = int(config.trainer.total_steps)
        for i, (name, start, end) in enumerate(windows):
            ux.barh(i, (end - start) * total, left=start * total, height=0.6)
        ux.set_yticks(range(len(windows)), [n for n, _, _ in windows], fontsize=8)
        ux.set_ylabel("objective units")
        ux.grid(alpha=0.3, axis="x")
    axes[-1, 0].set_xlabel("training step")
    fig.tight_layout()
    out = epath.Path(out_png)  # a gs:// workdir too
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        fig.savefig(f, format="png", dpi=110)
    return out
