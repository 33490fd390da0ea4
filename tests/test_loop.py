"""The training loop's own decisions: which checkpoint the final evaluation scores, the stop signals,
and the plain progress lines written when stdout is not a terminal."""

from __future__ import annotations

import os
import signal

import jax
import pytest

from climb_jax.eval.evaluator import Evaluator
from climb_jax.train import report
from climb_jax.train.selection import best_step, explain
from climb_jax.train.signals import StopSignals
from tests.helpers import params_equal, tiny_config, train


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("data_cache")


def test_best_step_is_the_lowest_mean_and_the_earliest_on_a_tie():
    history = [{"step": s, "mean": m} for s, m in [(5, 9.0), (10, 4.0), (15, 6.0), (20, 4.0), (25, 4.5)]]
    assert best_step(history) == 10
    assert best_step(history[:1]) == 5
    assert best_step([]) is None


def test_a_last_checkpoint_choice_needs_no_explanation():
    history = [{"step": s, "mean": m} for s, m in [(5, 9.0), (10, 4.0)]]
    assert explain({"select": "best_dev_perplexity", "checkpoint_step": 10, "history": history}) is None
    assert explain({"select": "last", "checkpoint_step": 10, "history": []}) is None
    assert explain(None) is None
    assert explain({"select": "best_dev_perplexity", "checkpoint_step": 5, "history": history}).startswith(
        "the final evaluation scored the checkpoint of step 5, not the last (step 10): its dev pseudo-perplexity 9.0")


def test_final_evaluation_scores_the_checkpoint_with_the_lowest_dev_perplexity(cache, tmp_path, monkeypatch, capsys):
    # A stubbed metric sequence at the eight selection points (every 5 steps of 40): the lowest is at 15.
    means = {5: 9.0, 10: 7.0, 15: 4.0, 20: 6.0, 25: 5.0, 30: 8.0, 35: 4.0, 40: 5.0}
    order = iter(sorted(means))
    measured, scored = {}, {}

    def dev_perplexity(self, params):
        step = next(order)
        measured[step] = jax.device_get(params)
        return {"mean": means[step], "std": 0.5, "sequences": 16}

    def evaluate(self, params, step, extra=None):
        scored.update(step=step, params=jax.device_get(params), extra=extra)
        return {"step": step, **(extra or {})}

    monkeypatch.setattr(Evaluator, "dev_perplexity", dev_perplexity)
    monkeypatch.setattr(Evaluator, "evaluate", evaluate)
    c = tiny_config(cache, trainer=dict(keep_checkpoints=1), eval=dict(at_end=True, select="best_dev_perplexity"))
    result = train(c, tmp_path / "run")
    assert result["stop_reason"] == "done" and result["best_step"] == 15
    assert sorted(measured) == sorted(means)
    # The final evaluation ran on the parameters of step 15, not on the last ones.
    assert scored["step"] == 40 and params_equal(scored["params"], measured[15])
    assert not params_equal(scored["params"], result["state"].params)
    selection = result["eval"]["selection"]
    assert selection["select"] == "best_dev_perplexity" and selection["checkpoint_step"] == 15
    assert [(h["step"], h["mean"], h["sequences"]) for h in selection["history"]] == [
        (s, means[s], 16) for s in sorted(means)]
    # The rotation kept one regular checkpoint; the best one lives apart and was not deleted.
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts == ["40"]
    assert [p.name for p in (tmp_path / "run" / "best_checkpoint").iterdir()] == ["best_15"]
    # The run says which checkpoint was scored and why, at the end and on a rerun of the finished run.
    why = ("the final evaluation scored the checkpoint of step 15, not the last (step 40): its dev pseudo-perplexity "
           "4.0 was the lowest of 8 measurements (step 40: 5.0); eval.select=last scores the last checkpoint instead")
    assert why in capsys.readouterr().out.splitlines()
    assert report.complete(tmp_path / "run", 40, "m.jsonl", [], result["eval"], "e.json").endswith(f"; {why}")


def test_stop_signals_record_the_first_reason_and_restore_the_handlers():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with StopSignals() as outer:
        with outer:  # the command line's installation, entered again by the run: still one installation
            os.kill(os.getpid(), signal.SIGTERM)
            assert outer.reason == "preempted"
        assert signal.getsignal(signal.SIGTERM) == outer._handle  # the inner exit kept the handlers
        os.kill(os.getpid(), signal.SIGTERM)
        assert outer.reason == "preempted"
    assert {sig: signal.getsignal(sig) for sig in before} == before
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.reason == "interrupted"
        assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL  # a second Ctrl-C ends the process at once
    assert signal.getsignal(signal.SIGINT) == before[signal.SIGINT]


def test_progress_writes_one_plain_line_per_log_step_off_a_terminal(capsys):
    progress = report.Progress(enabled=True, total=400)
    progress.start(0)  # stdout is captured: not a terminal, so no bar
    progress.computed(100)
    progress.log({"step": 100, "loss": 5.25, "tokens_per_s": 1234.4, "step_time_s": 36.0})
    progress.close()
    assert capsys.readouterr().out == "step 100/400: loss 5.2500, 1234 tokens/s, ETA 3h00m\n"
