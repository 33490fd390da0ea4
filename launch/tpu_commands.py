"""The gcloud commands of a TPU slice's life, as plans: create, setup, run, logs, stop, status, delete, ssh.

Each `plan_*` takes the parsed command line (`tpu_vm.py`'s) and returns the steps it would run,
without running anything; `tpu_vm.py` prints or executes one plan, and `watch.py` strings several
together in its loop. Nothing here imports JAX: a laptop with `gcloud` is enough.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from climb_jax.preflight import accelerators  # noqa: E402  (pure Python: no JAX)
from climb_jax.preflight.accelerators import SliceShape  # noqa: E402
from climb_jax.errors import ClimbError  # noqa: E402
from launch.common import (  # noqa: E402
    Command,
    Comment,
    LaunchError,
    MakeDir,
    PollUntil,
    Step,
    pinned_jax_version,
)


# ------------------------------------------------------------------------------------------------
# Slices: the table of TPU generations lives in climb_jax.preflight.accelerators (the pre-flight uses it too).


def slice_shape(accelerator_type: str) -> SliceShape:
    """Chips and hosts of an accelerator type such as `v4-32` (4 hosts) or `v5litepod-16` (4 hosts)."""
    try:
        return accelerators.slice_shape(accelerator_type)
    except ClimbError as e:
        raise LaunchError(str(e)) from None


def tpu_hosts(accelerator_type: str) -> int:
    """Number of TPU VM hosts (workers) of an accelerator type."""
    return slice_shape(accelerator_type).hosts


# ------------------------------------------------------------------------------------------------
# Remote layout and shell snippets.

# What a worker needs to train: copied with `scp --recurse` (paths that do not exist are skipped).
CODE_PATHS = ("climb_jax", "configs", "launch", "benchmarks", "requirements.txt", "pyproject.toml", "README.md")
WORKER_ID = (
    "$(curl -sf -H Metadata-Flavor:Google "
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)"
)
# The part-of-speech tagger the data pipeline needs, into ~/nltk_data (on NLTK's default search path).
NLTK_DOWNLOAD = ".venv/bin/python -m nltk.downloader -q -e averaged_perceptron_tagger_eng universal_tagset"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SAFE_REMOTE = re.compile(r"[A-Za-z0-9._/-]+")


def _check_remote_dir(path: str, flag: str) -> str:
    if path.startswith("~") or not _SAFE_REMOTE.fullmatch(path) or ".." in path.split("/"):
        raise LaunchError(
            f"{flag}={path!r}: give a path relative to the home directory (e.g. climb_jax) or an absolute one, "
            "made of letters, digits, '.', '_', '-' and '/'."
        )
    return path.rstrip("/") or "/"


def _check_name(value: str, flag: str) -> str:
    if not _SAFE_NAME.fullmatch(value):
        raise LaunchError(f"{flag}={value!r}: use letters, digits, '.', '_' and '-' only.")
    return value


def _shown(remote_dir: str) -> str:
    """A remote directory as a reader sees it: relative ones live in the home directory."""
    return remote_dir if remote_dir.startswith("/") else f"~/{remote_dir}"


def _default_run_name(workdir: str) -> str:
    base = workdir.rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip("._-")
    return name or "run"


# ------------------------------------------------------------------------------------------------
# gcloud command builders.


def _loc(args) -> list[str]:
    flags = [f"--zone={args.zone}"]
    if args.project:
        flags.append(f"--project={args.project}")
    return flags


def _ssh(args, command: str, worker: str = "all", extra: Sequence[str] = ()) -> Command:
    return Command(("gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *_loc(args), f"--worker={worker}", *extra, f"--command={command}"))


def plan_create(args) -> list[Step]:
    shape = slice_shape(args.accelerator_type)
    version = args.version or shape.generation.runtime_version
    plan: list[Step] = [
        Comment(
            f"{shape.accelerator_type}: {shape.chips} chips on {shape.hosts} host{'s' if shape.hosts > 1 else ''}, "
            f"runtime {version}"
        )
    ]
    if args.queued:
        capacity = ["--spot"] if args.spot else ["--reserved"] if args.reserved else []
        if args.preemptible:
            raise LaunchError("--preemptible applies to plain TPU VMs; queued resources take --spot or --reserved.")
        extra = [f"--valid-until-duration={args.valid_until}"] if args.valid_until else []
        plan.append(
            Command(
                ("gcloud", "compute", "tpus", "queued-resources", "create", args.name, *_loc(args),
                 f"--node-id={args.name}", f"--accelerator-type={shape.accelerator_type}",
                 f"--runtime-version={version}", *capacity, *extra)
            )
        )
        if args.wait:
            plan.append(
                PollUntil(
                    state_query(args).argv,
                    done=("ACTIVE",),
                    failed=("FAILED", "SUSPENDED"),
                    interval_s=args.poll_seconds,
                )
            )
        else:
            plan.append(Comment(f"the slice is ready when `status {args.name} --queued` shows state ACTIVE"))
        return plan
    if args.valid_until:
        raise LaunchError("--valid-until applies to queued resources only; add --queued.")
    capacity = ["--spot"] if args.spot else ["--reserved"] if args.reserved else ["--preemptible"] if args.preemptible else []
    plan.append(
        Command(
            ("gcloud", "compute", "tpus", "tpu-vm", "create", args.name, *_loc(args),
             f"--accelerator-type={shape.accelerator_type}", f"--version={version}", *capacity)
        )
    )
    return plan


def _install_script(args, jax_version: str | None) -> str:
    """Installs uv (it brings a Python >= 3.11, which the TPU images lack), the pinned stack in a venv,
    and NLTK's part-of-speech tagger.

    Without `jax_version` (a cloned tree), the pin is read from the worker's own requirements.txt.
    """
    d = args.remote_dir
    if not re.fullmatch(r"3\.\d+(\.\d+)?", args.python_version):
        raise LaunchError(f"--python-version={args.python_version!r}: give a Python version such as 3.11 or 3.12.")
    if jax_version and not re.fullmatch(r"[0-9][0-9A-Za-z.+-]*", jax_version):
        raise LaunchError(f"--jax-version={jax_version!r} is not a version number such as 0.10.2.")
    if jax_version:
        pin = f"J={jax_version}; "
    else:
        pin = 'J=$(sed -n s/^jax==//p requirements.txt); [ -n "$J" ] || { echo "no jax== pin in requirements.txt" >&2; exit 1; }; '
    return (
        'set -e; export PATH="$HOME/.local/bin:$PATH"; '
        "command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh; "
        f"cd {d}; {pin}"
        f"[ -x .venv/bin/python ] || uv venv --python {args.python_version} .venv; "
        'uv pip install --python .venv/bin/python -r requirements.txt "jax[tpu]==$J"; '
        f"{NLTK_DOWNLOAD}; "
        '.venv/bin/python -c "import jax; print(jax.process_index(), jax.device_count(), jax.local_device_count())"'
    )


def plan_setup(args) -> list[Step]:
    d = _check_remote_dir(args.remote_dir, "--remote-dir")
    plan: list[Step] = []
    if args.git:
        ref_steps = f" && git -C {d} fetch --quiet origin {shlex.quote(args.ref)} && git -C {d} checkout --quiet --detach FETCH_HEAD" if args.ref else ""
        if args.ref:
            fetch = f"([ -d {d}/.git ] || git clone --quiet {shlex.quote(args.git)} {d}){ref_steps}"
        else:
            fetch = f"if [ -d {d}/.git ]; then git -C {d} pull --quiet --ff-only; else git clone --quiet {shlex.quote(args.git)} {d}; fi"
        plan.append(Comment(f"clone {args.git} into {_shown(d)} on every worker"))
        plan.append(_ssh(args, fetch))
        jax_version = args.jax_version
    else:
        source = Path(args.source).resolve()
        if not (source / "climb_jax").is_dir() or not (source / "requirements.txt").is_file():
            raise LaunchError(f"--source={source} is not the repository root: it needs climb_jax/ and requirements.txt.")
        jax_version = args.jax_version or pinned_jax_version(source / "requirements.txt")
        paths = [str(source / p) for p in CODE_PATHS if (source / p).exists()]
        plan.append(Comment(f"copy the code to {_shown(d)} on every worker"))
        plan.append(_ssh(args, f"mkdir -p {d}"))
        plan.append(
            Command(("gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", *paths, f"{args.name}:{d}/", *_loc(args), "--worker=all"))
        )
    for data in args.data:
        local = Path(data).resolve()
        if not local.exists():
            raise LaunchError(f"--data={data} does not exist; give a local corpus directory to copy.")
        plan.append(Comment(f"copy {local} to {_shown(d)}/data/{local.name} (train with --config.data.corpus=data/{local.name})"))
        plan.append(_ssh(args, f"mkdir -p {d}/data"))
        plan.append(
            Command(("gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", str(local), f"{args.name}:{d}/data/", *_loc(args), "--worker=all"))
        )
    if not args.no_install:
        plan.append(Comment(f"install requirements.txt and jax[tpu]=={jax_version or '<its jax pin>'} into {_shown(d)}/.venv, "
                            "and the NLTK tagger, on every worker"))
        plan.append(_ssh(args, _install_script(args, jax_version)))
    return plan


def _check_overrides(overrides: Sequence[str]) -> None:
    for extra in overrides:
        if not extra.startswith("--config.") or "=" not in extra:
            raise LaunchError(f"unexpected argument {extra!r}: extra arguments must be config overrides like --config.trainer.lr=3e-4.")


def _train_argv(args) -> list[str]:
    if not args.workdir:
        raise LaunchError("--workdir is required: use a gs:// path so checkpoints outlive the VM.")
    _check_overrides(args.overrides)
    return [
        ".venv/bin/python", "-m", "climb_jax.main", f"--config={args.config}", f"--workdir={args.workdir}",
        "--config.distributed.initialize=true", *_prepared_overrides(args), *args.overrides,
    ]


def _prepared_overrides(args) -> list[str]:
    prepared = getattr(args, "prepared_dir", None)
    return [f"--config.data.prepared_dir={prepared}"] if prepared else []


def plan_prepare(args) -> list[Step]:
    """`python -m climb_jax.prepare` once, on worker 0, into the shared `--prepared-dir`: the corpus is
    tokenized, tagged, scored and written once, and every host then reads its rows from there (a version
    that already exists is reused at once)."""
    prepared = getattr(args, "prepared_dir", None)
    if not prepared:
        return []
    if not prepared.startswith("gs://"):
        raise LaunchError(f"--prepared-dir={prepared} must be a gs:// folder: every host of the slice reads it.")
    d = _check_remote_dir(args.remote_dir, "--remote-dir")
    command = shlex.join([".venv/bin/python", "-m", "climb_jax.prepare", f"--config={args.config}",
                          *_prepared_overrides(args), *args.overrides])
    return [Comment(f"prepare the corpus once, on worker 0, into {prepared} (reused when it exists)"),
            _ssh(args, f"cd {d} && {command}", worker="0")]


def plan_preflight(args) -> list[Step]:
    """Compiles the run for the slice on this machine (`python -m climb_jax.aot`): a config that does not
    fit the chips' memory, or whose global batch does not split over the slice, stops here."""
    if not args.accelerator_type:
        if args.subcommand == "preflight":
            raise LaunchError("preflight needs --accelerator-type, the slice to compile for (e.g. v4-32).")
        raise LaunchError("run needs --accelerator-type (the slice's, e.g. v4-32) for the pre-flight that checks "
                          "the config fits before any VM time is spent; or pass --no-preflight.")
    shape = slice_shape(args.accelerator_type)
    _check_overrides(args.overrides)
    return [
        Comment(f"pre-flight on this machine (no VM time): compile {args.config} for {shape.accelerator_type} "
                f"({shape.topology_name}); stops here if it does not fit or its batch does not split"),
        Command((args.python, "-m", "climb_jax.aot", f"--config={args.config}",
                 f"--accelerator-type={shape.accelerator_type}", *args.overrides),
                cwd=str(args.source), failure="the pre-flight refused this config (see the error above): change it, "
                "or pass --no-preflight to launch anyway"),
    ]


def run_command(args) -> Command:
    """`python -m climb_jax.main` on every worker at once, each appending to its log; in the background
    with `--detach`, else streamed back with `[worker N] ` prefixes, exiting with the run's status."""
    d = _check_remote_dir(args.remote_dir, "--remote-dir")
    log = f"{_log_dir(args)}/worker$W.log"
    train = shlex.join(_train_argv(args))
    head = f"cd {d} && mkdir -p {_log_dir(args)} && W={WORKER_ID} && "
    if args.detach:
        command = (
            head + f"nohup env PYTHONUNBUFFERED=1 {train} >> {log} 2>&1 < /dev/null & "
            f"echo \"[worker $W] started pid $! -> {log}\""
        )
    else:
        command = head + f"set -o pipefail && PYTHONUNBUFFERED=1 {train} 2>&1 | tee -a {log} | sed -u \"s/^/[worker $W] /\""
    return _ssh(args, command)


def _run_name(args) -> str:
    return _check_name(args.run_name or _default_run_name(args.workdir or ""), "--run-name")


def _log_dir(args) -> str:
    return f"~/climb_logs/{_run_name(args)}"


def plan_run(args, preflight: bool = True) -> list[Step]:
    """The pre-flight (unless `--no-preflight` or `preflight=False`), then the run on every worker."""
    command = run_command(args)
    checks = plan_preflight(args) if preflight and not args.no_preflight else []
    plan: list[Step] = [*checks, *plan_prepare(args),
                        Comment(f"run on every worker of {args.name}; per-worker logs in {_log_dir(args)}/worker<N>.log")]
    if not args.workdir.startswith("gs://"):
        plan.append(Comment("warning: the workdir is not on gs://; a multi-host run needs storage every host shares"))
    plan.append(command)
    if args.detach:
        plan.append(Comment(f"follow with: logs {args.name} --run-name={_run_name(args)} --follow"))
    return plan


def plan_logs(args) -> list[Step]:
    run_name = _check_name(args.run_name, "--run-name")
    logs = f"~/climb_logs/{run_name}/worker*.log"
    if args.follow:
        return [_ssh(args, f"tail -n {args.lines} -F {logs}")]
    out = os.path.abspath(args.out or f"logs/{run_name}")
    return [
        Comment(f"each worker's log goes to {out}/<worker>.log"),
        MakeDir(out),
        _ssh(args, f"cat {logs}", extra=(f"--output-directory={out}",)),
    ]


def plan_stop(args) -> list[Step]:
    # `[c]` keeps the pattern from matching the shell that runs pkill itself.
    return [_ssh(args, 'pkill -f "[c]limb_jax[.]main" && echo stopped || echo "nothing to stop"')]


def state_query(args) -> Command:
    """Prints the slice's state as one word: a TPU VM's (READY, PREEMPTED, ...) or, with `--queued`, the
    queued resource's (ACTIVE, SUSPENDED, ...)."""
    if args.queued:
        return Command(("gcloud", "compute", "tpus", "queued-resources", "describe", args.name, *_loc(args),
                        "--format=value(state.state)"))
    return Command(("gcloud", "compute", "tpus", "tpu-vm", "describe", args.name, *_loc(args), "--format=value(state)"))


def plan_status(args) -> list[Step]:
    kind = ("queued-resources",) if args.queued else ("tpu-vm",)
    return [Command(("gcloud", "compute", "tpus", *kind, "describe", args.name, *_loc(args)))]


def plan_delete(args) -> list[Step]:
    if args.queued:
        return [Command(("gcloud", "compute", "tpus", "queued-resources", "delete", args.name, *_loc(args), "--force", "--quiet"))]
    return [Command(("gcloud", "compute", "tpus", "tpu-vm", "delete", args.name, *_loc(args), "--quiet"))]


def plan_ssh(args) -> list[Step]:
    extra = (f"--command={args.command}",) if args.command else ()
    return [Command(("gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *_loc(args), f"--worker={args.worker}", *extra))]
