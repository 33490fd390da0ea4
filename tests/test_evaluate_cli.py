"""The evaluate command line: result file, delegation of --tasks, and errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from climb_jax import evaluate
from climb_jax.config_lib import base_config
from tests.test_blimp import tiny_model, tiny_tokenizer, write_suite

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def fake_run(shared_data, tmp_path, monkeypatch):
    """A run directory whose checkpoint loader returns a tiny random model."""
    import climb_jax.train.checkpoint as checkpoint

    tok = tiny_tokenizer(shared_data)
    cfg, params = tiny_model(len(tok))
    config = base_config()
    config.eval.batch_size = 16
    workdir = tmp_path / "run"
    workdir.mkdir()
    calls = []

    def load_run(wd, step=None):
        calls.append((wd, step))
        return types.SimpleNamespace(config=config, params=params, step=step or 300, model_config=cfg,
                                     tokenizer=tok, workdir=str(wd))

    monkeypatch.setattr(checkpoint, "load_run", load_run)
    return workdir, calls, config


def test_suite_result_file(fake_run, tmp_path, capsys):
    workdir, calls, run_config = fake_run
    suite = write_suite(tmp_path / "mini", {
        "agr": [{"sentence_good": "The dogs run.", "sentence_bad": "The dogs runs."},
                {"sentence_good": "A cat sleeps.", "sentence_bad": "A cat sleep."}],
        "dialog": [{"sentence_good": "A: Did you go?\nB: Yes, I did.", "sentence_bad": "A: Did she go?\nB: Yes, I did."}],
    })
    rc = evaluate.main([f"--workdir={workdir}", f"--suite={suite}", "--method=pll_word_l2r", "--step=200"])
    assert rc == 0 and calls == [(str(workdir), 200)]
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert path == str(workdir / "eval" / "mini_pll_word_l2r_step_000200.json")
    result = json.loads(open(path).read())
    assert result["step"] == 200 and result["method"] == "pll_word_l2r" and result["num_pairs"] == 3
    assert result["suite_path"] == str(suite.resolve())
    assert set(result["per_file"]) == {"agr", "dialog"}
    assert 0.0 <= result["overall"] <= 1.0
    # Defaults come from the run's config: its eval.blimp_dir and eval.method.
    run_config.eval.blimp_dir = str(suite)
    rc = evaluate.main([f"--workdir={workdir}", "--max_pairs_per_file=1"])
    assert rc == 0
    result = json.loads((workdir / "eval" / "mini_pll_step_000300.json").read_text())
    assert result["num_pairs"] == 2 and result["num_files"] == 2


def test_tasks_are_delegated(fake_run, monkeypatch, capsys):
    workdir, calls, _ = fake_run
    seen = {}

    def evaluate_tasks(wd, tasks, *, data_dir=None, **overrides):
        seen.update(workdir=wd, tasks=tasks, data_dir=data_dir, **overrides)
        return workdir / "finetune"

    monkeypatch.setitem(sys.modules, "climb_jax.eval.finetune", types.SimpleNamespace(evaluate_tasks=evaluate_tasks))
    assert evaluate.main([f"--workdir={workdir}", "--tasks=rte, mrpc", "--step=20"]) == 0
    assert seen == {"workdir": str(workdir), "tasks": ["rte", "mrpc"], "data_dir": None, "step": 20}
    assert calls == []  # no zero-shot suite asked for: the checkpoint is not loaded here
    assert capsys.readouterr().out.strip() == str(workdir / "finetune")


def test_user_errors_exit_2(fake_run, tmp_path, capsys):
    workdir, _, _ = fake_run
    assert evaluate.main([f"--workdir={workdir}", f"--suite={tmp_path / 'missing'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert evaluate.main([f"--workdir={tmp_path / 'norun'}", "--suite=embedded"]) == 2
    assert "--workdir" in capsys.readouterr().err
    assert evaluate.main([f"--workdir={workdir}", "--suite=embedded", "--max_pairs_per_file=-1"]) == 2
    with pytest.raises(SystemExit) as e:
        evaluate.main([f"--workdir={workdir}", "--method=ppl"])
    assert e.value.code == 2


def test_no_checkpoint_subprocess(tmp_path):
    """A directory that is not a run: one line on stderr, status 2, no traceback."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "climb_jax.evaluate", f"--workdir={tmp_path / 'empty'}",
                           "--suite=embedded"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "error:" in proc.stderr
    assert "config.json" in proc.stderr or "checkpoint" in proc.stderr
