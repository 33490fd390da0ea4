"""The benchmarks' own correctness: their JSON output, the checks they make (same logits on the same
weights, one compile per configuration across a curriculum), and their helpers. Never wall time."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO

from benchmarks import common

BENCH = REPO / "benchmarks"


def _env() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", OMP_WAIT_POLICY="PASSIVE")
    # The checks below are about what the benchmarks compute, not how fast: a cheaper XLA backend
    # optimisation level halves the compile time of the steps they build.
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    return env


def _start(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(BENCH / script), *args], cwd=str(REPO), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _records(proc: subprocess.Popen, timeout: float = 600) -> list[dict]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"benchmark failed:\n{err[-4000:]}"
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Both --tiny benchmarks, run side by side (each is mostly single-threaded XLA compilation)."""
    profile_dir = str(tmp_path_factory.mktemp("profile"))
    procs = {"train_step": _start("train_step.py", "--tiny", "--profile", profile_dir),
             "curriculum": _start("curriculum_overhead.py", "--tiny", "--configs", "all_three")}
    return {name: _records(p) for name, p in procs.items()}


# -- train_step ---------------------------------------------------------------------------------


def test_train_step_reports_both_implementations(tiny_runs):
    recs = tiny_runs["train_step"]
    by_bench = {}
    for r in recs:
        by_bench.setdefault(r["bench"], []).append(r)
    env = by_bench["train_step_environment"][0]
    assert env["torch_threads"] == env["cores"] >= 1 and env["jax"] and env["torch"] and env["cpu"]
    assert by_bench["matmul_peak"][0]["peak_gflops"] > 0
    impls = {r["impl"]: r for r in by_bench["train_step"]}
    assert set(impls) == {"climb_jax", "torch"}
    for r in impls.values():
        assert (r["size"], r["batch"], r["seq"]) == ("tiny", 8, 32)
        assert r["step_s"] > 0 and r["step_s"] <= r["step_s_median"]
        assert r["tokens_per_s"] == pytest.approx(8 * 32 / r["step_s"], rel=1e-3)
        # Both start from the same weights at a near-uniform prediction: loss close to ln(V).
        assert abs(r["first_loss"] - math.log(600)) < 0.5
    assert impls["climb_jax"]["compiles"] == 1


def test_train_step_profile_joins_the_trace_to_the_compiled_ops(tiny_runs):
    """--profile: every traced op of the step is found in the executable's HLO and classified."""
    (prof,) = [r for r in tiny_runs["train_step"] if r["bench"] == "train_step_profile"]
    shares = prof["by_kind_pass_pct"]
    assert sum(shares.values()) == pytest.approx(100, abs=0.5)
    assert {"matmul/forward", "matmul/backward"} <= set(shares) and "?" not in "".join(shares)
    assert 0 < prof["op_time_per_step_s"] and prof["matmul_pct"] == pytest.approx(
        sum(v for k, v in shares.items() if k.startswith("matmul/")), abs=0.5)
    ops = [r for r in tiny_runs["train_step"] if r["bench"] == "train_step_profile_op"]
    matmuls = [r for r in ops if r["kind_pass"].startswith("matmul/")]
    # A fusion is named after one of its ops, which need not be the dot.
    assert matmuls and all(r["source"].startswith("jit(train_step)/") for r in matmuls)
    assert any(r["source"].endswith("dot_general") for r in matmuls)
    assert any("transpose(" in r["source"] for r in matmuls if r["kind_pass"] == "matmul/backward")


def test_train_step_summary_checks_parity_and_flops(tiny_runs):
    (s,) = [r for r in tiny_runs["train_step"] if r["bench"] == "train_step_summary"]
    assert s["compiles"] == 1
    assert s["logits_max_abs_diff"] < 1e-4  # the reference runs OUR initial weights
    # Tiny: H=64, 2 layers, I=128, V=600, L=32; the MLM head runs on the step's static target slots.
    from climb_jax.train.masking import num_targets

    slots = num_targets(32, 0.15)
    assert 0.15 * 32 < slots < 32
    encoder = 6 * 2 * (4 * 64 * 64 + 2 * 64 * 128)
    attention = 12 * 2 * 32 * 64
    head = 6 * (64 * 64 + 64 * 600)
    assert s["model_flops_per_token"] == encoder + attention + head
    assert s["executed_flops_per_token"] == round(encoder + attention + head * slots / 32)
    # XLA's own count covers every matmul the step runs, plus elementwise work.
    assert s["xla_flops_per_token"] >= 0.95 * s["executed_flops_per_token"]
    assert s["ratio"] == pytest.approx(
        [r for r in tiny_runs["train_step"] if r.get("impl") == "climb_jax"][0]["tokens_per_s"]
        / [r for r in tiny_runs["train_step"] if r.get("impl") == "torch"][0]["tokens_per_s"], rel=1e-2)
    assert s["utilisation"] == pytest.approx(s["achieved_model_gflops"] / s["peak_gflops"], abs=2e-3)


# -- curriculum_overhead ------------------------------------------------------------------------


def test_curriculum_overhead_compiles_once_across_the_curriculum(tiny_runs):
    rows = {r["config"]: r for r in tiny_runs["curriculum"] if r["bench"] == "curriculum_overhead"}
    assert set(rows) == {"vanilla", "all_three"}  # vanilla is always added as the reference
    for r in rows.values():
        assert r["compiles"] == 1
        assert r["step_s"] > 0 and isinstance(r["overhead_pct"], float)
    assert rows["vanilla"]["overhead_pct"] == 0.0 == rows["vanilla"]["xla_flops_vs_vanilla_pct"]
    # The curricula add work (the vocabulary map, the gates, a second head's update) and a cond that
    # XLA counts with both of its branches: more FLOPs, never fewer.
    assert rows["all_three"]["xla_flops_vs_vanilla_pct"] > 0
    both = rows["all_three"]
    assert both["units"] == ["mlm", "pos_nv"]
    # The sweep crossed the objective switch at 12.5% (noun/verb first, then MLM) ...
    assert both["objective_weights_seen"] == [[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]
    assert both["objective_weights_at_measure"] == [1.0, 0.0]
    # ... and the whole vocabulary pacing: starting difficulty 0.1 until 6.25%, full by 87.5%.
    paces = both["vocab_paces_seen"]
    assert paces[0] == pytest.approx(0.1) and paces[-1] == 1.0
    assert all(a <= b for a, b in zip(paces, paces[1:]))
    assert 0.1 < both["vocab_pace_at_measure"] < 1.0
    assert both["target_pct"] == 5.0 and isinstance(both["target_met"], bool)


def test_curriculum_overhead_reports_sampler_cost(tiny_runs):
    (s,) = [r for r in tiny_runs["curriculum"] if r["bench"] == "data_curriculum_sampler"]
    for key in ("vanilla_us_per_batch", "curriculum_uniform_us_per_batch", "curriculum_weighted_us_per_batch"):
        assert s[key] > 0
    assert s["num_sequences"] == 10_000 and s["batch"] == 8


def test_curriculum_overhead_rejects_unknown_configuration():
    from benchmarks import curriculum_overhead

    with pytest.raises(SystemExit, match="unknown configuration"):
        curriculum_overhead.main(["--tiny", "--configs", "vocab_typo"])


# -- helpers ------------------------------------------------------------------------------------


def test_flops_per_token_small_preset():
    from climb_jax.models.roberta import RobertaConfig

    small = RobertaConfig(vocab_size=8192, hidden_size=256, num_layers=8, num_heads=8, intermediate_size=2048)
    f = common.flops_per_token(small, 128, head_positions=20)
    assert f["encoder"] == 6 * 8 * (4 * 256 ** 2 + 2 * 256 * 2048) == 62_914_560
    assert f["attention"] == 12 * 8 * 128 * 256
    assert f["model"] == f["encoder"] + f["attention"] + 6 * (256 ** 2 + 256 * 8192)
    assert f["executed"] == pytest.approx(f["model"] - f["head_full"] * (1 - 20 / 128))


def test_interleaved_rotates_the_order():
    calls = []
    runners = {n: (lambda steps, n=n: calls.append((n, steps))) for n in "abc"}
    times = common.interleaved(runners, rounds=3, steps=2)
    assert [c[0] for c in calls] == list("abc" "bca" "cab")
    assert all(s == 2 for _, s in calls)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    s = common.summarize([0.3, 0.1, 0.2])
    assert (s["step_s"], s["step_s_median"], s["rounds"]) == (0.1, 0.2, 3)


def test_synthetic_batch_is_well_formed():
    b = common.synthetic_batch(1, 16, 64, 1000)
    ids, pos = b["input_ids"], b["pos_ids"]
    assert ids.dtype == np.int32 and pos.dtype == np.int8 and ids.shape == pos.shape == (16, 64)
    assert (ids[:, 0] == 0).all() and (ids[:, -1] == 2).all()
    inner = ids[:, 1:-1]
    assert inner.min() >= 5 and inner.max() < 1000  # no special ids inside a row
    counts = np.bincount(inner.ravel(), minlength=1000)
    assert counts[5:15].sum() > 5 * counts[100:110].sum()  # Zipf: low ids (frequent ranks) dominate
    assert pos.min() >= 0 and pos.max() <= 11 and (pos[:, 0] == 11).all()
    np.testing.assert_array_equal(ids, common.synthetic_batch(1, 16, 64, 1000)["input_ids"])


# -- convergence --------------------------------------------------------------------------------


def test_convergence_reports_both_curves_side_by_side():
    recs = _records(_start("convergence.py", "--quick"))
    intervals = [r for r in recs if r["bench"] == "convergence_interval"]
    (summary,) = [r for r in recs if r["bench"] == "convergence"]
    assert [r["end_step"] for r in intervals] == list(range(summary["interval"], summary["steps"] + 1,
                                                            summary["interval"]))
    for r in intervals:
        assert math.isfinite(r["ours"]) and math.isfinite(r["reference"])
        assert r["gap"] == pytest.approx(r["ours"] - r["reference"], abs=2e-5)
        assert 0 < r["gap_se"] < 1
    gaps = [r["gap"] for r in intervals]
    assert summary["max_abs_gap"] == pytest.approx(max(abs(g) for g in gaps), abs=2e-5)
    assert summary["mean_gap"] == pytest.approx(float(np.mean(gaps)), abs=2e-5)
    assert summary["ours_compiles"] == 1
    # Equal initial weights, one batch masked once, dropout off: equal losses.
    same = summary["same_batch_initial_loss"]
    assert same["targets"] > 0 and same["abs_diff"] < 1e-4
    assert same["abs_diff"] == pytest.approx(abs(same["ours"] - same["reference"]), abs=2e-6)
    # Both sides applied the same learning rates at every step, and our defaults are the reference's recipe.
    assert set(summary["learning_rate_max_abs_diff"]) == {"encoder", "mlm_head"}
    assert max(summary["learning_rate_max_abs_diff"].values()) < 1e-8
    assert {k: summary["ours_recipe"][k] for k in summary["reference_recipe"] if k in summary["ours_recipe"]} == \
        {k: v for k, v in summary["reference_recipe"].items() if k in summary["ours_recipe"]}
    # Both implementations learn from the same rows.
    for side in ("ours", "reference"):
        assert intervals[-1][side] < intervals[0][side] < summary["first_loss"][side] + 0.5


# -- host pipeline -------------------------------------------------------------------------------


def test_host_pipeline_rates_and_shortfalls(capsys):
    """Every curriculum gets every stage's rate; against a rate no host can meet, every (curriculum,
    stage) is a shortfall with its fraction of the need; against a trivial one, none is."""
    from benchmarks import host_pipeline

    curricula = ("vanilla", "data:ngram", "data:source_order")
    assert host_pipeline.main(["--quick", "--batches=5", "--max_train_words=20000", "--batch=16",
                               f"--curricula={','.join(curricula)}", "--target_sequences_per_s=1e12"]) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    data = next(r for r in recs if r["bench"] == "host_pipeline_data")
    assert "climb_corpus" in data["prepared"] and data["train_sequences"] > 0
    rows = {r["curriculum"]: r for r in recs if r["bench"] == "host_pipeline"}
    assert set(rows) == set(curricula)
    for r in rows.values():
        assert all(r[f"{s}_sequences_per_s"] > 0 for s in host_pipeline.STAGES)
    (summary,) = [r for r in recs if r["bench"] == "host_pipeline_summary"]
    assert summary["needed_sequences_per_s"] == 2e12 and summary["keeps_up"] is False
    short = {(s["curriculum"], s["stage"]): s for s in summary["shortfalls"]}
    assert set(short) == {(c, s) for c in curricula for s in host_pipeline.STAGES}
    for (c, s), item in short.items():
        assert item["fraction_of_needed"] == pytest.approx(rows[c][f"{s}_sequences_per_s"] / 2e12, rel=1e-2, abs=1e-6)
    results = {c: {s: rows[c][f"{s}_sequences_per_s"] for s in host_pipeline.STAGES} for c in curricula}
    assert host_pipeline.shortfalls(results, 1.0) == [] and host_pipeline.shortfalls(results, None) == []
    slowest = min((r, c, s) for c in curricula for s, r in results[c].items())
    assert summary["slowest"][:2] == [slowest[1], slowest[2]]


# -- accelerator ---------------------------------------------------------------------------------


def test_accelerator_quick_reports_rates_compiles_and_mfu():
    from benchmarks import accelerator
    from climb_jax.preflight import accelerators

    recs = _records(_start("accelerator.py", "--quick"))
    lines = {r["impl"]: r for r in recs if r["bench"] == "accelerator"}
    (summary,) = [r for r in recs if r["bench"] == "accelerator_summary"]
    assert set(lines) == {"ours", "torch"} and summary["train_step_compiles"] == 1
    tokens = summary["batch"] * summary["seq"]
    for name, r in lines.items():
        assert r["tokens_per_s"] == pytest.approx(tokens / r["step_s"], rel=1e-3)
        assert summary[f"{name}_tokens_per_s"] == r["tokens_per_s"] and math.isfinite(r["last_loss"])
        assert r["mfu"] is None  # a CPU has no entry in the chip table
    assert summary["speedup_vs_torch"] == pytest.approx(lines["ours"]["tokens_per_s"] / lines["torch"]["tokens_per_s"],
                                                        rel=1e-2)
    assert not any(r["bench"] == "accelerator_training" for r in recs)  # --quick trains nothing

    class FakeGpu:
        platform, device_kind = "gpu", "NVIDIA H100 80GB HBM3"

    chip = accelerator.chip_of(FakeGpu())
    assert chip["peak_bf16_flops"] == accelerators.gpu_chip("h100").peak_bf16_flops == 989e12
    assert accelerator.chip_of(type("Unknown", (), {"platform": "gpu", "device_kind": "X1"})())["chip"] is None


def test_checkpoint_stall_times_the_saves_and_restores_what_it_saved():
    recs = _records(_start("checkpoint_stall.py", "--sizes=tiny", "--saves=2", "--every=3"))
    saves = [r for r in recs if r["bench"] == "checkpoint_stall"]
    assert [r["step"] for r in saves] == [3, 6]
    assert all(len(r["step_s_before"]) == 2 and r["save_call_s"] > 0 for r in saves)
    summary = next(r for r in recs if r["bench"] == "checkpoint_stall_summary")
    assert summary["saves"] == 2 and summary["state_mb"] > 1
    assert summary["restored_step"] == 6 and summary["restored_equal"] is True
    integrity = next(r for r in recs if r["bench"] == "checkpoint_integrity")
    assert len(integrity["host_crc32_s"]) == len(integrity["device_digests_s"]) == 5
