"""What every launcher shares: the error type, the pinned JAX version, and plan steps.

A launcher builds a *plan* (a list of steps) from its arguments first and only then either prints it
(`--dry-run`) or executes it. Building the plan never touches the network or the file system beyond
reading `requirements.txt`, so a dry run is exact, fast and needs no `gcloud`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence, TextIO

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # when run as `python launch/x.py`
    sys.path.insert(0, str(REPO_ROOT))

from climb_jax.errors import ClimbError  # noqa: E402  (stdlib-only module)


class LaunchError(ClimbError):
    """A launch that cannot go ahead as asked; the message says what to change."""


def pinned_jax_version(requirements: Path) -> str:
    """The `jax==X` pin of a requirements file: accelerator wheels must match the CPU pin exactly."""
    try:
        text = requirements.read_text()
    except OSError as e:
        raise LaunchError(f"cannot read {requirements}: {e.strerror}; pass --jax-version or point at the repository root.") from None
    match = re.search(r"^\s*jax\s*==\s*([0-9][0-9A-Za-z.+-]*)\s*(?:#.*)?$", text, flags=re.MULTILINE)
    if match is None:
        raise LaunchError(f"{requirements} has no 'jax==<version>' line; add the pin or pass --jax-version.")
    return match.group(1)


# ------------------------------------------------------------------------------------------------
# Plan steps.


@dataclass(frozen=True)
class Comment:
    """A line for the reader; printed as `# text` in a dry run and on stderr when executing."""

    text: str

    def render(self) -> list[str]:
        return [f"# {line}" if line else "#" for line in self.text.splitlines() or [""]]


@dataclass(frozen=True)
class Command:
    """One external command (`argv[0] == 'gcloud'` is resolved to the gcloud binary at execution).

    `env` is added to the environment; `tee` appends the combined output to a local file while
    still streaming it (the GPU launcher's log file); `cwd` is the local folder it runs in; `failure`
    replaces the generic message when it exits with an error (the command has said why already).
    """

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    tee: str | None = None
    cwd: str | None = None
    failure: str | None = None

    def render(self) -> list[str]:
        words = list(self.argv)
        if self.env:
            words = ["env", *(f"{k}={v}" for k, v in self.env.items()), *words]
        line = shlex.join(words)
        if self.tee:
            line += f" 2>&1 | tee -a {shlex.quote(self.tee)}"
        if self.cwd:
            line = f"cd {shlex.quote(self.cwd)} && {line}"
        return [line]


@dataclass(frozen=True)
class MakeDir:
    """A local directory the next command needs (printed as a comment: it is not a gcloud command)."""

    path: str

    def render(self) -> list[str]:
        return [f"# (local) mkdir -p {shlex.quote(self.path)}"]


@dataclass(frozen=True)
class PollUntil:
    """Repeat `argv` (whose output is one state word) until it prints one of `done`; fail on `failed`."""

    argv: tuple[str, ...]
    done: tuple[str, ...]
    failed: tuple[str, ...]
    interval_s: float = 30.0
    timeout_s: float = 24 * 3600.0

    def render(self) -> list[str]:
        return [
            f"# repeated every {self.interval_s:g} s until it prints {' or '.join(self.done)}:",
            shlex.join(self.argv),
        ]


Step = Comment | Command | MakeDir | PollUntil


def render(plan: Sequence[Step]) -> str:
    """The plan as a dry run prints it: commands one per line (shell-quoted), the rest as comments."""
    return "\n".join(line for step in plan for line in step.render()) + "\n"


def resolve_gcloud(explicit: str | None) -> str:
    """The gcloud binary, or a `LaunchError` that says how to get one."""
    if explicit:
        path = shutil.which(explicit)
        if path is None:
            raise LaunchError(f"--gcloud={explicit} is not an executable file; point it at the gcloud binary.")
        return path
    path = shutil.which("gcloud")
    if path is None:
        raise LaunchError(
            "gcloud is not installed or not on PATH. Install the Google Cloud CLI "
            "(https://cloud.google.com/sdk/docs/install), run `gcloud auth login`, or pass "
            "--gcloud=/path/to/gcloud. Use --dry-run to print the commands without running them."
        )
    return path


def _tee(argv: list[str], env: dict[str, str], log_path: str, out: TextIO) -> int:
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            out.flush()
            log.write(line)
            log.flush()
        return proc.wait()


def local_argv(argv: Sequence[str], gcloud: str | None = None) -> list[str]:
    """`argv` as it runs here: a leading 'gcloud' becomes the gcloud binary (`resolve_gcloud`)."""
    if argv and argv[0] == "gcloud":
        return [resolve_gcloud(gcloud), *argv[1:]]
    return list(argv)


def capture(argv: Sequence[str], *, gcloud: str | None = None) -> subprocess.CompletedProcess:
    """Runs a command and returns its exit status and output (for commands whose output is an answer,
    such as a state word), without showing it."""
    try:
        return subprocess.run(local_argv(argv, gcloud), capture_output=True, text=True)
    except FileNotFoundError:
        raise LaunchError(f"cannot run '{argv[0]}': not found. Is it installed and on PATH?") from None


def stream(argv: Sequence[str], *, gcloud: str | None = None, out: TextIO | None = None) -> tuple[int, str | None]:
    """Runs a command, streaming its output; returns its exit status and the last `error: ...` line it
    printed (a run's own reason for stopping, without the `[worker N] ` prefix), or None."""
    out = out or sys.stdout
    last_error = None
    try:
        proc = subprocess.Popen(local_argv(argv, gcloud), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, errors="replace")
    except FileNotFoundError:
        raise LaunchError(f"cannot run '{argv[0]}': not found. Is it installed and on PATH?") from None
    assert proc.stdout is not None
    with proc.stdout:
        for line in proc.stdout:
            out.write(line)
            out.flush()
            found = re.search(r"\berror: (.+)", line)
            if found:
                last_error = found.group(1).strip()
    return proc.wait(), last_error


def execute(plan: Sequence[Step], *, gcloud: str | None = None, out: TextIO | None = None) -> None:
    """Runs the plan in order and stops at the first failing command with a `LaunchError`."""
    import time

    out = out or sys.stdout

    def argv_of(argv: tuple[str, ...]) -> list[str]:
        return local_argv(argv, gcloud)

    for step in plan:
        if isinstance(step, Comment):
            print("\n".join(step.render()), file=sys.stderr, flush=True)
        elif isinstance(step, MakeDir):
            Path(step.path).mkdir(parents=True, exist_ok=True)
        elif isinstance(step, Command):
            argv = argv_of(step.argv)
            env = {**os.environ, **step.env}
            try:
                if step.tee:
                    code = _tee(argv, env, step.tee, out)
                else:
                    code = subprocess.run(argv, env=env, cwd=step.cwd).returncode
            except FileNotFoundError:
                raise LaunchError(f"cannot run '{argv[0]}': not found. Is it installed and on PATH?") from None
            if code != 0:
                raise LaunchError(step.failure or f"command failed with exit code {code}: {shlex.join(step.argv)}")
        elif isinstance(step, PollUntil):
            argv = argv_of(step.argv)
            deadline = time.monotonic() + step.timeout_s
            while True:
                result = subprocess.run(argv, capture_output=True, text=True)
                state = result.stdout.strip()
                if result.returncode == 0 and state in step.done:
                    break
                if state in step.failed:
                    raise LaunchError(f"'{shlex.join(step.argv)}' reports {state}; see `gcloud` for the reason.")
                if time.monotonic() > deadline:
                    raise LaunchError(f"gave up after {step.timeout_s:g} s waiting for {' or '.join(step.done)} (last: {state or result.stderr.strip()}).")
                print(f"# state: {state or 'unknown'}; waiting {step.interval_s:g} s", file=sys.stderr, flush=True)
                time.sleep(step.interval_s)
        else:  # pragma: no cover - the Step union is closed
            raise TypeError(step)


def finish(plan: Sequence[Step], *, dry_run: bool, gcloud: str | None = None) -> int:
    """Prints or executes a plan; the exit status for `main`."""
    if dry_run:
        sys.stdout.write(render(plan))
        return 0
    execute(plan, gcloud=gcloud)
    return 0


def run_main(main_fn, argv: Sequence[str] | None) -> int:
    """Calls a launcher's `main`, turning a `LaunchError` into a one-line message and exit status 2."""
    try:
        return main_fn(argv)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
