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
def tiny_runs():
    """Both --tiny benchmarks, run side by side (each is mostly single-threaded XLA compilation)."""
    procs = {"train_step": _start("train_step.py", "--tiny"),
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


def test_train_step_summary_checks_parity_and_flops(tiny_runs):
    (s,) = [r for r in tiny_runs["train_step"] if r["bench"] == "train_step_summary"]
    assert s["compiles"] == 1
    assert s["logits_max_abs_diff"] < 1e-4  # the reference runs OUR initial weights
    # Tiny: H=64, 2 layers, I=128, V=600, L=32; 5 MLM head slots per row (ceil(0.15 * 32)).
    encoder = 6 * 2 * (4 * 64 * 64 + 2 * 64 * 128)
    attention = 12 * 2 * 32 * 64
    head = 6 * (64 * 64 + 64 * 600)
    assert s["model_flops_per_token"] == encoder + attention + head
    assert s["executed_flops_per_token"] == round(encoder + attention + head * 5 / 32)
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
