"""The headline workflow end to end on CPU: a smoke sweep (vanilla and two curricula, two seeds each)
through the real CLI, then `climb_jax.compare` writes the report table and its plots."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from launch import sweep
from tests.conftest import REPO

TINY = [
    "--config.model.num_layers=2", "--config.model.hidden_size=64", "--config.model.num_heads=4",
    "--config.model.intermediate_size=128", "--config.data.vocab_size=600", "--config.data.seq_len=32",
    "--config.data.max_train_words=30000", "--config.data.max_eval_words=3000",
    "--config.trainer.total_steps=20", "--config.trainer.warmup_steps=5", "--config.trainer.log_every=5",
    "--config.trainer.checkpoint_every=10", "--config.eval.max_pairs_per_file=2",
    "--config.eval.perplexity_sequences=2",
]


@pytest.mark.slow
def test_smoke_sweep_produces_the_report(tmp_path):
    overrides = TINY + ["--config.data.corpus=embedded", f"--config.data.cache_dir={tmp_path / 'cache'}"]
    runs = sweep.grid(["vanilla", "vocab_cl:pos_tags", "data_cl:ngram"], seeds=(0, 1), smoke=True,
                      root=str(tmp_path / "runs"), overrides=overrides)
    assert len(runs) == 6
    env = dict(os.environ, PYTHONPATH=str(REPO))
    results = sweep.run_all(runs, python=sys.executable, cwd=REPO, env=env, log_dir=tmp_path / "logs")
    failed = [r.run.name for r in results if not r.ok]
    assert not failed, (failed, [(tmp_path / "logs" / f"{n}.log").read_text()[-2000:] for n in failed])

    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "climb_jax.compare", str(tmp_path / "runs"), f"--out={out}",
                           "--n_boot=200", "--n_perm=200"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0].startswith("| Run | Seeds | BLiMP |")  # the summary, on the terminal
    table = (out / "report.md").read_text()
    print(table)
    # The BLiMP data spells one field two ways (syntax/semantics, syntax_semantics): one column.
    assert "| syntax_semantics |" in table and "syntax/semantics" not in table
    for label in ("vanilla", "vocab_cl:pos_tags", "data_cl:ngram"):
        assert label in table
    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r.get("label") or r.get("run") for r in rows} >= {"vanilla", "vocab_cl:pos_tags", "data_cl:ngram"}
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "learning_curves.png" in pngs and "pacing_curves.png" in pngs
    # Evaluated at the end only: one point per run, so no curve over steps; the report says why.
    assert "blimp_over_steps.png" not in pngs and "evaluated at one step only" in table
    assert any(p.startswith("paradigm_diff_") for p in pngs)
    assert all((out / p).stat().st_size > 1000 for p in pngs)
