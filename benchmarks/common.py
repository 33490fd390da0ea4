"""Helpers shared by the benchmarks: JSON-lines output, the machine's float32 matmul peak, interleaved
timing, synthetic batches, model FLOP counts and config loading.

Interleaving matters on a machine shared with other work: implementations (or configurations) are timed
in rounds, each round running every one of them for a few steps in a rotating order, so a burst of
outside load hits all of them alike; the summary keeps the best round of each (the least disturbed),
and the median round as well.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from climb_jax.constants import BOS_ID, EOS_ID, NUM_POS, NUM_SPECIAL, POS_INDEX  # noqa: E402


# --------------------------------------------------------------------------------------------
# Output.


class JsonLines:
    """Prints one JSON object per line (flushed) and, with `path`, appends the same lines to a file."""

    def __init__(self, path: str | None = None):
        self.path = path
        self.records: list[dict] = []

    def __call__(self, record: dict) -> dict:
        self.records.append(record)
        line = json.dumps(record, sort_keys=False)
        print(line, flush=True)
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        return record


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector extensions that decide float32 matmul speed (avx2, fma, avx512f, amx...)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f in {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16",
                                                        "amx_tile", "avx_vnni"})
    except OSError:
        pass
    return []


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def environment(bench: str, **extra) -> dict:
    """Versions, machine and load: the context every figure needs."""
    import jax

    rec = {
        "bench": f"{bench}_environment",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": usable_cores(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "jax_backend": jax.default_backend(),
        "jax_devices": len(jax.devices()),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
    }
    for name in ("jaxlib", "flax", "optax"):
        try:
            rec[name] = __import__(name).__version__
        except Exception:  # pragma: no cover - a missing optional package is just not reported
            pass
    if os.environ.get("XLA_FLAGS"):
        rec["xla_flags"] = os.environ["XLA_FLAGS"]
    rec.update(extra)
    return rec


# --------------------------------------------------------------------------------------------
# Timing.


def matmul_peak(sizes=(2048, 4096), reps: int = 8, dtype: str = "float32") -> dict:
    """Best GFLOP/s of a jitted square matmul (`dtype` inputs, float32 accumulation): the machine's
    practical peak for this stack. The best of several repetitions: the least disturbed one."""
    import jax
    import jax.numpy as jnp

    dt = jnp.dtype(dtype)
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    out = {}
    for n in sizes:
        ka, kb = jax.random.split(jax.random.PRNGKey(n))
        a = jax.random.normal(ka, (n, n), jnp.float32).astype(dt)
        b = jax.random.normal(kb, (n, n), jnp.float32).astype(dt)
        f(a, b).block_until_ready()
        best = min(_timed(lambda: f(a, b).block_until_ready()) for _ in range(reps))
        out[n] = 2.0 * n ** 3 / best / 1e9
    return {"matmul_gflops": {str(n): round(g, 1) for n, g in out.items()},
            "peak_gflops": round(max(out.values()), 1)}


def torch_matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    """The same square matmul in PyTorch (its own BLAS): context for the reference's speed."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return round(2.0 * n ** 3 / best / 1e9, 1)


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(runners: Mapping[str, Callable[[int], None]], rounds: int, steps: int,
                cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Wall seconds per step of each runner, one value per round (and CPU seconds into `cpu`, if given).

    `runners[name](n)` runs `n` steps and returns once they are finished (it blocks on its results).
    Each round runs every runner once, in an order rotated by one each round (A B C, B C A, ...), so no
    runner always follows the same neighbour. CPU time (this process, all threads) is much less
    sensitive than wall time to other processes taking the cores, so it is recorded as well.
    """
    names = list(runners)
    per_round: dict[str, list[float]] = {n: [] for n in names}
    if cpu is not None:
        cpu.update({n: [] for n in names})
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            c0, t0 = time.process_time(), time.perf_counter()
            runners[name](steps)
            per_round[name].append((time.perf_counter() - t0) / steps)
            if cpu is not None:
                cpu[name].append((time.process_time() - c0) / steps)
    return per_round


def summarize(times: list[float], cpu: list[float] | None = None) -> dict:
    """Best (least disturbed) and median seconds per step over the rounds; CPU seconds when given."""
    arr = np.asarray(times, np.float64)
    out = {"step_s": round(float(arr.min()), 5), "step_s_median": round(float(np.median(arr)), 5),
           "rounds": len(times)}
    if cpu:
        c = np.asarray(cpu, np.float64)
        out["cpu_s"] = round(float(c.min()), 5)
        out["cpu_s_median"] = round(float(np.median(c)), 5)
    return out


# --------------------------------------------------------------------------------------------
# Data and configs.

# Rough universal-tag frequencies of English text (NOUN .. X), for synthetic POS ids.
_POS_FREQ = np.array([0.26, 0.16, 0.07, 0.05, 0.07, 0.09, 0.10, 0.02, 0.03, 0.03, 0.11, 0.01])


def synthetic_batch(seed: int, batch: int, seq: int, vocab: int, zipf_a: float = 1.2) -> dict[str, np.ndarray]:
    """Rows `<s> w ... w </s>` with Zipf-distributed non-special ids (id order = frequency order, as with
    `data.token_order=frequency`) and POS ids drawn from English-like tag frequencies."""
    if vocab <= NUM_SPECIAL + 1 or seq < 3:
        raise ValueError(f"a synthetic batch needs vocab > {NUM_SPECIAL + 1} and seq >= 3, got {vocab}, {seq}")
    rng = np.random.default_rng(seed)
    ranks = rng.zipf(zipf_a, (batch, seq)) - 1
    ids = (NUM_SPECIAL + ranks % (vocab - NUM_SPECIAL)).astype(np.int32)
    ids[:, 0], ids[:, -1] = BOS_ID, EOS_ID
    pos = rng.choice(NUM_POS, size=(batch, seq), p=_POS_FREQ / _POS_FREQ.sum()).astype(np.int8)
    pos[:, 0] = pos[:, -1] = POS_INDEX["X"]
    return {"input_ids": ids, "pos_ids": pos}


def load_config(name: str, arg: str | None = None):
    """`configs/<name>.py`'s `get_config(arg)`, loaded by path like the command line does."""
    from climb_jax.config import schema

    return schema.load(REPO / "configs" / f"{name}.py", arg)


def shrink_to_tiny(config, seq: int = 32, vocab: int = 600) -> None:
    """A 2-layer width-64 model (the test suite's size): for CI-speed runs of a benchmark's logic."""
    config.model.update(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128)
    config.data.seq_len = seq
    config.data.vocab_size = vocab


# --------------------------------------------------------------------------------------------
# FLOPs.


def flops_per_token(model, seq: int, head_positions: float | None = None) -> dict:
    """Training FLOPs per token (forward + backward = 3 x forward; a multiply-add is 2 FLOPs).

      encoder matmuls: 6 x (4 H^2 + 2 H I) x layers         (QKV, attention output, MLP in and out)
      attention:       12 x layers x seq x H                 (Q.K^T and P.V: 2 x 2 x seq x H forward each)
      MLM head:        6 x (H^2 + H V) x positions / seq     (dense H->H and the decoder H->V)

    "model" counts the head at every position (the standard count; what Hugging Face executes);
    "executed" counts it at `head_positions` positions per sequence (our step gathers the masked slots
    first). Embedding lookups, layer norms, softmax, GELU and the optimizer are not counted.
    """
    H, N, I, V = model.hidden_size, model.num_layers, model.intermediate_size, model.vocab_size
    encoder = 6 * N * (4 * H * H + 2 * H * I)
    attention = 12 * N * seq * H
    head = 6 * (H * H + H * V)
    positions = seq if head_positions is None else head_positions
    return {
        "model": encoder + attention + head,
        "executed": encoder + attention + head * positions / seq,
        "encoder": encoder,
        "attention": attention,
        "head_full": head,
    }
