"""The pre-flight table of launch/README.md: every model size x curriculum kind x slice, compiled by
`climb_jax.aot` (`python -m climb_jax.aot --table`), each row cached so a rerun only fills the gaps."""

from __future__ import annotations

import time
from typing import Callable

from climb_jax.preflight import aot

from climb_jax.config import schema
from climb_jax.errors import ClimbError

TABLE_SIZES = ("small", "medium", "large")
TABLE_SLICES = ("v4-8", "v4-32", "v5litepod-16")
# Curriculum kind -> (config file, preset words, extra presets from other config files). "data" uses
# self-perplexity (the kind with the most device work: its scoring function); "objective" the
# three-unit multitask curriculum (the most heads); "all" combines the three.
TABLE_VARIANTS: dict[str, tuple[str, str, tuple[tuple[str, str], ...]]] = {
    "vanilla": ("vanilla", "", ()),
    "vocab": ("vocab_cl", "token_ids", ()),
    "data": ("data_cl", "self_perplexity", ()),
    "objective": ("objective_cl", "multitask_pos_nv_all_mlm_0", ()),
    "all": ("vocab_cl", "token_ids", (("data_cl", "self_perplexity"), ("objective_cl", "multitask_pos_nv_all_mlm_0"))),
}
def table_config(variant: str, size: str):
    stem, words, extra = TABLE_VARIANTS[variant]
    config = schema.load_module(f"configs/{stem}.py").get_config(",".join(w for w in (words, size, "bf16") if w))
    for other, word in extra:
        schema.load_module(f"configs/{other}.py").PRESETS[word](config)
    with config.unlocked():
        config.label = f"{variant}:{size}"
    return config


def table_rows(sizes=TABLE_SIZES, variants=tuple(TABLE_VARIANTS), slices=TABLE_SLICES, *, cache_dir=None,
               progress: Callable[[dict], None] | None = None, cached_only: bool = False) -> list[dict]:
    """One row per (slice, size, curriculum); `cached_only` leaves out what was never compiled."""
    rows = []
    # The first slice in full, then vanilla and all curricula together on the others, then the rest:
    # the most telling rows come first when a long run is cut short (reruns reuse the cache).
    first = [(acc, size, v) for acc in slices[:1] for size in sizes for v in variants]
    ends = [(acc, size, v) for acc in slices[1:] for size in sizes for v in variants if v in ("vanilla", "all")]
    rest = [(acc, size, v) for acc in slices[1:] for size in sizes for v in variants if v not in ("vanilla", "all")]
    order = {key: i for i, key in enumerate((acc, size, v) for acc in slices for size in sizes for v in variants)}
    for acc, size, variant in first + ends + rest:
        config = table_config(variant, size)
        t0 = time.perf_counter()
        try:
            report = aot.preflight(config, acc, label=f"{variant}:{size}", cache_dir=cache_dir, cached_only=cached_only)
            row = {"slice": acc, "size": size, "variant": variant, **report.summary()}
        except aot.NotCached:
            row = {"slice": acc, "size": size, "variant": variant, "error": "not compiled yet"}
        except ClimbError as e:
            row = {"slice": acc, "size": size, "variant": variant, "error": str(e)}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        if progress:
            progress(row)
        rows.append(row)
    return sorted(rows, key=lambda r: order[(r["slice"], r["size"], r["variant"])])


def markdown_table(rows: list[dict]) -> str:
    head = ("| slice | size | curriculum | GB per chip (HBM) | fits | step (est.) | tokens/s (est.) | MFU (est.) "
            "| chip-hours, 400k steps |")
    out = [head, "|" + "---|" * 9]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['slice']} | {r['size']} | {r['variant']} | | {r['error']} | | | | |")
            continue
        steps_factor = 400_000 / max(r.get("total_steps", 400_000), 1)
        out.append(
            f"| {r['slice']} | {r['size']} | {r['variant']} | {r['peak_bytes_per_device'] / 1e9:.2f} "
            f"({r['hbm_bytes'] / 2**30:.0f} GiB) | {'yes' if r['fits'] else 'NO'} | {r['step_s_estimate'] * 1e3:.2f} ms "
            f"| {r['tokens_per_s_estimate'] / 1e6:.2f} M | {r['mfu_estimate']:.0%} "
            f"| {r['chip_hours_estimate'] * steps_factor:,.0f} |")
    return "\n".join(out)
