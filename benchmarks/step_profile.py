"""Where our train step's time goes: a `jax.profiler` trace joined to the compiled HLO.

Each traced op is looked up in the executable's HLO text (its opcode, the opcodes fused into it and
the JAX source path XLA keeps as `op_name`), then summed by kind (matmul, random numbers, other) and
by pass (forward, backward, update). Used by `train_step.py --profile` and `curriculum_overhead.py
--profile`.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import time

import jax
import numpy as np

from benchmarks import common


_INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.+?) ([a-z][a-z0-9_\-]*)\((.*)$")
_HEADER = re.compile(r"^(?:ENTRY )?%(\S+) .*\{$")
_CONTAINERS = {"while", "conditional", "call", "async-start", "async-done"}
_RNG_NAMES = ("_uniform", "_randint", "random_bits", "threefry", "_bernoulli", "_normal", "random_split",
              "random_fold_in")


def hlo_ops(hlo_text: str) -> dict[str, dict]:
    """Instruction name -> opcode, op_name (the JAX source path) and, for fusions, the fused opcodes."""
    computations: dict[str, set] = {}
    instrs: dict[str, dict] = {}
    current = None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header and " = " not in line:
            current = header.group(1)
            computations[current] = set()
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        name, _, opcode, rest = m.groups()
        if current is not None:
            computations[current].add(opcode)
        calls = re.search(r"calls=%([\w.\-]+)", rest)
        op_name = re.search(r'op_name="([^"]*)"', rest)
        target = re.search(r'custom_call_target="([^"]*)"', rest)
        instrs[name] = {"opcode": opcode, "calls": calls.group(1) if calls else None,
                        "op_name": op_name.group(1) if op_name else "", "target": target.group(1) if target else ""}
    for info in instrs.values():
        info["fused"] = computations.get(info["calls"], set()) if info["calls"] else set()
    return instrs


def classify(info: dict) -> tuple[str, str]:
    """(kind, pass): kind is matmul, rng, container or other; pass is forward, backward or update."""
    op, fused, name = info["opcode"], info["fused"], info["op_name"]
    if op in _CONTAINERS:
        kind = "container"
    elif op in ("dot", "convolution") or fused & {"dot", "convolution"} or "matmul" in info["target"].lower():
        kind = "matmul"
    elif any(k in name for k in _RNG_NAMES) or {"xor", "shift-right-logical"} <= fused:
        kind = "rng"
    else:
        kind = "other"
    phase = "backward" if "transpose(" in name else "forward" if "jvp(" in name else "update"
    return kind, phase


def profile_ours(ours, steps: int, out: common.JsonLines, size: str, trace_dir: str,
                 executed_flops_per_step: float) -> None:
    """`ours` is a `train_step.OurStep` (its `step_fn`, `state`, `batch` and `run`).

    Traces `steps` steps with jax.profiler and sums the time of every compiled op (over all threads):
    by kind (matmul, rng, other) and pass (forward, backward, update), plus the most expensive matmul
    and non-matmul ops."""
    instrs = hlo_ops(ours.step_fn.lower(ours.state, ours.batch, ours.source.at(ours.step)).compile().as_text())
    ours.run(1)
    t0 = time.perf_counter()
    jax.profiler.start_trace(trace_dir)
    ours.run(steps)
    jax.profiler.stop_trace()
    wall = (time.perf_counter() - t0) / steps
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    data = jax.profiler.ProfileData.from_file(files[-1])
    per_op: collections.Counter = collections.Counter()
    busy: collections.Counter = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                name = stats.get("hlo_op")
                if name is None or "train_step" not in str(stats.get("hlo_module", "")):
                    continue
                if instrs.get(name, {}).get("opcode") in _CONTAINERS:
                    continue  # its body's ops are events of their own
                per_op[name] += event.duration_ns / 1e9 / steps
                busy[line.name] += event.duration_ns / 1e9 / steps
    total = sum(per_op.values())
    groups: collections.Counter = collections.Counter()
    for name, sec in per_op.items():
        groups[classify(instrs.get(name, {"opcode": "", "fused": set(), "op_name": "", "target": ""}))] += sec
    matmul = sum(v for (k, _), v in groups.items() if k == "matmul")
    out({"bench": "train_step_profile", "size": size, "steps": steps, "wall_step_s": round(wall, 4),
         "op_time_per_step_s": round(total, 4), "threads_busy_s": sorted(round(v, 4) for v in busy.values()),
         "by_kind_pass_pct": {f"{k}/{p}": round(100 * v / total, 1) for (k, p), v in groups.most_common()},
         "matmul_pct": round(100 * matmul / total, 1),
         # The matmuls' throughput while they run (a dot's event spans its intra-op parallel work).
         "matmul_achieved_gflops": (round(executed_flops_per_step / max(matmul, 1e-12) / 1e9, 1)
                                    if np.isfinite(executed_flops_per_step) else None)})
    def kind(name):
        info = instrs.get(name)
        return classify(info)[0] if info else "?"

    ranked = per_op.most_common()
    top = [n for n, _ in ranked if kind(n) == "matmul"][:6] + [n for n, _ in ranked if kind(n) != "matmul"][:10]
    for name in top:
        sec = per_op[name]
        info = instrs.get(name, {})
        out({"bench": "train_step_profile_op", "size": size, "op": name, "opcode": info.get("opcode"),
             "kind_pass": "/".join(classify(info)) if info else "?", "ms_per_step": round(1e3 * sec, 2),
             "pct": round(100 * sec / total, 1), "source": info.get("op_name", "")[:160]})
