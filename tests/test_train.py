"""End-to-end training: the loss falls, a resumed run equals an uninterrupted one bit for bit, one
compile of the step, checkpoints fall back past a corrupt one, and a diverging run stops cleanly."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from climb_jax.errors import TrainingDiverged
from climb_jax.train.checkpoint import load_run
from climb_jax.train.loop import Trainer
from tests.helpers import params_equal, read_metrics, tiny_config


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("data_cache")


def test_smoke_train_loss_falls_and_compiles_once(shared_data, nltk_data, cache, tmp_path):
    c = tiny_config(shared_data, cache, trainer=dict(total_steps=60, lr=2e-3, log_every=10))
    trainer = Trainer(c, str(tmp_path / "run"), progress=False)
    result = trainer.run()
    assert result["train_step_compiles"] == 1
    m = read_metrics(tmp_path / "run")
    assert [r["step"] for r in m] == [10, 20, 30, 40, 50, 60]
    assert m[-1]["loss"] < m[0]["loss"] - 0.5, (m[0]["loss"], m[-1]["loss"])
    for key in ("loss", "learning_rate", "tokens_seen", "mlm_loss", "mlm_accuracy", "grad_norm"):
        assert key in m[0]
    assert m[-1]["tokens_seen"] == 60 * 16 * 32
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert written["trainer"]["total_steps"] == 60
    assert sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()) == [20, 40, 60]


def test_exact_resume_bit_for_bit(shared_data, nltk_data, cache, tmp_path):
    c = tiny_config(shared_data, cache)
    straight = Trainer(c, str(tmp_path / "a"), progress=False)
    straight.run()
    first = Trainer(c, str(tmp_path / "b"), progress=False, stop_at=20)
    assert first.run()["stopped"]
    second = Trainer(c, str(tmp_path / "b"), progress=False)
    second.run()
    assert params_equal(straight.final_state.params, second.final_state.params)
    assert params_equal(straight.final_state.opt_state, second.final_state.opt_state)
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")


def test_corrupt_latest_checkpoint_falls_back(shared_data, nltk_data, cache, tmp_path, capsys):
    c = tiny_config(shared_data, cache)
    Trainer(c, str(tmp_path / "run"), progress=False).run()
    good = load_run(str(tmp_path / "run"), step=20)
    latest = tmp_path / "run" / "checkpoints" / "40"
    files = [p for p in latest.rglob("*") if p.is_file() and p.stat().st_size > 0 and "state" in str(p)]
    assert files
    for p in files:  # truncate every data file of the latest checkpoint's state
        p.write_bytes(p.read_bytes()[: max(1, p.stat().st_size // 3)])
    run = load_run(str(tmp_path / "run"))
    assert run.step == 20
    assert params_equal(run.params, good.params)
    assert "unreadable" in capsys.readouterr().out
    assert latest.exists()  # nothing deleted


def test_nan_loss_stops_and_keeps_last_good_checkpoint(shared_data, nltk_data, cache, tmp_path):
    c = tiny_config(shared_data, cache, trainer=dict(lr=1e6, max_grad_norm=0.0, total_steps=40, warmup_steps=0,
                                                      checkpoint_every=5, log_every=5))
    with pytest.raises(TrainingDiverged, match="by step|at step"):
        Trainer(c, str(tmp_path / "run"), progress=False).run()
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    if steps:  # every checkpoint that was written holds finite parameters
        run = load_run(str(tmp_path / "run"))
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(run.params))
