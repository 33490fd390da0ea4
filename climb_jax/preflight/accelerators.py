"""The one table of accelerator chips: TPU generations (slice shapes, topology names, runtime images)
and the published per-chip figures (HBM, peak bfloat16 FLOP/s, HBM bandwidth) every estimate uses.

Pure Python (no JAX): the launchers import it to plan a slice, `climb_jax.aot` to compile for one, and
`benchmarks/accelerator.py` to compute MFU against a GPU's peak.

Accelerator types count TensorCores on v4 and v5p (two per chip) and chips on v5e and v6e. JAX shows
one device per chip on all four: v4 and v5p run their two cores as one "megacore" device, so every
per-device figure below is a per-chip figure.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from climb_jax.errors import ConfigError

GiB = 1 << 30


@dataclass(frozen=True)
class Chip:
    """One accelerator chip's published figures (dense bfloat16 peak, without sparsity)."""

    name: str
    hbm_bytes: int
    peak_bf16_flops: float
    hbm_bytes_per_s: float


@dataclass(frozen=True)
class TpuGeneration:
    """How an accelerator type `<prefix>-<N>` maps to chips, hosts and a compile topology.

    `topology` is the generation's name in libtpu's topology strings (`v4:2x2x1`, `v5e:4x4`);
    `chip_config` 'megacore' makes the compiler see one device per chip, as a real VM does.
    Slices up to `max_single_host_chips` chips live on one VM; larger ones have `chips_per_host`.
    """

    prefix: str
    runtime_version: str
    cores_per_chip: int
    chips_per_host: int
    max_single_host_chips: int
    topology: str
    torus_dims: int  # 3 (v4, v5p) or 2 (v5e, v6e)
    chip_config: str
    chip: Chip


TPU_GENERATIONS: dict[str, TpuGeneration] = {
    g.prefix: g
    for g in (
        TpuGeneration("v4", "tpu-ubuntu2204-base", cores_per_chip=2, chips_per_host=4, max_single_host_chips=4,
                      topology="v4", torus_dims=3, chip_config="megacore",
                      chip=Chip("TPU v4", 32 * GiB, 275e12, 1.2e12)),
        TpuGeneration("v5litepod", "v2-alpha-tpuv5-lite", cores_per_chip=1, chips_per_host=4, max_single_host_chips=8,
                      topology="v5e", torus_dims=2, chip_config="default",
                      chip=Chip("TPU v5 lite", 16 * GiB, 197e12, 0.819e12)),
        TpuGeneration("v5p", "v2-alpha-tpuv5", cores_per_chip=2, chips_per_host=4, max_single_host_chips=4,
                      topology="v5", torus_dims=3, chip_config="megacore",
                      chip=Chip("TPU v5", 95 * 10**9, 459e12, 2.765e12)),
        TpuGeneration("v6e", "v2-alpha-tpuv6e", cores_per_chip=1, chips_per_host=4, max_single_host_chips=8,
                      topology="v6e", torus_dims=2, chip_config="default",
                      chip=Chip("TPU v6 lite", 32 * GiB, 918e12, 1.64e12)),
    )
}

# GPUs, by a lower-case substring of `jax.devices()[0].device_kind` (first match wins: longer names first).
GPUS: tuple[tuple[str, Chip], ...] = (
    ("h200", Chip("NVIDIA H200", 141 * 10**9, 989e12, 4.8e12)),
    ("h100 pcie", Chip("NVIDIA H100 PCIe", 80 * 10**9, 756e12, 2.0e12)),
    ("h100", Chip("NVIDIA H100 SXM", 80 * 10**9, 989e12, 3.35e12)),
    ("a100", Chip("NVIDIA A100", 80 * 10**9, 312e12, 2.0e12)),
    ("l4", Chip("NVIDIA L4", 24 * 10**9, 121e12, 0.3e12)),
)


def gpu_chip(device_kind: str) -> Chip | None:
    """The table's entry for a GPU's `device_kind`, or None when the table does not know it."""
    kind = device_kind.lower()
    for key, chip in GPUS:
        if key in kind:
            return chip
    return None


@dataclass(frozen=True)
class SliceShape:
    accelerator_type: str
    generation: TpuGeneration
    chips: int
    hosts: int

    @property
    def chip(self) -> Chip:
        return self.generation.chip

    @property
    def topology_name(self) -> str:
        """libtpu's name of the slice, e.g. `v4:2x2x4` for v4-32: the torus grows by doubling its
        last smallest side (2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, ...; 1x1, 1x2, 2x2, 2x4, 4x4, ...),
        which is how Cloud TPU lays out its power-of-two slices."""
        return f"{self.generation.topology}:{'x'.join(map(str, self.torus))}"

    @property
    def torus(self) -> tuple[int, ...]:
        g = self.generation
        if self.chips & (self.chips - 1):
            raise ConfigError(f"{self.accelerator_type}: only power-of-two slices have a known layout; "
                              f"give the topology explicitly (e.g. --topology={g.topology}:4x4x12).")
        dims = [2, 2, 1] if g.torus_dims == 3 and self.chips >= 4 else [1] * g.torus_dims
        while math.prod(dims) < self.chips:
            smallest = min(dims)
            last = max(i for i, d in enumerate(dims) if d == smallest)
            dims[last] *= 2
        if math.prod(dims) != self.chips:
            raise ConfigError(f"{self.accelerator_type}: {self.chips} chips have no {g.torus_dims}-D layout here; "
                              f"give the topology explicitly (--topology={g.topology}:AxB...).")
        return tuple(dims)

    @property
    def chips_per_host_bounds(self) -> tuple[int, int, int]:
        """One host's share of the torus (libtpu needs it to split a topology into processes)."""
        if self.hosts == 1:
            dims = list(self.torus) + [1] * (3 - len(self.torus))
            return tuple(dims)  # type: ignore[return-value]
        return (2, 2, 1)


def slice_shape(accelerator_type: str) -> SliceShape:
    """Chips and hosts of an accelerator type such as `v4-32` (4 hosts) or `v5litepod-16` (4 hosts)."""
    match = re.fullmatch(r"([a-z0-9]+)-(\d+)", accelerator_type)
    if match is None or match.group(1) not in TPU_GENERATIONS:
        hint = ""
        if accelerator_type.startswith("v5e-"):
            hint = f" Cloud TPU calls v5e slices 'v5litepod-N': use v5litepod-{accelerator_type[4:]}."
        raise ConfigError(
            f"unknown accelerator type '{accelerator_type}'.{hint} Use <generation>-<size> with a generation of "
            f"{', '.join(TPU_GENERATIONS)} (e.g. v4-8, v4-32, v5litepod-16, v5p-16, v6e-8)."
        )
    gen = TPU_GENERATIONS[match.group(1)]
    size = int(match.group(2))
    chips, rest = divmod(size, gen.cores_per_chip)
    if size <= 0 or rest:
        raise ConfigError(f"'{accelerator_type}': the size of a {gen.prefix} slice counts TensorCores, "
                          f"a multiple of {gen.cores_per_chip}.")
    if chips <= gen.max_single_host_chips:
        return SliceShape(accelerator_type, gen, chips, 1)
    if chips % gen.chips_per_host:
        raise ConfigError(f"'{accelerator_type}' has {chips} chips, not a multiple of {gen.chips_per_host} "
                          "chips per host.")
    return SliceShape(accelerator_type, gen, chips, chips // gen.chips_per_host)
