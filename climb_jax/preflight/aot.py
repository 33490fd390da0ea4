"""Pre-flight for a TPU slice, on a machine without one: does the run fit, and what will it cost.

  python -m climb_jax.aot --config=configs/vanilla.py:small,bf16 --accelerator-type=v4-8
  python -m climb_jax.aot --config=configs/vocab_cl.py:large,bf16 --accelerator-type=v4-32 --config.mesh.fsdp=4
  python -m climb_jax.aot --table                # the pre-flight table of launch/README.md

Why: a slice is billed from the minute it exists, and a config that runs out of HBM, or whose global
batch does not split over the slice, should fail here rather than after provisioning. XLA compiles
for a TPU topology without a TPU once libtpu is installed (`pip install "jax[tpu]==<the jax pin>"`):
the run's real state, shardings and train step come from `RunSetup.compile(mesh)`, the same wiring
training uses, over a mesh of the topology's devices, and `jit(...).trace(abstract args).lower()
.compile()` gives the TPU executable with its memory and cost analyses. The self-perplexity scoring
function and the evaluation functions are compiled the same way when the run uses them.

What it prints, per device (one device is one chip on every generation: v4 and v5p run their two
TensorCores as one megacore device): parameter and optimizer bytes, the compiled step's temporary
bytes, the total against the chip's HBM (`climb_jax.preflight.accelerators`), XLA's FLOPs per step, and from
those a **roofline estimate** of the step time, max(FLOPs / peak FLOP/s, bytes accessed / HBM
bandwidth), with tokens/s, MFU, wall-clock and chip-hours for `trainer.total_steps`. XLA's own
`optimal_seconds` is not used: it comes back negative on this libtpu. "bytes accessed" is XLA's count
over the optimized program and tends to overstate traffic, so the estimate leans slow; calibrate it
against the `step_time_s` of the first real run.

A config whose batch does not divide over the slice is a `ConfigError` (exit 2) here; one that does not
fit is refused by `report.enforce`, with what to change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from climb_jax.preflight import accelerators
from climb_jax.preflight.report import Preflight, Program
from climb_jax.errors import ClimbError, ConfigError

# libtpu takes a machine-wide lock file when it loads; a compile-only client needs no exclusive
# use of a chip, and several pre-flights (or a test run beside one) must be able to run at once.
_LIBTPU_ENV = {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
CACHE_VERSION = 1  # bump when the report's fields or their meaning change


# --------------------------------------------------------------------------------------------
# Compiling for a topology.


def _configure_jax() -> None:
    """Before JAX starts: compile-only TPU work needs no TPU backend, and libtpu must not lock."""
    for k, v in _LIBTPU_ENV.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def libtpu_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("libtpu") is not None


@contextlib.contextmanager
def _quiet_stderr():
    """Silences the process's stderr (file descriptor 2) while libtpu loads: on a machine without a TPU
    it prints several lines of warnings about the missing TPU metadata, which do not concern a
    compile-only client and would bury the report."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def topology_devices(shape: accelerators.SliceShape, topology: str | None = None) -> list:
    """The slice's devices as the compiler sees them (compile-only: nothing runs on them)."""
    _configure_jax()
    if not libtpu_available():
        raise ConfigError('compiling for a TPU needs libtpu: pip install "jax[tpu]==<the jax version>" '
                          "(about 700 MB), or skip the pre-flight.")
    from jax.experimental import topologies

    name = topology or shape.topology_name
    try:
        with _quiet_stderr():
            desc = topologies.get_topology_desc(
                topology_name=name, platform="tpu", chip_config_name=shape.generation.chip_config,
                chips_per_host_bounds=shape.chips_per_host_bounds, num_slices=1, wrap=(False, False, False))
    except Exception as e:  # noqa: BLE001 - libtpu's errors are runtime errors with a long trace
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"libtpu cannot describe topology '{name}' for {shape.accelerator_type}: {first}") from None
    devices = list(desc.devices)
    if len(devices) != shape.chips:
        raise ConfigError(f"topology '{name}' has {len(devices)} devices but {shape.accelerator_type} has "
                          f"{shape.chips} chips; give a topology of that size.")
    return devices


def _per_device_bytes(tree) -> int:
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def _is_out_of_memory(e: Exception) -> str:
    text = str(e)
    if "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text or "out of memory" in text.lower():
        for line in text.splitlines():
            if "memory" in line.lower():
                return line.strip()[:300]
        return text.strip().splitlines()[0][:300]
    return ""


def _versions() -> str:
    import jax

    try:
        from importlib.metadata import version

        libtpu = version("libtpu")
    except Exception:  # noqa: BLE001 - not installed: topology_devices says so first
        libtpu = "none"
    return f"jax {jax.__version__}, libtpu {libtpu}, report v{CACHE_VERSION}"


class NotCached(ClimbError):
    """`cached_only` asked for figures that were never compiled."""


def compile_program(name: str, jitted, args: Sequence[Any], *, target: str = "", cache_dir: Path | None = None,
                    cached_only: bool = False) -> Program:
    """AOT-compiles `jitted` for abstract `args` (ShapeDtypeStructs carrying shardings).

    With `cache_dir`, the figures are kept under a hash of the lowered program, the target slice and
    the JAX and libtpu versions: lowering takes seconds, compiling for a TPU tens of seconds to
    minutes, and identical programs (the same step under two curricula that do not change it) or an
    unchanged rerun then cost no compile at all."""
    t0 = time.perf_counter()
    lowered = jitted.trace(*args).lower()
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256("\n".join([name, target, _versions(), lowered.as_text()]).encode()).hexdigest()[:32]
        path = Path(cache_dir) / f"{digest}.json"
        if path.exists():
            try:
                return Program(**json.loads(path.read_text()))
            except (ValueError, TypeError):
                pass  # an unreadable entry is recomputed
    if cached_only:
        raise NotCached(f"{name} for {target} is not in the cache")
    from jax._src import config as jax_config  # no public context manager for this option

    try:
        # Not into JAX's persistent compilation cache (which a test session or a user may have switched
        # on): a compile-only TPU executable cannot be loaded back without a TPU, and the small
        # model's is over 100 MB.
        with jax_config.enable_compilation_cache(False):
            compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - only an out-of-memory refusal is an answer; others propagate
        oom = _is_out_of_memory(e)
        if not oom:
            raise
        program = Program(name, compile_s=time.perf_counter() - t0, out_of_memory=oom)
    else:
        mem = compiled.memory_analysis()
        cost = compiled.cost_analysis()
        if isinstance(cost, (list, tuple)):
            cost = cost[0] if cost else {}
        cost = cost or {}
        program = Program(
            name,
            argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
            alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
            code_bytes=int(mem.generated_code_size_in_bytes),
            flops=float(cost.get("flops", 0.0)), bytes_accessed=float(cost.get("bytes accessed", 0.0)),
            compile_s=time.perf_counter() - t0,
        )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(program)))
        os.replace(tmp, path)
    return program


def abstract_batch(config, sharding) -> dict:
    """The train step's batch as the training loop hands it over (token ids int32, POS ids int8)."""
    import jax
    import numpy as np

    shape = (int(config.trainer.batch_size), int(config.data.seq_len))
    return {"input_ids": jax.ShapeDtypeStruct(shape, np.int32, sharding=sharding),
            "pos_ids": jax.ShapeDtypeStruct(shape, np.int8, sharding=sharding)}


def check_batch(config, shape: accelerators.SliceShape, mesh=None) -> None:
    """The global batch must split over the mesh's batch axes and over the slice's hosts."""
    from climb_jax.parallel.mesh import Placement

    batch = int(config.trainer.batch_size)
    if mesh is not None:
        Placement(mesh, batch_sizes=(batch,), what="trainer.batch_size")
    elif batch % shape.chips:
        raise ConfigError(f"trainer.batch_size={batch} is not divisible by the {shape.chips} chips of "
                          f"{shape.accelerator_type}; use a multiple of {shape.chips}.")
    if batch % shape.hosts:
        raise ConfigError(f"trainer.batch_size={batch} is not divisible by the {shape.hosts} hosts of "
                          f"{shape.accelerator_type}; use a multiple of {shape.hosts}.")


def _extra_programs(config, setup, compiled, mesh, compile_fn) -> tuple[list[tuple[str, Callable[[], Program]]], list[str]]:
    """The other device programs the run compiles: self-perplexity scoring, evaluation."""
    import jax
    import numpy as np

    programs: list[tuple[str, Callable[[], Program]]] = []
    notes: list[str] = []
    params = compiled.abstract_state.params
    dc = config.data_curriculum
    if dc.scorer == "self_perplexity":
        from climb_jax.curriculum.data_curriculum import mlm_mask_probability
        from climb_jax.curriculum.self_perplexity import SelfPerplexityScorer

        estimator = str(dc.self_perplexity_estimator)
        scorer = SelfPerplexityScorer(setup.model, estimator, mask_probability=mlm_mask_probability(config),
                                      batch_size=int(dc.rescore_batch_size), mesh=mesh)
        rows, L = int(dc.rescore_batch_size), int(config.data.seq_len)
        bs = scorer.placement.batch_sharding
        ids = jax.ShapeDtypeStruct((rows, L), np.int32, sharding=bs)
        if estimator == "pll":
            args = (params, ids, jax.ShapeDtypeStruct((rows,), np.int32, sharding=bs))
        else:
            key = jax.ShapeDtypeStruct((2,), np.uint32, sharding=scorer.placement.replicated)
            args = (params, ids, jax.ShapeDtypeStruct((rows,), np.int32, sharding=bs), key)
        programs.append((f"self_perplexity_{estimator}", lambda: compile_fn(
            f"self_perplexity_{estimator}", scorer._fn, args)))
    programs += _eval_programs(config, setup, params, mesh, compile_fn)
    if programs and programs[-1][0] == "eval_pll" and int(config.eval.get("mlm_sequences", 0)) > 0:
        notes.append("the dev MLM loss (eval.mlm_sequences) is not compiled here: it runs 32 rows per call, "
                     "fewer than eval_pll's eval.batch_size copies of the same length")
    return programs, notes


def _eval_programs(config, setup, params, mesh, compile_fn):
    """The evaluator's scoring function (pseudo-log-likelihood of masked copies: BLiMP, dev
    pseudo-perplexity and the checkpoint-selection metric all run it) at `eval.batch_size` copies of
    the training length, with the parameters where the train state keeps them; none when the run
    never evaluates."""
    import jax
    import numpy as np

    from climb_jax.eval import evaluator as evaluator_lib
    from climb_jax.eval import perplexity as ppl

    if not evaluator_lib.evaluates(config):
        return []
    scorer = ppl.PLLScorer(setup.model, batch_size=int(config.eval.batch_size), mesh=mesh)
    rows, width = scorer.batch_size, scorer.bucket_length(int(config.data.seq_len))
    sharding = scorer.placement.batch_sharding
    vec = jax.ShapeDtypeStruct((rows,), np.int32, sharding=sharding)
    args = (ppl.mlm_params(params), jax.ShapeDtypeStruct((rows, width), np.int32, sharding=sharding), vec, vec, vec)
    return [("eval_pll", lambda: compile_fn("eval_pll", scorer._fn, args))]


def run_setup(config, parsed=None):
    """The run's `RunSetup` with the configured vocabulary size (no data needs building: shapes are all
    the compiler needs)."""
    from climb_jax.train.setup import RunSetup

    return RunSetup.from_config(config, vocab_size=int(config.data.vocab_size), parsed=parsed)


def preflight(config, accelerator_type: str, *, topology: str | None = None, extras: bool = True,
              label: str | None = None, cache_dir: Path | None = None, cached_only: bool = False) -> Preflight:
    """Compiles the run of `config` for `accelerator_type` and returns its figures (see the module
    docstring); raises ConfigError for a batch that does not split over the slice."""
    shape = accelerators.slice_shape(accelerator_type)
    from climb_jax.config import schema

    parsed = schema.validate(config)
    check_batch(config, shape)
    devices = topology_devices(shape, topology)

    import numpy as np

    from climb_jax.parallel import mesh as mesh_lib

    mesh = mesh_lib.create_mesh(config.mesh, devices=np.array(devices))
    check_batch(config, shape, mesh)
    setup = run_setup(config, parsed)
    compiled = setup.compile(mesh)
    state = compiled.abstract_state
    state_bytes = {"params": _per_device_bytes(state.params), "opt_state": _per_device_bytes(state.opt_state)}
    state_bytes["other"] = _per_device_bytes(state) - state_bytes["params"] - state_bytes["opt_state"]
    target = f"{accelerator_type} {topology or shape.topology_name}"
    compile_fn = lambda name, fn, args: compile_program(name, fn, args, target=target, cache_dir=cache_dir,  # noqa: E731
                                                        cached_only=cached_only)
    programs = {"train_step": compile_fn("train_step", compiled.step,
                                         (state, abstract_batch(config, compiled.batch_sharding),
                                          compiled.abstract_curriculum()))}
    notes = []
    if extras:
        more, notes = _extra_programs(config, setup, compiled, mesh, compile_fn)
        for name, build in more:
            programs[name] = build()
    return Preflight(
        accelerator_type=accelerator_type, topology=topology or shape.topology_name, chips=shape.chips,
        hosts=shape.hosts, chip=shape.chip, label=label or str(config.get("label") or config.name),
        size=str(config.model.size), dtype=str(config.model.dtype), global_batch=int(config.trainer.batch_size),
        seq_len=int(config.data.seq_len), total_steps=int(config.trainer.total_steps),
        mesh={k: int(v) for k, v in mesh.shape.items()}, state_bytes=state_bytes, programs=programs, notes=notes,
    )


def default_cache_dir() -> Path:
    return Path(os.environ.get("CLIMB_AOT_CACHE", Path.home() / ".cache" / "climb_jax" / "aot"))
