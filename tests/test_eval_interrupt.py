"""A stop signal during an evaluation: the run stops between two batches, saves, and the resumed run
measures again, ending with exactly the numbers of an uninterrupted run; and the cost estimate every
run prints, broken down by stage.

One configuration holds every kind of evaluation a run makes: dev perplexity for checkpoint
selection at every eighth of training, self-perplexity re-scoring at step 20 (no regular checkpoint
there: the stop must save one) and BLiMP at the end. The signal is delivered in process: the run's
`StopSignals` handler is called from a batch callback (`Progress.update`), as the OS would call it.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import signal

import pytest

from climb_jax.eval import progress as progress_lib
from climb_jax.train.signals import StopSignals
from tests.helpers import checkpoint_meta, params_equal, read_metrics, tiny_config, train

TOTAL = 40


def config(cache):
    return tiny_config(cache, "data_cl", "smoke,self_perplexity",
                       trainer=dict(total_steps=TOTAL, checkpoint_every=TOTAL, log_every=5),
                       eval=dict(at_end=True, batch_size=16, max_pairs_per_file=2),
                       data_curriculum=dict(update_every=20, rescore_batch_size=16))


def final_eval(workdir) -> dict:
    result = json.loads((workdir / "eval" / f"step_{TOTAL:06d}.json").read_text())
    result.pop("seconds")
    result["blimp"].pop("seconds")
    return result


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("interrupt_cache")


@pytest.fixture(scope="module")
def baseline(cache, tmp_path_factory):
    """The uninterrupted run, and what it printed."""
    workdir = tmp_path_factory.mktemp("baseline")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = train(config(cache), workdir)
    assert result["stop_reason"] == "done"
    return workdir, result, out.getvalue()


class SignalDuring:
    """Sends SIGTERM (through the run's own handler) at batch `at` of the `nth` measure whose progress
    description starts with `what`; records how far that measure had got."""

    def __init__(self, monkeypatch, what: str, nth: int = 1, at: int = 2):
        self.signals, self.seen, self.stopped_at = StopSignals(), 0, None
        original = progress_lib.Progress.update
        hook = self

        def update(bar, n=1):
            if bar.desc.startswith(what) and hook.stopped_at is None:
                if bar.done == 0:
                    hook.seen += 1
                if hook.seen == nth and bar.done + n >= at:
                    hook.stopped_at = (bar.done + n, bar.total)
                    hook.signals._handle(signal.SIGTERM, None)
            return original(bar, n)

        monkeypatch.setattr(progress_lib.Progress, "update", update)


@pytest.mark.parametrize("what, nth, step", [
    ("dev perplexity", 3, 15),  # the third selection point: after the first eighths, mid-run
    ("self-perplexity", 1, 20),  # the re-scoring at update_every
    ("embedded", 1, TOTAL),  # BLiMP of the final evaluation
])
def test_a_signal_during_an_evaluation_stops_it_saves_and_the_resume_equals_an_uninterrupted_run(
        cache, baseline, tmp_path, monkeypatch, what, nth, step):
    base_dir, base, _ = baseline
    workdir = tmp_path / "run"
    hook = SignalDuring(monkeypatch, what, nth)
    stopped = train(config(cache), workdir, signals=hook.signals)
    assert hook.stopped_at is not None and hook.stopped_at[0] < hook.stopped_at[1], hook.stopped_at  # mid-measure
    assert stopped["stop_reason"] == "preempted" and stopped["step"] == step
    assert (workdir / "checkpoints" / str(step)).exists()  # the state of `step` is saved
    assert not (workdir / "eval" / f"step_{TOTAL:06d}.json").exists()
    measured = [e["step"] for e in checkpoint_meta(workdir, step)["selection"]]
    assert measured == [p for p in (5, 10, 15, 20, 25, 30, 35, 40) if p < step or (p == step and what != "dev perplexity")]

    monkeypatch.undo()
    resumed = train(config(cache), workdir)
    assert resumed["stop_reason"] == "done" and resumed["best_step"] == base["best_step"]
    assert final_eval(workdir) == final_eval(base_dir)
    assert read_metrics(workdir) == read_metrics(base_dir)  # the dev measurements' lines included
    assert params_equal(resumed["state"].params, base["state"].params)


def test_every_run_prints_its_cost_by_stage_and_the_stages_add_up(baseline):
    _, _, out = baseline
    lines = out.splitlines()
    head = next(i for i, l in enumerate(lines) if l.startswith("cost estimate of this run from step 0"))
    rows = {}
    for line in lines[head + 1:]:
        found = re.match(r"  (\S.*?)\s{2,}(\S+ s|\d+m\d\ds|\d+h\d\dm)\s+\((.*)\)$", line)
        if not found:
            break
        rows[found.group(1)] = (found.group(2), found.group(3))
    assert {"training", "dev perplexity (checkpoint selection)", "self-perplexity re-scoring",
            "evaluation (BLiMP, dev pseudo-perplexity)", "checkpoints", "total"} <= set(rows), rows
    assert rows["training"][1].startswith(f"{TOTAL - 1} x ")  # the first step is the start-up's
    assert rows["dev perplexity (checkpoint selection)"][1].startswith("8 x ")  # every eighth of 40 steps
    assert rows["self-perplexity re-scoring"][1].startswith("1;")  # at step 20 only (never at the last step)
    assert rows["evaluation (BLiMP, dev pseudo-perplexity)"][1].startswith("1;")  # at the end


def test_the_schedule_counts_and_the_total_is_the_sum_of_the_stages(tmp_path):
    from climb_jax.train import estimate
    from climb_jax.train.selection import CheckpointSelection

    c = tiny_config(tmp_path, trainer=dict(total_steps=400, checkpoint_every=150, eval_every=100),
                    eval=dict(at_end=True), data_curriculum=dict(scorer="self_perplexity", update_every=100))
    points = CheckpointSelection(c, tmp_path, enabled=True).points
    assert estimate.schedule(c, 0, points, rescoring=True) == {
        "steps": 400, "dev_perplexity": 8, "evaluate": 3 + 1, "rescore": 3, "checkpoint": 2 + 1}
    # Resumed at step 200: what is left.
    assert estimate.schedule(c, 200, points, rescoring=True) == {
        "steps": 200, "dev_perplexity": 4, "evaluate": 1 + 1, "rescore": 1, "checkpoint": 1 + 1}
    stages = [estimate.Stage("training", 399, 0.5), estimate.Stage("dev", 8, 100.0, evaluation=True,
                                                                    keys=("eval.dev_perplexity_sequences",))]
    assert estimate.total_seconds(stages) == 399 * 0.5 + 800
    text = estimate.describe(stages, "cost estimate")
    assert text[-2].split()[:2] == ["total", "16m40s"]  # 999.5 s
    assert text[-1].startswith("warning: evaluation is 80% of this run's estimated time") and \
        "eval.dev_perplexity_sequences" in text[-1]
    assert not any(l.startswith("warning") for l in estimate.describe(stages[:1], "cost estimate"))
