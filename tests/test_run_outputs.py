"""What a run writes and says about its measurements, as a person reads them: the dev pseudo-perplexity
history in metrics.jsonl, lines that say which perplexity is which, plain progress lines with
`--noprogress`, and the corpus fingerprint in config.json."""

from __future__ import annotations

import json

import pytest

from climb_jax.train import report, workdir
from tests.helpers import tiny_config, train


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("data_cache")


def test_dev_perplexity_history_is_in_metrics_jsonl(cache, tmp_path, monkeypatch, capsys):
    from climb_jax.eval.evaluator import Evaluator

    means = iter([9.0, 7.0, 4.0, 6.0, 5.0, 8.0, 4.5, 5.5])  # the eight selection points of 40 steps

    def dev_perplexity(self, params):
        return {"mean": next(means), "std": 0.5, "sequences": 16}

    monkeypatch.setattr(Evaluator, "dev_perplexity", dev_perplexity)
    monkeypatch.setattr(Evaluator, "evaluate", lambda self, params, step, extra=None: {"step": step, **(extra or {})})
    c = tiny_config(cache, eval=dict(at_end=True, select="best_dev_perplexity"))
    train(c, tmp_path / "run")
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    dev = [l for l in lines if "dev_pseudo_perplexity" in l]
    assert dev == [{"step": s, "dev_pseudo_perplexity": m, "dev_pseudo_perplexity_std": 0.5, "dev_rows": 16}
                   for s, m in zip(range(5, 41, 5), [9.0, 7.0, 4.0, 6.0, 5.0, 8.0, 4.5, 5.5])]
    assert [l["step"] for l in lines if "loss" in l] == [10, 20, 30, 40]
    assert [l["step"] for l in lines] == sorted(l["step"] for l in lines)  # in the order they happened
    printed = capsys.readouterr().out.splitlines()
    assert "step 15: checkpoint selection: dev pseudo-perplexity 4.00 (mean over 16 rows, std 0.50)" in printed
    # --noprogress (progress=False) keeps one plain line per log step.
    assert [l.split(":")[0] for l in printed if l.startswith("step ") and "/40" in l] == [
        f"step {s}/40" for s in (10, 20, 30, 40)]
    # The rerun's summary takes the final loss from the last loss line, not from a dev measurement's.
    last_loss = [l for l in lines if "loss" in l][-1]["loss"]
    assert f"final loss {last_loss:.4f}" in report.complete(tmp_path, 40, "m", lines, None, None)
    # config.json records the corpus by content.
    from climb_jax.data.dataset import cache_dir_for, prepare_data

    data = prepare_data(c.data, cache_dir_for(c.data, tmp_path / "run"), progress=False)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["provenance"]["corpus_fingerprint"] == workdir.corpus_fingerprint(data.manifest)


def test_corpus_fingerprint_is_the_content_not_the_place():
    def manifest(root, sha):
        return {"corpus": {"root": root, "files": [{"path": f"{root}/train/a.train", "sha256": sha, "mtime_ns": 1},
                                                   {"path": f"{root}/dev/a.dev", "sha256": "d", "mtime_ns": 2}]}}

    same = workdir.corpus_fingerprint(manifest("/data/babylm", "x"))
    assert workdir.corpus_fingerprint(manifest("/mnt/copy", "x")) == same
    assert workdir.corpus_fingerprint(manifest("/data/babylm", "y")) != same


def test_noprogress_on_a_terminal_prints_plain_lines(monkeypatch, capsys):
    monkeypatch.setattr(report, "is_terminal", lambda stream: True)
    rec = {"step": 10, "loss": 5.25, "tokens_per_s": 1000.0, "step_time_s": 0.5}
    quiet = report.Progress(True, 40, bar=False)  # --noprogress
    quiet.start(0)
    assert quiet.bar is None
    quiet.log(rec)
    quiet.close()
    assert capsys.readouterr().out == "step 10/40: loss 5.2500, 1000 tokens/s, ETA 0h00m\n"
    other_process = report.Progress(False, 40)
    other_process.start(0)
    other_process.log(rec)
    assert other_process.bar is None and capsys.readouterr().out == ""
    with_bar = report.Progress(True, 40)
    with_bar.start(0)
    assert with_bar.bar is not None
    with_bar.close()


def test_the_final_evaluation_line_says_which_perplexity_and_checkpoint():
    from climb_jax.eval.evaluator import Evaluator

    result = {"step": 40, "blimp": {"overall": 0.5, "num_pairs": 10, "max_pairs_per_file": 0}, "blimp_avg": 0.5,
              "perplexity": {"pseudo_perplexity": 453.0, "num_sequences": 64}, "selection": {"checkpoint_step": 15}}
    line = Evaluator.summary(result)
    assert line.startswith("step 40, scoring the checkpoint of step 15: BLiMP 0.5000 over 10 pairs")
    assert line.endswith(", pseudo-perplexity 453.00 on 64 dev rows (per token)")
    assert Evaluator.summary(dict(result, selection=None)).startswith("step 40: BLiMP")
