"""The evaluate command line: result files (named per suite and pair limit, never overwritten), the
pair limit shared with the run, delegation of --tasks with its limits, and errors without tracebacks.
Runs on the package's embedded samples only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from climb_jax import evaluate
from climb_jax.config.schema import base_config
from tests.test_blimp import tiny_tokenizer, write_suite
from tests.test_evaluator import sample_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    """A run directory whose checkpoint loader returns a tiny random model."""
    import climb_jax.train.checkpoint as checkpoint

    tok = tiny_tokenizer()
    cfg, params = sample_model()
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
    # Defaults come from the run's config: its eval.blimp_dir, eval.method and eval.max_pairs_per_file.
    run_config.eval.blimp_dir = str(suite)
    run_config.eval.max_pairs_per_file = 1
    rc = evaluate.main([f"--workdir={workdir}", "--noprogress"])
    assert rc == 0
    result = json.loads((workdir / "eval" / "mini_first1_pll_step_000300.json").read_text())
    assert result["num_pairs"] == 2 and result["num_files"] == 2 and result["max_pairs_per_file"] == 1
    assert "over 2 pairs (first 1 pairs per file)" in capsys.readouterr().err


def test_rerun_and_same_named_suites(fake_run, tmp_path, capsys):
    workdir, _, _ = fake_run
    pairs = [{"sentence_good": "The dogs run.", "sentence_bad": "The dogs runs."}]
    first = write_suite(tmp_path / "a" / "suite", {"agr": pairs})
    second = write_suite(tmp_path / "b" / "suite", {"agr": pairs * 2})
    args = [f"--workdir={workdir}", "--step=5", "--max_pairs_per_file=0"]
    assert evaluate.main(args + [f"--suite={first}"]) == 0
    path_a = capsys.readouterr().out.strip().splitlines()[-1]
    written = open(path_a).read()
    # The same suite, method, limit and step again: the finished file is reported, not rescored or replaced.
    assert evaluate.main(args + [f"--suite={first}"]) == 0
    out = capsys.readouterr()
    assert out.out.strip().splitlines()[-1] == path_a and "already evaluated" in out.err
    assert open(path_a).read() == written
    # Another folder named `suite`: its own file; neither result is mixed into the other.
    assert evaluate.main(args + [f"--suite={second}"]) == 0
    path_b = capsys.readouterr().out.strip().splitlines()[-1]
    assert path_b != path_a and os.path.basename(path_b).startswith("suite-")
    assert json.loads(open(path_a).read())["num_pairs"] == 1 and json.loads(open(path_b).read())["num_pairs"] == 2
    assert evaluate.main(args + [f"--suite={second}"]) == 0 and capsys.readouterr().out.strip().endswith(path_b)
    assert not [p for p in os.listdir(workdir / "eval") if ".tmp" in p]
    assert sorted(os.listdir(workdir / "eval")) == sorted([os.path.basename(path_a), os.path.basename(path_b)])


def test_progress_lines_when_not_a_terminal(fake_run, capsys):
    workdir, _, _ = fake_run
    assert evaluate.main([f"--workdir={workdir}", "--suite=embedded", "--max_pairs_per_file=1", "--batch_size=64"]) == 0
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if " batches (" in l]
    assert len(lines) == 10 and lines[-1].startswith("embedded (") and "(100%" in lines[-1] and "\r" not in err


def test_tasks_are_delegated(fake_run, monkeypatch, capsys):
    workdir, calls, _ = fake_run
    seen = {}

    def evaluate_tasks(wd, tasks, *, data_dir=None, **overrides):
        seen.update(workdir=wd, tasks=tasks, data_dir=data_dir, **overrides)
        return workdir / "finetune"

    monkeypatch.setitem(sys.modules, "climb_jax.eval.finetune", types.SimpleNamespace(evaluate_tasks=evaluate_tasks))
    assert evaluate.main([f"--workdir={workdir}", "--tasks=rte, mrpc", "--step=20"]) == 0
    assert seen == {"workdir": str(workdir), "tasks": ["rte", "mrpc"], "data_dir": None, "step": 20,
                    "data_dir_flag": "--tasks_dir"}
    assert calls == []  # no zero-shot suite asked for: the checkpoint is not loaded here
    assert capsys.readouterr().out.strip() == str(workdir / "finetune")
    # The fine-tuning limits go through to the fine-tuning config.
    seen.clear()
    assert evaluate.main([f"--workdir={workdir}", "--tasks=rte", "--tasks_dir=/data", "--max_train_examples=50",
                          "--max_valid_examples=20", "--epochs=2", "--seeds=12,13"]) == 0
    assert seen == {"workdir": str(workdir), "tasks": ["rte"], "data_dir": "/data", "max_train_examples": 50,
                    "max_valid_examples": 20, "epochs": 2, "seeds": [12, 13], "data_dir_flag": "--tasks_dir"}
    assert evaluate.main([f"--workdir={workdir}", "--tasks=rte", "--seeds=a"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert evaluate.main([f"--workdir={workdir}", "--epochs=2"]) == 2  # a fine-tuning limit without --tasks
    assert "--tasks" in capsys.readouterr().err


def test_missing_task_data_names_the_flag(fake_run, tmp_path, capsys):
    """The fine-tuning code's error about its data folder names this command's --tasks_dir."""
    workdir, _, _ = fake_run
    (workdir / "config.json").write_text("{}")  # the run names no fine-tuning data either
    assert evaluate.main([f"--workdir={workdir}", "--tasks=rte"]) == 2
    err = capsys.readouterr().err
    assert "--tasks_dir=" in err and "--config.finetune" not in err and "Traceback" not in err
    assert evaluate.main([f"--workdir={workdir}", "--tasks=rte", f"--tasks_dir={tmp_path / 'none'}"]) == 2
    assert "--tasks_dir=" in capsys.readouterr().err


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
