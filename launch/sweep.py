"""The curriculum comparison grid: every preset × seeds, as commands, a shell script or a Slurm job array.

    python launch/sweep.py                                  # the 25-config comparison grid × seeds 0,1,2
    python launch/sweep.py --smoke --seeds=0,1 vanilla vocab_cl:token_ids,log --run
    python launch/sweep.py --format=slurm --out=sweep.sbatch --config.model.dtype=bfloat16
    python -m climb_jax.compare $(python launch/sweep.py --format=workdirs)

A grid entry is `config:preset words` (`vocab_cl:pos_tags,log`, `configs/data_cl.py:ngram,linear`,
`vanilla`). Each run gets the workdir `<root>/<config stem>__<preset words joined by '-', or
'default'>__seed<k>` and `--config.seed=<k>`; `parse_run_name` reads such a name back. Words added to
every run (`--smoke`, `--words=large,bf16`) change the scale, not the curriculum, so they are not part
of the name: give such sweeps their own `--root` (with `--smoke` the default root is runs/smoke_sweep).
Commands are relative to the repository root and run from there.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence, TextIO

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launch.common import REPO_ROOT, LaunchError, run_main  # noqa: E402
from launch.sweep_scripts import SlurmOptions, render_shell, render_slurm  # noqa: E402
from climb_jax.config import schema  # noqa: E402
from climb_jax.errors import ConfigError  # noqa: E402

# ------------------------------------------------------------------------------------------------
# The comparison grid (CLIMB's configurations), in report order.

# The config files of the grid, baseline first; each declares its part of the grid (`PAPER_GRID`,
# next to its presets).
GRID_FILES = ("configs/vanilla.py", "configs/vocab_cl.py", "configs/data_cl.py", "configs/objective_cl.py")
DEFAULT_SEEDS = (0, 1, 2)
BASELINE = "vanilla"  # the config stem every curriculum is compared against


@dataclass(frozen=True)
class Entry:
    """One configuration of the grid: a config file and its preset words (the curriculum's identity)."""

    config: str  # path relative to the repository root, e.g. configs/vocab_cl.py
    words: tuple[str, ...] = ()

    @property
    def stem(self) -> str:
        return Path(self.config).stem

    @property
    def label(self) -> str:
        return f"{self.stem}__{'-'.join(self.words) or 'default'}"


def comparison_entries() -> list[Entry]:
    """Vanilla, then every vocabulary (6), data (10) and objective (8) curriculum preset: 25 configs."""
    return [Entry(path, tuple(words)) for path in GRID_FILES for words in schema.load_module(path).PAPER_GRID]


_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.]*")


def _check_word(word: str, where: str) -> str:
    if "=" in word:
        raise LaunchError(
            f"{where}: '{word}' is a key=value setting; grid entries take preset words only. "
            "Pass settings as overrides for every run instead, e.g. --config.trainer.lr=3e-4."
        )
    if not _WORD.fullmatch(word) or "__" in word:
        raise LaunchError(f"{where}: preset word '{word}' must be letters, digits, '_' and '.' (no '-', no '__').")
    return word


def parse_entry(text: str) -> Entry:
    """`vocab_cl:pos_tags,log`, `configs/vocab_cl.py:pos_tags,log` or `vanilla` -> an `Entry`."""
    config, _, arg = text.partition(":")
    config = config.strip()
    if not config:
        raise LaunchError(f"grid entry '{text}' names no config; write e.g. vocab_cl:pos_tags,log.")
    if "/" not in config and not config.endswith(".py"):
        config = f"configs/{config}.py"
    stem = Path(config).stem
    if "__" in stem or not stem:
        raise LaunchError(f"grid entry '{text}': config file names may not contain '__'.")
    try:
        parsed = schema.parse_arg(arg)
    except ConfigError as e:
        raise LaunchError(f"grid entry '{text}': {e}") from None
    for setting in parsed.settings:
        _check_word(f"{setting.key}=...", f"grid entry '{text}'")
    words = tuple(_check_word(w, f"grid entry '{text}'") for w in parsed.words)
    if "smoke" in words:
        raise LaunchError(f"grid entry '{text}': add 'smoke' to every run with --smoke, not to one entry.")
    return Entry(config, words)


# ------------------------------------------------------------------------------------------------
# Runs.


@dataclass(frozen=True)
class Run:
    """One training run of a sweep: an entry, a seed and where it writes."""

    entry: Entry
    seed: int
    root: str
    extra_words: tuple[str, ...] = ()  # scale words such as smoke: in the config argument, not the name
    overrides: tuple[str, ...] = field(default=())

    @property
    def config(self) -> str:
        return self.entry.config

    @property
    def words(self) -> tuple[str, ...]:
        return self.entry.words

    @property
    def name(self) -> str:
        return f"{self.entry.label}__seed{self.seed}"

    @property
    def workdir(self) -> str:
        return f"{self.root.rstrip('/')}/{self.name}"

    @property
    def config_arg(self) -> str:
        words = self.entry.words + self.extra_words
        return f"{self.entry.config}:{','.join(words)}" if words else self.entry.config

    def argv(self, python: str = "python") -> list[str]:
        return [python, "-m", "climb_jax.main", f"--config={self.config_arg}", f"--workdir={self.workdir}",
                f"--config.seed={self.seed}", *self.overrides]

    def command(self, python: str = "python") -> str:
        return shlex.join(self.argv(python))


@dataclass(frozen=True)
class RunName:
    stem: str
    words: tuple[str, ...]
    seed: int

    @property
    def label(self) -> str:
        """The configuration without the seed: runs with the same label are seeds of one curriculum."""
        return f"{self.stem}__{'-'.join(self.words) or 'default'}"

    @property
    def config_label(self) -> str:
        """The label `climb_jax.main` stores in the run's config.json (`vocab_cl:pos_tags-log`, `vanilla`)."""
        return f"{self.stem}:{'-'.join(self.words)}" if self.words else self.stem

    @property
    def is_baseline(self) -> bool:
        return self.stem == BASELINE and not self.words


_RUN_NAME = re.compile(r"(?P<stem>[^/]+?)__(?P<words>[A-Za-z0-9_.-]+?)__seed(?P<seed>\d+)")


def parse_run_name(name: str) -> RunName:
    """Reads `vocab_cl__pos_tags-log__seed1` (or a workdir ending in it) back into its parts."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    match = _RUN_NAME.fullmatch(base)
    if match is None:
        raise LaunchError(f"'{base}' is not a sweep run name (<config>__<words or default>__seed<k>).")
    words = match.group("words")
    return RunName(match.group("stem"), () if words == "default" else tuple(words.split("-")), int(match.group("seed")))


def _check_overrides(overrides: Iterable[str]) -> tuple[str, ...]:
    out = []
    for o in overrides:
        if not o.startswith("--config.") or "=" not in o:
            raise LaunchError(f"unexpected argument {o!r}: extra arguments must be config overrides like --config.trainer.lr=3e-4.")
        if o.startswith("--config.seed="):
            raise LaunchError("--config.seed is set per run by the sweep; choose seeds with --seeds.")
        out.append(o)
    return tuple(out)


def grid(
    entries: Sequence[str | Entry] | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    *,
    smoke: bool = False,
    words: Sequence[str] = (),
    root: str | None = None,
    overrides: Sequence[str] = (),
) -> list[Run]:
    """The runs of a sweep, config-major then seed: `entries` (default: the comparison grid) × `seeds`."""
    parsed = [e if isinstance(e, Entry) else parse_entry(e) for e in (entries if entries is not None else comparison_entries())]
    if not parsed:
        raise LaunchError("the grid is empty; name at least one entry.")
    labels = [e.label for e in parsed]
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise LaunchError(f"the grid names these configurations twice: {', '.join(dupes)}.")
    seeds = tuple(seeds)
    if not seeds or any((not isinstance(s, int)) or s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise LaunchError(f"seeds must be distinct non-negative integers, got {list(seeds)}.")
    extra = tuple(_check_word(w, "--words") for w in words if w != "smoke") + (("smoke",) if smoke or "smoke" in words else ())
    root = root or ("runs/smoke_sweep" if "smoke" in extra else "runs/sweep")
    overrides = _check_overrides(overrides)
    return [Run(e, s, root, extra, overrides) for e in parsed for s in seeds]


# ------------------------------------------------------------------------------------------------
# Output formats: the commands and the workdirs, one a line.


def render_lines(runs: Sequence[Run], python: str = "python") -> str:
    return "".join(r.command(python) + "\n" for r in runs)


def render_workdirs(runs: Sequence[Run]) -> str:
    return "".join(r.workdir + "\n" for r in runs)


# The shell script and the Slurm job array: launch/sweep_scripts.py.


# ------------------------------------------------------------------------------------------------
# Local execution.


@dataclass(frozen=True)
class RunResult:
    run: Run
    returncode: int
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_all(runs: Sequence[Run], *, python: str = sys.executable, cwd: str | Path = REPO_ROOT,
            env: dict[str, str] | None = None, log_dir: str | Path | None = None,
            out: TextIO | None = None) -> list[RunResult]:
    """Runs the sweep here, one run after another, continuing past failures.

    With `log_dir`, each run's output goes to `<log_dir>/<run name>.log` instead of the terminal.
    """
    out = out or sys.stdout
    results = []
    for i, run in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {run.command(python)}", file=out, flush=True)
        start = time.monotonic()
        if log_dir is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(log_dir) / f"{run.name}.log", "w", encoding="utf-8") as log:
                code = subprocess.run(run.argv(python), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        else:
            code = subprocess.run(run.argv(python), cwd=cwd, env=env).returncode
        result = RunResult(run, code, time.monotonic() - start)
        results.append(result)
        status = "ok" if result.ok else f"FAILED (exit {code})"
        print(f"[{i}/{len(runs)}] {run.name}: {status} in {result.seconds:.1f} s", file=out, flush=True)
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"{len(failed)} of {len(results)} runs failed:", file=out)
        for r in failed:
            print(f"  {r.run.name} (exit {r.returncode})", file=out)
    else:
        print(f"all {len(results)} runs finished", file=out)
    out.flush()
    return results


# ------------------------------------------------------------------------------------------------
# Command line.


def parse_seeds(text: str) -> tuple[int, ...]:
    """`0,1,2` or `0-2` (or a mix: `0-2,7`)."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if m is None:
            raise LaunchError(f"--seeds={text!r}: use numbers and ranges such as 0,1,2 or 0-4.")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise LaunchError(f"--seeds={text!r}: the range {part} runs backwards.")
        seeds.extend(range(lo, hi + 1))
    return tuple(seeds)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("entries", nargs="*", help="grid entries config[:words] (default: the 25-config comparison grid)")
    p.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), help="e.g. 0,1,2 or 0-4 (default: 0,1,2)")
    p.add_argument("--smoke", action="store_true", help="add the `smoke` preset word to every run")
    p.add_argument("--words", default="", help="more preset words for every run, e.g. large,bf16 (not in the names)")
    p.add_argument("--root", help="parent of the workdirs, local or gs:// (default: runs/sweep or runs/smoke_sweep)")
    p.add_argument("--format", choices=("lines", "shell", "slurm", "workdirs"), default="lines")
    p.add_argument("--out", help="write to this file instead of standard output")
    p.add_argument("--python", help="interpreter of the commands (default: python when written, this one with --run)")
    p.add_argument("--run", action="store_true", help="run the sweep here, one run after another, with this Python")
    p.add_argument("--log-dir", help="with --run: one log file per run here instead of the terminal")
    s = p.add_argument_group("slurm (--format=slurm)")
    s.add_argument("--job-name", default=SlurmOptions.job_name)
    s.add_argument("--partition")
    s.add_argument("--time", default=SlurmOptions.time)
    s.add_argument("--gpus", type=int, default=SlurmOptions.gpus, help="GPUs per run (0: CPU only)")
    s.add_argument("--cpus-per-task", type=int, default=SlurmOptions.cpus_per_task)
    s.add_argument("--mem")
    s.add_argument("--max-parallel", type=int, help="at most this many runs at once")
    s.add_argument("--slurm-log-dir", default=SlurmOptions.log_dir, help="relative to the repository root")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = [a for a in argv if a.startswith("--config.")]  # overrides for every run
    args = build_parser().parse_args([a for a in argv if not a.startswith("--config.")])
    runs = grid(
        args.entries or None,
        parse_seeds(args.seeds),
        smoke=args.smoke,
        words=[w.strip() for w in args.words.split(",") if w.strip()],
        root=args.root,
        overrides=extra,
    )
    if args.run:
        results = run_all(runs, python=args.python or sys.executable, log_dir=args.log_dir)
        return 0 if all(r.ok for r in results) else 1
    args.python = args.python or "python"
    if args.format == "lines":
        text = render_lines(runs, args.python)
    elif args.format == "workdirs":
        text = render_workdirs(runs)
    elif args.format == "shell":
        text = render_shell(runs, args.python)
    else:
        options = SlurmOptions(args.job_name, args.partition, args.time, args.gpus, args.cpus_per_task, args.mem,
                               args.max_parallel, args.slurm_log_dir)
        text = render_slurm(runs, options, args.python)
    if args.out:
        Path(args.out).write_text(text)
        if args.format == "shell":
            Path(args.out).chmod(0o755)
        print(f"wrote {len(runs)} runs to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None))
