"""A pre-flight's result for one slice: what each compiled program needs per chip, whether the run fits
the chip's HBM, and the roofline estimate of its step time and cost. Pure arithmetic over the compiled
programs' memory and cost analyses, so it round-trips through the pre-flight cache as JSON; compiling
is `aot`'s job. A run that does not fit is refused here (`enforce`), with what to change (`advice`)."""

from __future__ import annotations

import dataclasses

from climb_jax.errors import ConfigError
from climb_jax.preflight import accelerators

# Fraction of HBM a program may use. The compiler itself refuses a program above about 98% (15.75 of
# v5e's 16 GiB); the rest of the margin is for what runs beside the step (host transfers of the next
# batch, a checkpoint's device-to-host copies) and for allocation that is not perfectly packed.
HBM_HEADROOM = 0.9


def _size(b: float) -> str:
    return f"{b / 1e9:.2f} GB" if b >= 1e8 else f"{b / 1e6:.1f} MB"


@dataclasses.dataclass
class Program:
    """One compiled function's per-device figures (bytes and FLOPs as XLA reports them)."""

    name: str
    argument_bytes: int = 0
    output_bytes: int = 0
    alias_bytes: int = 0
    temp_bytes: int = 0
    code_bytes: int = 0
    flops: float = 0.0
    bytes_accessed: float = 0.0
    compile_s: float = 0.0
    out_of_memory: str = ""  # the compiler's message when it refused the program for lack of HBM

    @property
    def total_bytes(self) -> int:
        """What the program needs at once: its arguments, outputs not written in place, scratch and code."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes


@dataclasses.dataclass
class Preflight:
    accelerator_type: str
    topology: str
    chips: int
    hosts: int
    chip: accelerators.Chip
    label: str
    size: str
    dtype: str
    global_batch: int
    seq_len: int
    total_steps: int
    mesh: dict
    state_bytes: dict  # per device: params, opt_state, other
    programs: dict  # name -> Program; "train_step" always
    notes: list = dataclasses.field(default_factory=list)

    # -- derived figures ---------------------------------------------------------------------
    @property
    def step(self) -> Program:
        return self.programs["train_step"]

    @property
    def hbm_usable(self) -> float:
        return self.chip.hbm_bytes * HBM_HEADROOM

    def program_need(self, name: str) -> int:
        """Bytes per device while `name` runs. Scoring and evaluation run between train steps with the
        whole train state still resident, sharing its parameters: their need is the state plus what
        they add (other arguments, outputs, temporaries, code)."""
        p = self.programs[name]
        if name == "train_step":
            return p.total_bytes
        params = self.state_bytes["params"]
        return self.state_total + max(p.argument_bytes - params, 0) + p.output_bytes + p.temp_bytes + p.code_bytes

    @property
    def state_total(self) -> int:
        return sum(self.state_bytes.values())

    @property
    def peak_bytes(self) -> int:
        return max(self.program_need(n) for n in self.programs)

    @property
    def out_of_memory(self) -> str:
        return next((p.out_of_memory for p in self.programs.values() if p.out_of_memory), "")

    @property
    def fits(self) -> bool:
        return not self.out_of_memory and self.peak_bytes <= self.hbm_usable

    @property
    def step_s(self) -> float:
        """Roofline estimate (see the module docstring)."""
        s = self.step
        return max(s.flops / self.chip.peak_bf16_flops, s.bytes_accessed / self.chip.hbm_bytes_per_s)

    @property
    def bound(self) -> str:
        s = self.step
        return "compute" if s.flops / self.chip.peak_bf16_flops >= s.bytes_accessed / self.chip.hbm_bytes_per_s else "memory"

    @property
    def tokens_per_s(self) -> float:
        return self.global_batch * self.seq_len / self.step_s if self.step_s > 0 else float("nan")

    @property
    def sequences_per_s(self) -> float:
        return self.global_batch / self.step_s if self.step_s > 0 else float("nan")

    @property
    def mfu(self) -> float:
        """XLA-counted FLOPs per step over what the chips could do in the estimated step time."""
        return self.step.flops / (self.step_s * self.chip.peak_bf16_flops) if self.step_s > 0 else float("nan")

    @property
    def wall_s(self) -> float:
        return self.total_steps * self.step_s

    def chip_hours(self, steps: int | None = None) -> float:
        return (self.total_steps if steps is None else steps) * self.step_s * self.chips / 3600.0

    # -- output --------------------------------------------------------------------------------
    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["chip"] = dataclasses.asdict(self.chip)
        d["programs"] = {k: dataclasses.asdict(v) for k, v in self.programs.items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Preflight":
        d = dict(d)
        d["chip"] = accelerators.Chip(**d["chip"])
        d["programs"] = {k: Program(**v) for k, v in d["programs"].items()}
        return cls(**d)

    def summary(self) -> dict:
        """The derived figures, for JSON output and the table."""
        return {
            "accelerator_type": self.accelerator_type, "topology": self.topology, "label": self.label,
            "total_steps": self.total_steps, "mesh": self.mesh,
            "fits": self.fits, "peak_bytes_per_device": self.peak_bytes, "hbm_bytes": self.chip.hbm_bytes,
            "state_bytes_per_device": self.state_total, "temp_bytes_per_device": self.step.temp_bytes,
            "flops_per_step_per_device": self.step.flops, "step_s_estimate": self.step_s, "bound": self.bound,
            "tokens_per_s_estimate": self.tokens_per_s, "mfu_estimate": self.mfu,
            "wall_hours_estimate": self.wall_s / 3600.0, "chip_hours_estimate": self.chip_hours(),
            "out_of_memory": self.out_of_memory,
        }

    def render(self) -> str:
        gb = _size
        sb = self.state_bytes
        lines = [
            f"pre-flight: {self.label} on {self.accelerator_type} (topology {self.topology}: {self.chips} "
            f"chip{'s' if self.chips > 1 else ''} of {self.chip.name}, {self.hosts} host{'s' if self.hosts > 1 else ''}), mesh {self.mesh}",
            f"  model {self.size} in {self.dtype}; global batch {self.global_batch} x {self.seq_len} tokens "
            f"({self.global_batch // self.chips} sequences per chip)",
            "  per device (= per chip):",
            f"    parameters {gb(sb['params'])} + optimizer {gb(sb['opt_state'])} + other state {gb(sb['other'])}",
        ]
        for name, p in self.programs.items():
            if p.out_of_memory:
                lines.append(f"    {name}: does not fit: {p.out_of_memory}")
                continue
            lines.append(f"    {name}: temporaries {gb(p.temp_bytes)}, code {gb(p.code_bytes)}, "
                         f"needs {gb(self.program_need(name))} (compiled in {p.compile_s:.0f} s)")
        lines.append(f"    peak {gb(self.peak_bytes)} of {gb(self.chip.hbm_bytes)} HBM "
                     f"({100 * self.peak_bytes / self.chip.hbm_bytes:.0f}%; the limit used is {HBM_HEADROOM:.0%}): "
                     + ("fits" if self.fits else "DOES NOT FIT"))
        s = self.step
        if s.out_of_memory:
            return "\n".join(lines + [f"  note: {n}" for n in self.notes])
        lines += [
            f"    FLOPs per step {s.flops:.3e}; bytes accessed {s.bytes_accessed:.3e}",
            f"  estimate (roofline against {self.chip.peak_bf16_flops / 1e12:.0f} TFLOP/s and "
            f"{self.chip.hbm_bytes_per_s / 1e12:.2f} TB/s per chip; {self.bound}-bound; calibrate on a real run):",
            f"    step {self.step_s * 1e3:.2f} ms, {self.tokens_per_s:,.0f} tokens/s "
            f"({self.sequences_per_s:,.0f} sequences/s), MFU {self.mfu:.0%}",
            f"    {self.total_steps:,} steps: {self.wall_s / 3600:.1f} h wall-clock, {self.chip_hours():,.0f} chip-hours",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def advice(report: Preflight) -> str:
    """What to change when a run does not fit, most effective first."""
    tips = []
    if report.dtype == "float32":
        tips.append("--config.model.dtype=bfloat16 (halves activation memory; parameters stay float32)")
    per_chip = report.global_batch // report.chips
    if per_chip > 1:
        smaller = report.global_batch // 2
        tips.append(f"a smaller per-chip batch, e.g. --config.trainer.batch_size={smaller} "
                    f"({per_chip // 2} sequences per chip instead of {per_chip})")
    fsdp = report.mesh.get("fsdp", 1)
    if fsdp < report.chips:
        tips.append(f"--config.mesh.fsdp={report.chips} (splits the {report.state_total / 1e9:.2f} GB of parameters "
                    "and optimizer state per chip over the slice)")
    tips.append("a larger slice or a generation with more HBM per chip")
    return "; or ".join(tips)


def enforce(report: Preflight) -> None:
    """Raises ConfigError when the run does not fit the slice."""
    if report.fits:
        return
    why = report.out_of_memory.rstrip(". ") or (f"needs {report.peak_bytes / 1e9:.2f} GB per chip, more than "
                                   f"{HBM_HEADROOM:.0%} of the {report.chip.hbm_bytes / 1e9:.1f} GB of HBM")
    raise ConfigError(f"{report.label} does not fit {report.accelerator_type}: {why}. Try {advice(report)}.")
