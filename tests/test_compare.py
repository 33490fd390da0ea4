"""The comparison report on synthetic workdirs: table contents, significance flags, plots, CLI."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from climb_jax import compare

from climb_jax.config import schema
from climb_jax.analysis import plots, report, runs

PARADIGMS = {"anaphor_agreement": "morphology", "irregular_forms": "morphology",
             "island_effects": "syntax", "ellipsis": "syntax", "quantifiers": "semantics", "npi": "semantics"}
SIZES = (10, 20, 30, 25, 15, 20)  # pairs per paradigm: unequal, so the mean over paradigms != over pairs
N_PAIRS = sum(SIZES)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _config(label: str, seed: int) -> dict:
    """A config.json as a run writes it (the full schema), or a partial one for the objective runs."""
    if label.startswith("objective"):  # partial: only what the report reads
        units = {"mlm": {"task": "mlm", "start": 0.0, "end": 1.0},
                 "pos_noun": {"task": "pos", "tags": "NOUN", "start": 0.0, "end": 0.5}}
        return {"name": "objective_cl", "label": label, "seed": seed, "trainer": {"total_steps": 200},
                "objective_curriculum": {"units": units}}
    c = schema.base_config()
    c.label, c.seed, c.trainer.total_steps, c.trainer.warmup_steps = label, seed, 200, 20
    if label.startswith("vocab"):
        c.vocab_curriculum.kind = "pos_tags"
        c.vocab_curriculum.pacing.name = "log"
    return json.loads(c.to_json_best_effort())


def _split(pairs: np.ndarray) -> list[np.ndarray]:
    return np.split(pairs, np.cumsum(SIZES)[:-1])


def macro(pairs: np.ndarray) -> float:
    return float(np.mean([p.mean() for p in _split(pairs)]))


def _suite(pairs: np.ndarray, with_pairs: bool = True) -> dict:
    """The shape `climb_jax.eval.blimp.accuracy_report` writes (plus optional per-pair results)."""
    acc = lambda v: {"accuracy": float(np.mean(v)), "num_pairs": len(v)}
    parts = dict(zip(PARADIGMS, _split(pairs)))
    by_field: dict[str, list] = {}
    for p, v in parts.items():
        by_field.setdefault(PARADIGMS[p], []).extend(v.tolist())
    doc = {"suite": "blimp", "method": "pll", "num_pairs": int(pairs.size), "accuracy": float(pairs.mean()),
           "macro_accuracy": macro(pairs), "per_file": {p: acc(v) for p, v in parts.items()},
           "per_field": {f: acc(v) for f, v in by_field.items()}}
    if with_pairs:
        doc["pairs"] = {p: v.astype(int).tolist() for p, v in parts.items()}
    return doc


def write_run(root: Path, label: str, seed: int, pairs: np.ndarray, *, ppl: float, rte_correct: np.ndarray,
              with_pairs: bool = True, supplement: bool = True, mrpc_f1: float | None = None) -> Path:
    wd = root / f"{label.replace(':', '_')}_s{seed}"
    (wd / "eval").mkdir(parents=True)
    (wd / "finetune").mkdir()
    (wd / "config.json").write_text(json.dumps(_config(label, seed)))
    with (wd / "metrics.jsonl").open("w") as fh:
        for step in range(0, 201, 25):
            fh.write(json.dumps({"step": step, "loss": 8.0 - step / 50 + 0.1 * seed, "lr": 1e-3}) + "\n")
        fh.write('{"step": 210, "loss"')  # a torn last line, as from a killed run
    early = np.where(np.arange(pairs.size) % 3 == 0, 0.0, pairs)
    (wd / "eval" / "step_000100.json").write_text(json.dumps({"step": 100, "blimp": _suite(early, with_pairs)}))
    final = {"step": 200, "blimp": _suite(pairs, with_pairs), "perplexity": {"pseudo_perplexity": ppl, "sequences": 8}}
    (wd / "eval" / "step_000200.json").write_text(json.dumps(final))
    if supplement:  # a separate single-suite file, as `climb_jax.evaluate --suite` writes
        supp = {"step": 200, "suite": "blimp_supplement", "method": "pll", "accuracy": 0.5 + 0.01 * seed,
                "per_file": {"turn_taking": {"accuracy": 0.5 + 0.01 * seed, "num_pairs": 40}}}
        (wd / "eval" / "blimp_supplement_pll_step_000200.json").write_text(json.dumps(supp))
    per_seed = [{"seed": s, "metrics": {"accuracy": float(c.mean())}, "correct": c.astype(int).tolist()}
                for s, c in enumerate(rte_correct)]
    (wd / "finetune" / "rte.json").write_text(json.dumps({
        "task": "rte", "primary_metric": "accuracy", "per_seed": per_seed,
        "mean": {"accuracy": float(np.mean([c.mean() for c in rte_correct]))}}))
    if mrpc_f1 is not None:  # F1 is not a mean over examples: compared per seed
        (wd / "finetune" / "mrpc.json").write_text(json.dumps({
            "task": "mrpc", "primary_metric": "f1", "mean": {"f1": mrpc_f1, "accuracy": 0.5},
            "per_seed": [{"seed": 0, "metrics": {"f1": mrpc_f1, "accuracy": 0.5}, "correct": [1, 0]}]}))
    return wd


@pytest.fixture()
def sweep(tmp_path):
    """vanilla, a clearly better vocabulary curriculum and an objective curriculum identical to vanilla."""
    rng = np.random.default_rng(0)
    n = N_PAIRS
    root = tmp_path / "sweep"
    expected = {}
    for seed in (0, 1):
        base = (rng.random(n) < 0.6).astype(float)
        better = np.maximum(base, (rng.random(n) < 0.5).astype(float))  # fixes about half the errors
        rte = (rng.random((2, 40)) < 0.55).astype(float)
        write_run(root, "vanilla", seed, base, ppl=50.0 + seed, rte_correct=rte, mrpc_f1=0.6 + 0.01 * seed)
        write_run(root, "vocab_cl:pos_tags-log", seed, better, ppl=45.0 + seed, rte_correct=rte,
                  mrpc_f1=0.7 + 0.01 * seed)
        write_run(root, "objective_cl:noun", seed, base, ppl=50.0 + seed, rte_correct=rte, supplement=False,
                  mrpc_f1=0.6 + 0.01 * seed)
        expected.setdefault("rte", []).append(rte.mean())
        expected.setdefault("vanilla", []).append(macro(base))
        expected.setdefault("vocab", []).append(macro(better))
    return root, expected


def _csv(path: Path) -> dict[str, dict]:
    with path.open() as fh:
        return {row["label"]: row for row in csv.DictReader(fh)}


def test_report_tables_flags_and_plots(sweep, tmp_path, capsys):
    root, expected = sweep
    out = tmp_path / "report"
    rc = compare.main([str(root), f"--out={out}", "--n_boot=300", "--n_perm=1000"])
    assert rc == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == f"report: {out / 'report.md'}"
    assert printed[0].startswith("| Run | Seeds | BLiMP | Δ BLiMP |")  # the summary table, on the terminal too
    assert [l.split(" | ")[0] for l in printed[2:-1]] == ["| `vanilla`", "| `objective_cl:noun`",
                                                          "| `vocab_cl:pos_tags-log`"]

    rows = _csv(out / "report.csv")
    assert list(rows) == ["vanilla", "objective_cl:noun", "vocab_cl:pos_tags-log"]  # baseline first
    van, voc, obj = rows["vanilla"], rows["vocab_cl:pos_tags-log"], rows["objective_cl:noun"]
    assert float(van["blimp_mean"]) == pytest.approx(np.mean(expected["vanilla"]))
    assert float(van["blimp_std"]) == pytest.approx(np.std(expected["vanilla"], ddof=1))
    assert float(voc["blimp_mean"]) == pytest.approx(np.mean(expected["vocab"]))
    assert van["n_seeds"] == "2" and van["steps"] == "200;200"
    assert float(van["perplexity_mean"]) == pytest.approx(50.5)
    assert float(van["supplement_mean"]) == pytest.approx(0.505)
    assert obj["supplement_mean"] == ""  # not evaluated: blank, not an error
    assert float(van["finetune_rte_accuracy_mean"]) > 0

    # The better curriculum: matched pairs, positive, significant; the identical one: 0 and n.s.
    assert voc["diff_blimp_items"] == "pairs"
    assert float(voc["diff_blimp"]) == pytest.approx(np.mean(expected["vocab"]) - np.mean(expected["vanilla"]))
    assert voc["diff_blimp_significant"] == "True" and float(voc["diff_blimp_ci_low"]) > 0
    assert float(obj["diff_blimp"]) == 0.0 and obj["diff_blimp_significant"] == "False"
    assert float(obj["diff_blimp_p"]) == 1.0
    assert van["diff_blimp"] == ""  # no difference of the baseline to itself
    # Perplexity: one number per seed, so runs are permuted; with 2 seeds never significant.
    assert voc["diff_perplexity_items"] == "seeds" and voc["diff_perplexity_significant"] == "False"
    assert voc["diff_finetune_rte_items"] == "examples" and float(voc["diff_finetune_rte"]) == 0.0
    assert voc["diff_finetune_mrpc_items"] == "seeds"
    assert float(voc["diff_finetune_mrpc"]) == pytest.approx(0.1)
    assert float(van["finetune_mrpc_f1_mean"]) == pytest.approx(0.605)
    assert float(van["finetune_avg_mean"]) == pytest.approx((np.mean(expected["rte"]) + 0.605) / 2)
    assert float(voc["diff_finetune_avg"]) == pytest.approx(0.05)

    md = (out / "report.md").read_text()
    assert "| `vanilla` | seeds 0, 1 |" in md and "(baseline)" in md
    assert "mrpc (F1)" in md and "rte (acc)" in md and "(Super)GLUE avg" in md
    assert "## BLiMP per field" in md and "syntax" in md
    obj_line = next(line for line in md.splitlines() if line.startswith("| `objective_cl:noun` | seeds 0, 1"))
    assert "n.s." in obj_line
    voc_line = next(line for line in md.splitlines() if line.startswith("| `vocab_cl:pos_tags-log` | seeds 0, 1"))
    assert "n.s." not in voc_line.split("|")[4]  # the Δ BLiMP cell

    data = json.loads((out / "report.json").read_text())
    para = data["paradigm_differences"]["vocab_cl:pos_tags-log"]
    assert set(para) == set(PARADIGMS) and all(v >= 0 for v in para.values())

    for name in ("learning_curves", "blimp_over_steps", "pacing_curves", "paradigm_diff_vocab_cl_pos_tags-log",
                 "paradigm_diff_objective_cl_noun"):
        png = out / f"{name}.png"
        assert png.exists(), name
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert f"({name}.png)" in md


def test_paradigms_are_the_items_when_pairs_are_missing(tmp_path):
    rng = np.random.default_rng(1)
    n = N_PAIRS
    for seed in (0, 1):
        base = (rng.random(n) < 0.6).astype(float)
        write_run(tmp_path, "vanilla", seed, base, ppl=10, rte_correct=np.ones((1, 4)))
        write_run(tmp_path, "data_cl:x", seed, base, ppl=10, rte_correct=np.ones((1, 4)), with_pairs=False)
    groups = runs.group_runs(runs.load_run(wd) for wd in runs.find_workdirs([tmp_path]))
    rep = report.summarize(groups, "vanilla", n_boot=200, n_perm=500)
    d = rep.diff("data_cl:x", "blimp")
    assert d.items == "paradigms" and d.result.n_items == len(PARADIGMS)
    assert d.result.diff == 0.0 and not d.result.significant


def test_reader_tolerates_partial_runs(tmp_path):
    wd = tmp_path / "bare"
    wd.mkdir()
    (wd / "config.json").write_text(json.dumps({"name": "vanilla", "seed": 3}))
    run = runs.load_run(wd)
    assert run.label == "vanilla" and run.seed == 3 and run.evals == [] and run.latest("blimp") is None
    # On-demand evaluations (climb_jax.evaluate) fill gaps but never replace the training loop's own.
    (wd / "eval").mkdir()
    suite = lambda name, acc: {"step": 100, "suite": name, "method": "pll", "overall": acc,
                               "per_file": {"a": {"accuracy": acc, "num_pairs": 4}}}
    (wd / "eval" / "step_000100.json").write_text(json.dumps({"step": 100, "blimp": suite("blimp", 0.6)}))
    (wd / "eval" / "blimp_filtered_pll_step_000100.json").write_text(json.dumps(suite("blimp_filtered", 0.9)))
    (wd / "eval" / "blimp_supplement_pll_step_000100.json").write_text(json.dumps(suite("blimp_supplement", 0.7)))
    (wd / "eval" / "zorro_pll_step_000100.json").write_text(json.dumps(suite("zorro", 0.1)))
    run = runs.load_run(wd)
    assert [p.step for p in run.evals] == [100]
    assert run.latest("blimp").overall == 0.6 and run.latest("supplement").overall == 0.7
    shutil.rmtree(wd / "eval")
    paths = report.build_report([wd], tmp_path / "out", n_boot=100, n_perm=100)
    assert "| `vanilla` | seed 3 | – |" in paths["markdown"].read_text()


def test_cli_errors(sweep, tmp_path, capsys):
    root, _ = sweep
    assert compare.main([str(root), f"--out={tmp_path / 'o'}", "--baseline=nope", "--no_plots"]) == 2
    err = capsys.readouterr().err
    assert "baseline 'nope'" in err and "vanilla" in err
    assert compare.main([str(tmp_path / "missing"), f"--out={tmp_path / 'o'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert compare.main([str(empty), f"--out={tmp_path / 'o'}"]) == 2
    assert "no config.json" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    assert compare.main([str(bad), f"--out={tmp_path / 'o'}"]) == 2
    assert "not readable JSON" in capsys.readouterr().err


def test_pacing_curves_follow_the_run_configs():
    full = _config("vocab_cl:pos_tags-log", 0)
    plan = plots.curricula(full)
    assert set(plan) == {"vocabulary"}
    curves = plots._curriculum_curves(full)
    assert curves is not None and any(k.startswith("vocabulary pace") for k in curves)
    # A partial config.json: the pacing function is evaluated from its parameters alone.
    pacing = {"name": "linear", "start_percent": 0.0, "end_percent": 0.5, "starting_difficulty": 0.2,
              "max_difficulty": 1.0}
    values = plots._pacing_values(pacing, np.array([0, 50, 100, 200]), 200)
    np.testing.assert_allclose(values, [0.2, 0.6, 1.0, 1.0])
    assert set(plots.curricula(_config("objective_cl:noun", 0))) == {"units"}
    assert plots.curricula(_config("vanilla", 0)) == {}


def test_exports_unfinished_runs_and_field_spellings(tmp_path, capsys):
    """A sweep folder holding a Hugging Face export, a finished and an unfinished seed of one label, and
    eval files that spell one BLiMP field two ways."""
    rng = np.random.default_rng(2)
    root = tmp_path / "sweep"
    for seed in (0, 1):
        write_run(root, "vanilla", seed, (rng.random(N_PAIRS) < 0.6).astype(float), ppl=10,
                  rte_correct=np.ones((1, 4)))
    late = write_run(root, "vanilla", 2, (rng.random(N_PAIRS) < 0.6).astype(float), ppl=10,
                     rte_correct=np.ones((1, 4)))
    lines = (late / "metrics.jsonl").read_text().splitlines()
    (late / "metrics.jsonl").write_text("\n".join(lines[:4]) + "\n")  # stopped at step 75 of 200
    shutil.rmtree(late / "eval")
    (late / "eval").mkdir()
    (late / "eval" / "step_000050.json").write_text(json.dumps({"step": 50, "blimp": _suite(np.ones(N_PAIRS))}))
    export = root / "vanilla_s0_hf"  # what `climb_jax.export --out` writes beside the runs
    export.mkdir()
    (export / "config.json").write_text(json.dumps({"model_type": "roberta-prelayernorm",
                                                    "architectures": ["RobertaPreLayerNormForMaskedLM"]}))

    assert sorted(p.name for p in runs.find_workdirs([root])) == ["vanilla_s0", "vanilla_s1", "vanilla_s2"]
    assert compare.main([str(export), f"--out={tmp_path / 'o'}"]) == 2
    assert "Hugging Face export" in capsys.readouterr().err

    groups = runs.group_runs(runs.load_run(wd) for wd in runs.find_workdirs([root]))
    assert {k: [r.seed for r in v] for k, v in groups.items()} == {"vanilla": [0, 1], "vanilla (unfinished)": [2]}
    # By default the unfinished run is left out, and the report says so.
    out = tmp_path / "report"
    assert compare.main([str(root), f"--out={out}", "--n_boot=100", "--n_perm=100", "--no_plots"]) == 0
    printed = capsys.readouterr().out
    assert (f"note: Left out `vanilla` seed 2 ({late}): unfinished: trained to step 75 of 200; --include_unfinished "
            "compares it as an arm of its own.") in printed
    assert list(_csv(out / "report.csv")) == ["vanilla"] and _csv(out / "report.csv")["vanilla"]["seeds"] == "0;1"
    assert json.loads((out / "report.json").read_text())["left_out"] == [
        {"workdir": str(late), "label": "vanilla", "seed": 2, "why": "unfinished: trained to step 75 of 200"}]
    # Asked for, it is an arm of its own, never averaged with the finished seeds.
    assert compare.main([str(root), f"--out={out}", "--n_boot=100", "--n_perm=100", "--include_unfinished"]) == 0
    printed = capsys.readouterr().out
    assert "note: `vanilla (unfinished)` has not finished training (seed 2 at step 75 of 200)" in printed
    assert "Left out" not in printed
    rows = _csv(out / "report.csv")
    assert rows["vanilla (unfinished)"]["steps"] == "50" and float(rows["vanilla (unfinished)"]["blimp_mean"]) == 1.0

    # One field written as `syntax/semantics` by one paradigm and `syntax_semantics` by another: one column,
    # the pair-weighted accuracy of both.
    doc = {"per_field": {"syntax/semantics": {"accuracy": 1.0, "num_pairs": 1},
                         "syntax_semantics": {"accuracy": 0.5, "num_pairs": 3}, "syntax": {"accuracy": 0.25}}}
    assert runs.Suite.parse(doc).per_field == {"syntax_semantics": 0.625, "syntax": 0.25}


def test_single_evaluation_runs_skip_blimp_over_steps(tmp_path):
    rng = np.random.default_rng(3)
    for seed in (0, 1):
        wd = write_run(tmp_path / "sweep", "vanilla", seed, (rng.random(N_PAIRS) < 0.6).astype(float), ppl=10,
                       rte_correct=np.ones((1, 4)))
        (wd / "eval" / "step_000100.json").unlink()  # only the final evaluation
    paths = report.build_report([tmp_path / "sweep"], tmp_path / "out", n_boot=100, n_perm=100)
    assert "blimp_over_steps" not in paths and not (tmp_path / "out" / "blimp_over_steps.png").exists()
    assert "`blimp_over_steps.png`: not drawn: every run was evaluated at one step only" in paths["markdown"].read_text()
    assert "learning_curves" in paths


def test_pacing_curves_title_fits_a_single_panel(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    extents = []
    original = Figure.savefig

    def savefig(fig, *args, **kwargs):
        renderer = fig.canvas.get_renderer()
        title = fig._suptitle.get_window_extent(renderer)
        extents.append((title.x0, title.x1, fig.bbox.x1))
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    wd = write_run(tmp_path, "vocab_cl:pos_tags-log", 0, np.ones(N_PAIRS), ppl=10, rte_correct=np.ones((1, 4)))
    assert plots.pacing_curves({"vocab_cl:pos_tags-log": [runs.load_run(wd)]}, tmp_path / "pacing.png")
    ((x0, x1, width),) = extents
    assert 0 <= x0 < x1 <= width


def _edit_config(wd: Path, **changes) -> None:
    """Sets dotted config fields of a synthetic run's config.json (`trainer.lr=...`)."""
    config = json.loads((wd / "config.json").read_text())
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    (wd / "config.json").write_text(json.dumps(config))


@pytest.fixture()
def two_seeds(tmp_path):
    """Two finished seeds of `vanilla` that are, so far, one configuration trained on one corpus."""
    rng = np.random.default_rng(4)
    wds = [write_run(tmp_path / "sweep", "vanilla", seed, (rng.random(N_PAIRS) < 0.6).astype(float), ppl=10,
                     rte_correct=np.ones((1, 4))) for seed in (0, 1)]
    for wd in wds:
        _edit_config(wd, **{"provenance.corpus_fingerprint": "a" * 64, "data.corpus": f"/data/{wd.name}/babylm"})
    return tmp_path / "sweep", wds


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_an_arm_pools_only_seeds_of_one_configuration(two_seeds, tmp_path, capsys):
    root, (a, b) = two_seeds
    args = [str(root), f"--out={tmp_path / 'out'}", "--n_boot=100", "--n_perm=100", "--no_plots"]
    # Same corpus content (fingerprint) read from two places: one arm.
    assert compare.main(args) == 0
    assert "seeds 0, 1" in capsys.readouterr().out

    _edit_config(b, **{"provenance.corpus_fingerprint": "b" * 64})  # another corpus, same label
    assert compare.main(args) == 2
    assert _one_error_line(capsys) == (
        f"error: the runs labelled 'vanilla' in {a} and {b} differ in corpus fingerprint (aaaaaaaaaaaa... vs "
        "bbbbbbbbbbbb...), not only in their seed: give them different labels (--config.label), or pass "
        "--allow_mixed to pool them anyway.")

    _edit_config(b, **{"trainer.lr": 3e-4, "model.num_layers": 2, "trainer.log_every": 7})  # log_every: not the recipe
    assert compare.main(args) == 2
    assert _one_error_line(capsys).startswith(
        f"error: the runs labelled 'vanilla' in {a} and {b} differ in corpus fingerprint (aaaaaaaaaaaa... vs "
        "bbbbbbbbbbbb...) (and in model.num_layers, trainer.lr), not only in their seed")

    assert compare.main([*args, "--allow_mixed"]) == 0
    printed = capsys.readouterr().out
    assert (f"note: `vanilla` pools runs that differ in more than their seed (--allow_mixed): {a} and {b} differ "
            "in corpus fingerprint, model.num_layers, trainer.lr.") in printed
    assert "seeds 0, 1" in printed


def test_without_fingerprints_the_corpus_location_decides(two_seeds):
    from climb_jax.analysis import arms

    _, (a, b) = two_seeds
    run_a, run_b = runs.load_run(a), runs.load_run(b)
    assert arms.differences(run_a, run_b) == []  # one content, two places
    del run_b.config["provenance"]  # a run written before fingerprints were recorded
    assert arms.differences(run_a, run_b) == [("data.corpus", f"/data/{a.name}/babylm", f"/data/{b.name}/babylm")]


def test_a_seed_counts_once_in_an_arm(two_seeds, tmp_path, capsys):
    root, (a, b) = two_seeds
    _edit_config(b, seed=0)
    for extra in ([], ["--allow_mixed"]):
        assert compare.main([str(root), f"--out={tmp_path / 'out'}", "--no_plots", *extra]) == 2
        assert _one_error_line(capsys) == (
            f"error: the runs labelled 'vanilla' in {a} and {b} both have seed 0: a seed counts once in an arm's "
            "mean. Leave one out, or give one another label (--config.label) if it is a different configuration.")
    assert not (tmp_path / "out").exists()


def test_a_sweep_of_unfinished_runs_only_says_how_to_compare_it(two_seeds, tmp_path, capsys):
    root, (a, b) = two_seeds
    for wd in (a, b):
        _edit_config(wd, **{"trainer.total_steps": 1000})
    assert compare.main([str(root), f"--out={tmp_path / 'out'}", "--no_plots"]) == 2
    assert _one_error_line(capsys) == (
        f"error: none of the 2 runs found has finished training ({a}: unfinished: trained to step 200 of 1000); "
        "pass --include_unfinished to compare them as they are.")
