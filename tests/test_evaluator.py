"""The run's evaluator: same numbers as the stand-alone scorers, one compile per shape across
evaluations, on a mesh as off it, atomic never-overwriting result files, `blimp_avg` and the
checkpoint-selection metric against direct computations.

Runs on the package's embedded corpus sample and BLiMP sample only (no ../shared)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from functools import lru_cache
from pathlib import Path

import jax
import numpy as np
import pytest

from climb_jax.config.schema import base_config
from climb_jax.constants import BOS_ID, EOS_ID, NUM_SPECIAL
from climb_jax.errors import ClimbError, DataError
from climb_jax.eval import perplexity as ppl_lib
from climb_jax.eval.blimp import BLIMP_PHENOMENA, BlimpEvaluator, accuracy_report, blimp_average
from climb_jax.eval.evaluator import Evaluator, check_suites
from climb_jax.eval.suites import MinimalPair, Paradigm, Suite
from climb_jax.train.compile_count import CompileCounter
from tests.test_blimp import direct_pll, tiny_tokenizer

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "climb_jax" / "data" / "sample"


def sample_lines(split: str, n: int = 300) -> list[str]:
    """The first n/4 non-empty lines of four sources of the corpus sample's `split`."""
    lines = []
    for name in ("aochildes", "brown_fiction", "switchboard", "overheard"):
        with open(SAMPLE / split / f"{name}.{split}", encoding="utf-8") as f:
            lines += [line.strip() for line in f if line.strip()][: n // 4]
    return lines


@lru_cache(maxsize=1)
def sample_model():
    from climb_jax.models.roberta import RobertaConfig, init_params

    cfg = RobertaConfig(vocab_size=len(tiny_tokenizer()), hidden_size=32, num_layers=2, num_heads=2,
                        intermediate_size=64, max_position_embeddings=32)
    params = init_params(jax.random.PRNGKey(3), cfg)
    params = jax.tree_util.tree_map(lambda x: x * 8.0 if x.ndim == 2 else x, params)  # clearly different scores
    return cfg, params


def dev_ids(n_rows: int = 12, length: int = 24) -> np.ndarray:
    """Packed `<s> … </s>` dev rows of one length, as a prepared split holds them."""
    tok = tiny_tokenizer()
    stream = [t for line in sample_lines("dev") for t in tok(line, add_special_tokens=False)["input_ids"]]
    body = length - 2
    return np.asarray([[BOS_ID] + stream[i * body:(i + 1) * body] + [EOS_ID] for i in range(n_rows)], np.int32)


def eval_config(**overrides):
    c = base_config()
    c.eval.update(dict(blimp_dir="embedded", max_pairs_per_file=1, batch_size=16, perplexity_sequences=3,
                       mlm_sequences=5, dev_perplexity_sequences=4))
    c.eval.update(overrides)
    return c


def test_results_equal_standalone_scorers_and_no_recompile(tmp_path):
    cfg, params = sample_model()
    tok, dev = tiny_tokenizer(), dev_ids()
    config = eval_config()
    with CompileCounter() as counter:
        ev = Evaluator(config, cfg, tok, dev, None, tmp_path, progress=False)
        first = ev.evaluate(params, 10)
        ev.dev_perplexity(params)
        compiled = sum(counter.counts.values())
        second = ev.evaluate(params, 20)
        selection = ev.dev_perplexity(params)
        assert sum(counter.counts.values()) == compiled > 0  # the second evaluation compiles nothing
    # The same numbers as the stand-alone scorers (fresh objects, the functions the run used before).
    blimp = BlimpEvaluator(cfg, tok, "embedded", max_pairs_per_file=1, batch_size=16)(params)
    ppl = ppl_lib.pseudo_perplexity(params, cfg, dev, batch_size=16, num_sequences=3)
    mlm = ppl_lib.mlm_loss(params, cfg, dev, num_sequences=5)
    for got in (first, second):
        for key in ("overall", "macro_accuracy", "per_file", "per_phenomenon", "num_pairs"):
            assert got["blimp"][key] == blimp[key]
        assert got["perplexity"]["pseudo_perplexity"] == ppl["pseudo_perplexity"]
        assert got["perplexity"]["num_sequences"] == 3 and got["perplexity"]["mlm_num_sequences"] == 5
        for key in ("mlm_loss", "mlm_accuracy"):
            assert got["perplexity"][key] == pytest.approx(mlm[key], rel=1e-6)
        assert got["blimp_avg"] == pytest.approx(np.mean([v["accuracy"] for v in blimp["per_phenomenon"].values()]))
    assert json.loads((tmp_path / "eval" / "step_000010.json").read_text())["blimp"]["overall"] == blimp["overall"]
    # The checkpoint-selection metric: per-row pseudo-perplexity over the strided sample, direct computation.
    rows = dev[::len(dev) // 4]
    per_row = [math.exp(-direct_pll(cfg, params, r) / int((r >= NUM_SPECIAL).sum())) for r in rows]
    assert selection["sequences"] == 4
    assert selection["mean"] == pytest.approx(np.mean(per_row), rel=1e-4)
    assert selection["std"] == pytest.approx(np.std(per_row, ddof=1), rel=1e-3)


def test_strided_sample_is_the_references():
    # range(0, N, N // 10_000): 10,000 rows of 25,000 -> stride 2; 15,000 -> stride 1 (all rows).
    np.testing.assert_array_equal(ppl_lib.strided_rows(25_000, 10_000), np.arange(0, 25_000, 2))
    assert len(ppl_lib.strided_rows(15_000, 10_000)) == 15_000
    assert len(ppl_lib.strided_rows(100, 10_000)) == 100  # the reference fails here (zero stride)
    np.testing.assert_array_equal(ppl_lib.strided_rows(12, 4), [0, 3, 6, 9])


def test_result_files_are_never_overwritten(tmp_path, monkeypatch, capsys):
    cfg, params = sample_model()
    ev = Evaluator(eval_config(mlm_sequences=0, perplexity_sequences=0), cfg, tiny_tokenizer(), None, None,
                   tmp_path, progress=False)
    first = ev.evaluate(params, 5, extra={"selected_by": "last"})
    assert first["selected_by"] == "last" and "perplexity" not in first
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["step_000005.json"]  # no .tmp left
    out = capsys.readouterr().out
    assert "pairs (first 1 pairs per file; pll)" in out and "blimp_avg" in out

    def boom(*a, **k):
        raise AssertionError("a finished evaluation was scored again")

    monkeypatch.setattr(ev.blimp, "pair_scores", boom)
    again = ev.evaluate(params, 5)  # finished: read back, not rescored
    assert again == json.loads(json.dumps(first))
    assert "already written" in capsys.readouterr().out
    # A damaged file (not written by the evaluator) is moved aside, never overwritten in place.
    (tmp_path / "eval" / "step_000007.json").write_text("{half")
    monkeypatch.undo()
    ev.evaluate(params, 7)
    names = sorted(p.name for p in (tmp_path / "eval").iterdir())
    assert names[:2] == ["step_000005.json", "step_000007.json"] and names[2].startswith("step_000007.json.unreadable")
    with pytest.raises(ClimbError, match="dev split"):
        ev.dev_perplexity(params)


def test_check_suites_before_training(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jsonl").write_text('{"sentence_good": "a"}\n')
    c = eval_config(supplement_dir=str(bad))
    with pytest.raises(DataError, match=r"eval.supplement_dir: .*missing key"):
        check_suites(c)
    c.eval.at_end, c.trainer.eval_every = False, 0
    check_suites(c)  # a run that never evaluates does not read its suites


def _report(groups: dict[str, tuple[int, int]], *, term: bool) -> dict:
    """An accuracy report over hand-made pairs: {group: (right, total)}."""
    paradigms = []
    for g, (right, total) in groups.items():
        pairs = tuple(MinimalPair(good="a", bad="b", paradigm=g, term=g if term else None) for _ in range(total))
        paradigms.append(Paradigm(name=g, path=Path(g), pairs=pairs))
    suite = Suite(name="hand", path=Path("hand"), paradigms=tuple(paradigms))
    good = np.concatenate([np.r_[np.ones(r), np.zeros(t - r)] for r, t in groups.values()])
    return accuracy_report(suite, good, np.full(len(good), 0.5), method="pll")


def test_blimp_avg_on_a_hand_built_result():
    # BLiMP's 13 linguistics terms: s-selection joins argument structure, filler_gap_dependency is filler_gap.
    terms = {p: (1, 2) for p in BLIMP_PHENOMENA if p not in ("argument_structure", "filler_gap")}
    terms.update({"argument_structure": (3, 3), "s-selection": (0, 1), "filler_gap_dependency": (1, 4)})
    blimp = _report(terms, term=True)
    assert sorted(blimp["per_phenomenon"]) == sorted(BLIMP_PHENOMENA)
    assert blimp["per_phenomenon"]["argument_structure"] == {"accuracy": 0.75, "num_pairs": 4}
    want12 = (10 * 0.5 + 0.75 + 0.25) / 12
    assert blimp_average(blimp) == {"blimp_avg": pytest.approx(want12), "groups": 12, "grouped_by": "phenomenon",
                                    "missing": []}
    # With the supplement: the mean over 12 + its tasks; the absent ones are named.
    sup = _report({"turn_taking": (1, 1), "qa_congruence_easy": (0, 2)}, term=False)
    got = blimp_average(blimp, sup)
    assert got["blimp_avg"] == pytest.approx((want12 * 12 + 1.0 + 0.0) / 14) and got["groups"] == 14
    assert got["missing"] == ["supplement/hypernym", "supplement/qa_congruence_tricky",
                              "supplement/subject_aux_inversion"]
    # The per-paradigm macro average and the overall accuracy stay beside it, and differ from it.
    assert blimp["macro_accuracy"] == pytest.approx(np.mean([r / t for r, t in terms.values()]))
    assert blimp["overall"] == pytest.approx(sum(r for r, _ in terms.values()) / sum(t for _, t in terms.values()))
    # A suite without BLiMP's keys falls back to its files.
    plain = blimp_average(_report({"x": (1, 1), "y": (0, 1)}, term=False))
    assert plain == {"blimp_avg": 0.5, "groups": 2, "grouped_by": "file", "missing": []}


_MESH_SCRIPT = textwrap.dedent("""
    import json, os, numpy as np, jax
    from ml_collections import ConfigDict
    from climb_jax.parallel.mesh import create_mesh, state_shardings
    from climb_jax.eval.evaluator import Evaluator
    from climb_jax.train.compile_count import CompileCounter
    from tests.test_evaluator import sample_model, tiny_tokenizer, dev_ids, eval_config
    assert jax.device_count() == 2
    suite = {suite!r}
    os.makedirs(suite)
    with open(os.path.join(suite, "agr.jsonl"), "w") as f:
        for good, bad in [("The dogs run.", "The dogs runs."), ("A cat sleeps here.", "A cat sleep here."),
                          ("Who did you see?", "Who did you see him?")]:
            f.write(json.dumps({{"sentence_good": good, "sentence_bad": bad}}) + "\\n")
    cfg, params = sample_model()
    tok, dev = tiny_tokenizer(), dev_ids()
    config = eval_config(blimp_dir=suite, max_pairs_per_file=0)
    off = Evaluator(config, cfg, tok, dev, None, {off!r}, progress=False)
    want, want_sel = off.evaluate(params, 1), off.dev_perplexity(params)
    # data=1 x fsdp=2: the parameters split over fsdp as the train state holds them, batches split too.
    mesh = create_mesh(ConfigDict(dict(data=1, fsdp=2, model=1)))
    placed = jax.device_put(params, state_shardings({{"params": params}}, mesh)["params"])
    assert any(len(l.sharding.device_set) == 2 and not l.sharding.is_fully_replicated
               for l in jax.tree_util.tree_leaves(placed))
    ev = Evaluator(config, cfg, tok, dev, mesh, {on!r}, progress=False)
    with CompileCounter() as counter:
        got, sel = ev.evaluate(placed, 1), ev.dev_perplexity(placed)
        n = sum(counter.counts.values())
        again, sel2 = ev.evaluate(placed, 2), ev.dev_perplexity(placed)
        assert sum(counter.counts.values()) == n, "a repeated evaluation compiled again"
    for key in ("overall", "per_file"):
        assert got["blimp"][key] == want["blimp"][key] == again["blimp"][key]
    for key in ("pseudo_perplexity", "mlm_loss"):
        np.testing.assert_allclose(got["perplexity"][key], want["perplexity"][key], rtol=1e-5)
    np.testing.assert_allclose([sel["mean"], sel["std"]], [want_sel["mean"], want_sel["std"]], rtol=1e-5)
    assert sel == sel2
    print("OK")
""")


def test_on_a_two_device_mesh(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    script = _MESH_SCRIPT.format(off=str(tmp_path / "off"), on=str(tmp_path / "on"), suite=str(tmp_path / "suite"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_progress_plain_lines_and_bar(monkeypatch):
    import io

    from climb_jax.eval.progress import Progress

    log = io.StringIO()
    with Progress(25, "blimp", stream=log) as bar:
        for _ in range(25):
            bar.update()
    lines = log.getvalue().splitlines()
    assert len(lines) == 9 and lines[0].startswith("blimp: 3/25 batches (12%") and "25/25 batches (100%" in lines[-1]
    assert "\r" not in log.getvalue()

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stdout", Terminal())
    with Progress(5, "blimp", stream=term) as bar:
        bar.update(5)
    assert "\r" in term.getvalue()  # a live bar on a terminal
    quiet = io.StringIO()
    with Progress(5, "blimp", enabled=False, stream=quiet) as bar:
        bar.update(5)
    assert quiet.getvalue() == ""
