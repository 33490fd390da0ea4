"""End-to-end training: the loss falls, a resumed run equals an uninterrupted one bit for bit, one
compile of the step, checkpoints fall back past a corrupt one, and a diverging run stops cleanly."""

from __future__ import annotations

import gc
import json
import sys

import jax
import numpy as np
import pytest

from climb_jax.errors import TrainingDiverged
from climb_jax.train.checkpoint import load_run
from tests.helpers import params_equal, read_metrics, tiny_config, train


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("data_cache")


def test_smoke_train_loss_falls_and_compiles_once(cache, tmp_path):
    c = tiny_config(cache, trainer=dict(total_steps=60, lr=2e-3, log_every=10))
    result = train(c, tmp_path / "run")
    assert result["train_step_compiles"] == 1
    assert result["step"] == 60 and result["stop_reason"] == "done"
    m = read_metrics(tmp_path / "run")
    assert [r["step"] for r in m] == [10, 20, 30, 40, 50, 60]
    assert m[-1]["loss"] < m[0]["loss"] - 0.5, (m[0]["loss"], m[-1]["loss"])
    for key in ("loss", "learning_rate", "tokens_seen", "mlm_loss", "mlm_accuracy", "grad_norm"):
        assert key in m[0]
    assert m[-1]["tokens_seen"] == 60 * 16 * 32
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert written["trainer"]["total_steps"] == 60
    assert sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()) == [20, 40, 60]


def test_exact_resume_bit_for_bit(cache, tmp_path):
    c = tiny_config(cache)
    straight = train(c, tmp_path / "a")
    first = train(c, tmp_path / "b", stop_at=20)
    assert first["stop_reason"] == "stop_at" and first["step"] == 20
    assert not (tmp_path / "b" / "done.json").exists()  # what launch/watch.py waits for: not yet
    second = train(c, tmp_path / "b")
    assert second["step"] == 40 and second["stop_reason"] == "done"
    assert json.loads((tmp_path / "b" / "done.json").read_text()) == {"step": 40, "eval": None}
    assert params_equal(straight["state"], second["state"])  # every leaf: step, parameters, optimizer, key
    assert not params_equal(first["state"].params, second["state"].params)
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")


def test_corrupt_latest_checkpoint_falls_back(cache, tmp_path, capsys):
    c = tiny_config(cache)
    train(c, tmp_path / "run")
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


def test_nan_loss_stops_and_keeps_last_good_checkpoint(cache, tmp_path):
    c = tiny_config(cache, trainer=dict(lr=1e6, max_grad_norm=0.0, total_steps=40, warmup_steps=0,
                                        checkpoint_every=5, log_every=5))
    with pytest.raises(TrainingDiverged, match="by step|at step"):
        train(c, tmp_path / "run")
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    if steps:  # every checkpoint that was written holds finite parameters
        run = load_run(str(tmp_path / "run"))
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(run.params))


def test_a_checkpoint_that_does_not_fit_is_refused_without_reading_it(tmp_path, monkeypatch):
    """A checkpoint of another vocabulary size: refused from its metadata, before any array is read (a read
    that fails part-way abandons orbax's other reads, which print tracebacks when garbage-collected)."""
    from climb_jax.errors import CheckpointError
    from climb_jax.train.checkpoint import Checkpointer
    from climb_jax.train.setup import RunSetup

    c = tiny_config(tmp_path / "cache")
    ckpt = Checkpointer(tmp_path / "checkpoints", async_save=False)
    ckpt.save(20, RunSetup.from_config(c, vocab_size=640).init_state(0), {"step": 20})
    ckpt.close()
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(repr(u.exc_value)))
    reader = Checkpointer(tmp_path / "checkpoints", async_save=False)
    abstract = RunSetup.from_config(c, vocab_size=600).abstract_state(jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    with pytest.raises(CheckpointError, match="its vocabulary has 640 tokens but the tokenizer of this run has 600"):
        reader.restore_latest(abstract)
    reader.close()
    gc.collect()
    assert seen == []
