"""A sweep as a job script: a bash script that runs it one run after another, or a Slurm job array
whose task i runs command i. `sweep.py` builds the runs and picks the format (`--format=shell|slurm`).
Standard-library Python, like the rest of `launch/`.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launch.common import REPO_ROOT  # noqa: E402


class SweepRun(Protocol):
    """What a script needs of a run (`sweep.Run`): its name and its command line."""

    @property
    def name(self) -> str: ...

    def command(self, python: str = "python") -> str: ...


def _bash_array(commands: list[str]) -> list[str]:
    return ["COMMANDS=(", *(f"  {shlex.quote(c)}" for c in commands), ")"]


def render_shell(runs: Sequence[SweepRun], python: str = "python", repo: str | Path = REPO_ROOT) -> str:
    """A bash script that runs the sweep one run after another; a failure does not stop the rest."""
    lines = [
        "#!/usr/bin/env bash",
        f"# {len(runs)} runs, one after another; a failed run does not stop the others, the exit status says.",
        "set -u",
        f"cd {shlex.quote(str(repo))}",
        "failed=0",
    ]
    for r in runs:
        lines.append(f"{r.command(python)} || {{ echo {shlex.quote('FAILED: ' + r.name)} >&2; failed=$((failed + 1)); }}")
    lines += [
        'if [ "$failed" -gt 0 ]; then',
        f'  echo "$failed of {len(runs)} runs failed" >&2',
        "  exit 1",
        "fi",
        f'echo "all {len(runs)} runs finished"',
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class SlurmOptions:
    job_name: str = "climb-sweep"
    partition: str | None = None
    time: str = "24:00:00"
    gpus: int = 1
    cpus_per_task: int = 8
    mem: str | None = None
    max_parallel: int | None = None
    log_dir: str = "logs/slurm"


def render_slurm(runs: Sequence[SweepRun], options: SlurmOptions = SlurmOptions(), python: str = "python",
                 repo: str | Path = REPO_ROOT) -> str:
    """A Slurm job array script: task i runs command i. Submit with `sbatch FILE`."""
    array = f"0-{len(runs) - 1}" + (f"%{options.max_parallel}" if options.max_parallel else "")
    log_dir = options.log_dir if options.log_dir.startswith("/") else f"{str(repo).rstrip('/')}/{options.log_dir}"
    head = [
        "#!/bin/bash",
        f"#SBATCH --job-name={options.job_name}",
        f"#SBATCH --array={array}",
        f"#SBATCH --time={options.time}",
        f"#SBATCH --cpus-per-task={options.cpus_per_task}",
    ]
    if options.gpus:
        head.append(f"#SBATCH --gres=gpu:{options.gpus}")
    if options.partition:
        head.append(f"#SBATCH --partition={options.partition}")
    if options.mem:
        head.append(f"#SBATCH --mem={options.mem}")
    head += [
        f"#SBATCH --chdir={repo}",
        f"#SBATCH --output={log_dir}/%x_%A_%a.out",
        f"# {len(runs)} runs. The log folder must exist before `sbatch`: mkdir -p {log_dir}",
        "set -euo pipefail",
        f"cd {shlex.quote(str(repo))}",
        *_bash_array([r.command(python) for r in runs]),
        'echo "task ${SLURM_ARRAY_TASK_ID}: ${COMMANDS[$SLURM_ARRAY_TASK_ID]}"',
        'eval "${COMMANDS[$SLURM_ARRAY_TASK_ID]}"',
    ]
    return "\n".join(head) + "\n"
