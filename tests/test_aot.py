"""The TPU pre-flight: slice -> topology, compiling the tiny model's real train step for a TPU topology
on this CPU machine, the figures derived from it, and the refusals (batch, memory) with their advice.

The compiling tests need libtpu (`pip install "jax[tpu]==<the jax pin>"`, done by .ci/run) and are
skipped with that reason without it.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from climb_jax.preflight import accelerators, aot
from climb_jax.preflight import report as aot_report
from climb_jax.preflight import table as aot_table
from climb_jax.errors import ConfigError
from tests.conftest import REPO
from tests.helpers import tiny_config

needs_libtpu = pytest.mark.skipif(not aot.libtpu_available(),
                                  reason='libtpu is not installed (pip install "jax[tpu]==<the jax pin>")')


@pytest.mark.parametrize("acc, topology, chips, hosts", [
    ("v4-8", "v4:2x2x1", 4, 1), ("v4-16", "v4:2x2x2", 8, 2), ("v4-32", "v4:2x2x4", 16, 4),
    ("v4-128", "v4:4x4x4", 64, 16), ("v5p-8", "v5:2x2x1", 4, 1), ("v5litepod-1", "v5e:1x1", 1, 1),
    ("v5litepod-8", "v5e:2x4", 8, 1), ("v5litepod-16", "v5e:4x4", 16, 4), ("v5litepod-256", "v5e:16x16", 256, 64),
    ("v6e-8", "v6e:2x4", 8, 1),
])
def test_accelerator_types_map_to_topologies(acc, topology, chips, hosts):
    shape = accelerators.slice_shape(acc)
    assert (shape.topology_name, shape.chips, shape.hosts) == (topology, chips, hosts)


def test_unknown_layouts_ask_for_an_explicit_topology():
    with pytest.raises(ConfigError, match="--topology=v4:4x4x12"):
        accelerators.slice_shape("v4-384").topology_name  # noqa: B018 - 192 chips: not a power of two


@needs_libtpu
@pytest.mark.parametrize("acc", ["v4-8", "v4-32", "v5litepod-16"])
def test_topology_devices_are_chips_on_their_hosts(acc):
    """One compile-only device per chip (v4's two cores form one megacore device, as on a real VM),
    spread over the slice's hosts."""
    shape = accelerators.slice_shape(acc)
    devices = aot.topology_devices(shape)
    assert len(devices) == shape.chips
    assert len({d.process_index for d in devices}) == shape.hosts
    assert {d.device_kind for d in devices} == {shape.chip.name}


def test_a_batch_that_does_not_split_is_refused_before_compiling(tmp_path):
    config = tiny_config(tmp_path)
    config.trainer.batch_size = 6
    with pytest.raises(ConfigError, match="batch_size=6 is not divisible by the 4 chips of v4-8"):
        aot.preflight(config, "v4-8")


def test_cli_refusal_is_one_error_line_and_exit_2():
    result = subprocess.run(
        [sys.executable, "-m", "climb_jax.aot", "--config=configs/vanilla.py:smoke", "--accelerator-type=v4-32",
         "--config.trainer.batch_size=24"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: trainer.batch_size=24 is not divisible by the 16 chips of v4-32; use a multiple of 16."]


@needs_libtpu
def test_tiny_train_step_scorer_and_evaluation_compile_for_v4_8(tmp_path):
    """The run's own state, shardings and step (RunSetup.compile) compiled for a v4-8 without a TPU."""
    import jax
    import numpy as np

    config = tiny_config(tmp_path, "data_cl", "self_perplexity,smoke")
    config.model.dtype = "bfloat16"
    config.eval.at_end = True
    report = aot.preflight(config, "v4-8", cache_dir=tmp_path / "aot")
    assert (report.topology, report.chips, report.hosts, report.mesh) == ("v4:2x2x1", 4, 1,
                                                                          {"data": 4, "fsdp": 1, "model": 1})
    # Parameters are replicated (mesh.fsdp=1): every chip holds all of them, in float32.
    shapes = aot.run_setup(config).abstract_state()
    param_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(shapes.params))
    assert report.state_bytes["params"] == param_bytes
    assert report.state_bytes["opt_state"] >= 2 * param_bytes  # Adam's two moments, float32
    step = report.step
    assert step.argument_bytes >= report.state_total
    assert step.alias_bytes >= report.state_total * 0.9  # the donated state is updated in place
    # XLA's FLOPs are one chip's share: about 6 x (matmul parameters) x tokens / chips, plus attention.
    m = aot.run_setup(config).model
    tokens = config.trainer.batch_size * config.data.seq_len
    matmul = m.num_layers * (4 * m.hidden_size ** 2 + 2 * m.hidden_size * m.intermediate_size)
    assert 0.5 < step.flops * report.chips / (6 * matmul * tokens) < 3
    assert set(report.programs) == {"train_step", "self_perplexity_" + config.data_curriculum.self_perplexity_estimator,
                                    "eval_pll"}
    # The derived figures, in closed form from the compiled ones and the chip table.
    chip = accelerators.TPU_GENERATIONS["v4"].chip
    step_s = max(step.flops / chip.peak_bf16_flops, step.bytes_accessed / chip.hbm_bytes_per_s)
    assert report.step_s == step_s
    assert report.tokens_per_s == pytest.approx(tokens / step_s)
    assert report.chip_hours(400_000) == pytest.approx(400_000 * step_s * 4 / 3600)
    assert report.fits and report.peak_bytes < chip.hbm_bytes
    # A second pre-flight of the same programs is read from the cache, figure for figure.
    again = aot.preflight(config, "v4-8", cache_dir=tmp_path / "aot")
    assert again.programs == report.programs
    assert "fits" in report.render() and "estimate" in report.render()


@needs_libtpu
def test_a_run_that_does_not_fit_says_what_to_change():
    """float32 activations of 2048 x 512 tokens on one 16 GiB v5e chip: the compiler refuses it."""
    result = subprocess.run(
        [sys.executable, "-m", "climb_jax.aot", "--config=configs/vanilla.py:smoke", "--accelerator-type=v5litepod-1",
         "--config.trainer.batch_size=2048", "--config.data.seq_len=512", "--noextras", "--nocache"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr
    assert "DOES NOT FIT" in result.stdout
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "does not fit v5litepod-1" in error[0]
    assert "--config.model.dtype=bfloat16" in error[0] and "--config.trainer.batch_size=1024" in error[0]


def _report(**program) -> aot_report.Preflight:
    chip = accelerators.TPU_GENERATIONS["v4"].chip
    step = aot_report.Program("train_step", **{"argument_bytes": 10, "output_bytes": 10, "alias_bytes": 10,
                                               "temp_bytes": 5, "code_bytes": 1, "flops": 2.75e14,
                                               "bytes_accessed": 6e11, **program})
    return aot_report.Preflight("v4-8", "v4:2x2x1", 4, 1, chip, "x", "small", "float32", 128, 128, 1000,
                                {"data": 4, "fsdp": 1, "model": 1}, {"params": 4, "opt_state": 6, "other": 0},
                                {"train_step": step})


def test_roofline_and_fit_in_closed_form():
    r = _report()
    assert r.step.total_bytes == 16 and r.peak_bytes == 16 and r.fits
    assert (r.step_s, r.bound, r.mfu) == (1.0, "compute", 1.0)  # 2.75e14 / 275e12 s; 6e11 / 1.2e12 = 0.5 s
    r = _report(bytes_accessed=2.4e12)  # 2 s of memory traffic against 1 s of compute
    assert (r.step_s, r.bound, r.mfu) == (2.0, "memory", 0.5)
    assert r.tokens_per_s == 128 * 128 / 2.0
    assert r.chip_hours() == pytest.approx(1000 * 2.0 * 4 / 3600)


def test_a_report_over_the_hbm_limit_is_refused_with_advice():
    r = _report(temp_bytes=int(accelerators.TPU_GENERATIONS["v4"].chip.hbm_bytes * aot_report.HBM_HEADROOM))
    assert not r.fits
    with pytest.raises(ConfigError) as e:
        aot_report.enforce(r)
    msg = str(e.value)
    assert "does not fit v4-8" in msg and "--config.model.dtype=bfloat16" in msg
    assert "--config.trainer.batch_size=64" in msg and "--config.mesh.fsdp=4" in msg
    assert aot_report.Preflight.from_json(r.to_json()) == r  # reports round-trip through the cache format
    assert not dataclasses.replace(r, dtype="bfloat16").fits


def test_table_rows_render_with_400k_step_chip_hours():
    r = _report(bytes_accessed=2.4e12)  # 2 s per step on 4 chips, 1000 steps configured
    row = {"slice": "v4-8", "size": "small", "variant": "vanilla", **r.summary()}
    missing = {"slice": "v4-8", "size": "large", "variant": "all", "error": "not compiled yet"}
    lines = aot_table.markdown_table([row, missing]).splitlines()
    assert len(lines) == 4 and lines[0].startswith("| slice | size | curriculum |")
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells == ["v4-8", "small", "vanilla", "0.00 (32 GiB)", "yes", "2000.00 ms", "0.01 M", "50%",
                     f"{400_000 * 2.0 * 4 / 3600:,.0f}"]
    assert "not compiled yet" in lines[3]


@needs_libtpu
def test_libtpu_on_a_host_without_tpu_starts_jax_on_the_cpu_quietly():
    """libtpu, installed for the pre-flight, makes JAX start the TPU runtime on any host, which prints
    start-up errors; the command lines choose the CPU first where no TPU chip (and no GPU plugin) is."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    show = "import jax; print(jax.devices())"

    def run(code):
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                              timeout=120)

    plain = run(show)  # what the command lines did before: the TPU runtime's noise (if this stops, drop the fix)
    assert "CpuDevice" in plain.stdout and "TPU_WORKER_HOSTNAMES" in plain.stderr
    quiet = run("from climb_jax.parallel import mesh; mesh.skip_absent_tpu(); " + show)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "[CpuDevice(id=0)]"
    assert "TPU" not in quiet.stderr, quiet.stderr
    chosen = run("import os; os.environ['JAX_PLATFORMS'] = 'cpu,tpu'; from climb_jax.parallel import mesh; "
                 "mesh.skip_absent_tpu(); import jax; print(jax.config.jax_platforms)")
    assert chosen.stdout.strip() == "cpu,tpu"  # the user's JAX_PLATFORMS is left alone
