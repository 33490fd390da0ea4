"""Cloud TPU VMs: create a slice, put the code on every host, run training on all hosts, fetch logs, delete.

    python launch/tpu_vm.py create climb-v4-32 --zone=us-central2-b --accelerator-type=v4-32
    python launch/tpu_vm.py setup  climb-v4-32 --zone=us-central2-b
    python launch/tpu_vm.py run    climb-v4-32 --zone=us-central2-b --accelerator-type=v4-32 \\
        --config=configs/vanilla.py:small,bf16 --workdir=gs://my-bucket/runs/vanilla_small
    python launch/tpu_vm.py logs   climb-v4-32 --zone=us-central2-b --run-name=vanilla_small
    python launch/tpu_vm.py delete climb-v4-32 --zone=us-central2-b

`run` first compiles the run for the slice on this machine (`python -m climb_jax.aot`, which needs
libtpu: `pip install "jax[tpu]==<the jax pin>"`) and stops, before any VM time is spent, when the
config does not fit the chips' memory or its global batch does not split over the slice; it needs
`--accelerator-type` for that, or `--no-preflight`. `preflight` runs that check alone:

    python launch/tpu_vm.py preflight --config=configs/vanilla.py:large,bf16 --accelerator-type=v4-32

Every subcommand takes `--dry-run`, which prints the commands (one per line, shell-quoted: gcloud's,
and the local pre-flight's) and comment lines starting with `#`, and runs nothing. Multi-host slices
need no per-host logic here: `--worker=all` runs the same command on every host and `jax.distributed.initialize()` (switched
on by `--config.distributed.initialize=true`) discovers the slice's topology from the TPU metadata.
"""

from __future__ import annotations

import argparse
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
    REPO_ROOT,
    Command,
    Comment,
    LaunchError,
    MakeDir,
    PollUntil,
    Step,
    finish,
    pinned_jax_version,
    run_main,
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
                    ("gcloud", "compute", "tpus", "queued-resources", "describe", args.name, *_loc(args),
                     "--format=value(state.state)"),
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
        "--config.distributed.initialize=true", *args.overrides,
    ]


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


def plan_run(args) -> list[Step]:
    d = _check_remote_dir(args.remote_dir, "--remote-dir")
    run_name = _check_name(args.run_name or _default_run_name(args.workdir or ""), "--run-name")
    train = shlex.join(_train_argv(args))
    checks = [] if args.no_preflight else plan_preflight(args)
    log_dir = f"~/climb_logs/{run_name}"
    log = f"{log_dir}/worker$W.log"
    head = f"cd {d} && mkdir -p {log_dir} && W={WORKER_ID} && "
    if args.detach:
        command = (
            head + f"nohup env PYTHONUNBUFFERED=1 {train} >> {log} 2>&1 < /dev/null & "
            f"echo \"[worker $W] started pid $! -> {log}\""
        )
    else:
        command = head + f"set -o pipefail && PYTHONUNBUFFERED=1 {train} 2>&1 | tee -a {log} | sed -u \"s/^/[worker $W] /\""
    plan: list[Step] = [*checks, Comment(f"run on every worker of {args.name}; per-worker logs in {log_dir}/worker<N>.log")]
    if not args.workdir.startswith("gs://"):
        plan.append(Comment("warning: the workdir is not on gs://; a multi-host run needs storage every host shares"))
    plan.append(_ssh(args, command))
    if args.detach:
        plan.append(Comment(f"follow with: logs {args.name} --run-name={run_name} --follow"))
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


# ------------------------------------------------------------------------------------------------
# Command line.


def add_preflight_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accelerator-type", help="the slice (v4-8, v4-32, v5litepod-16, ...): the pre-flight compiles for it")
    p.add_argument("--python", default="python", help="local interpreter with climb_jax and libtpu (default: python)")
    p.add_argument("--source", default=str(REPO_ROOT), help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpu_vm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="subcommand", required=True)

    def add(name: str, help_text: str, queued: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("name", help="TPU VM name (also the queued resource's name with --queued)")
        p.add_argument("--zone", required=True, help="e.g. us-central2-b (v4), us-west4-a (v5e), us-east5-a (v5p)")
        p.add_argument("--project", help="Google Cloud project (default: gcloud's configured project)")
        p.add_argument("--dry-run", action="store_true", help="print the gcloud commands instead of running them")
        p.add_argument("--gcloud", help="path of the gcloud binary (default: found on PATH)")
        if queued:
            p.add_argument("--queued", action="store_true", help="the TPU is a queued resource")
        return p

    p = add("create", "create a TPU VM slice, or request one as a queued resource", queued=True)
    p.add_argument("--accelerator-type", required=True, help="v4-8, v4-32, v5litepod-16, v5p-16, v6e-8, ...")
    p.add_argument("--version", help="runtime version (default: the generation's, from the table in tpu_vm.py)")
    capacity = p.add_mutually_exclusive_group()
    capacity.add_argument("--spot", action="store_true", help="spot capacity (cheaper, can be preempted)")
    capacity.add_argument("--reserved", action="store_true", help="use the project's reservation")
    capacity.add_argument("--preemptible", action="store_true", help="preemptible TPU VM (not with --queued)")
    p.add_argument("--valid-until", help="queued resources: give up if not provisioned within this duration (e.g. 6h)")
    p.add_argument("--wait", action="store_true", help="queued resources: wait until the slice is ACTIVE")
    p.add_argument("--poll-seconds", type=float, default=30.0, help=argparse.SUPPRESS)
    p.set_defaults(plan=plan_create)

    p = add("setup", "copy (or clone) the code to every worker and install the pinned stack with jax[tpu]")
    p.add_argument("--source", default=str(REPO_ROOT), help="local repository root to copy (default: this checkout)")
    p.add_argument("--git", help="clone this git URL on every worker instead of copying the local tree")
    p.add_argument("--ref", help="with --git: branch, tag or commit to check out")
    p.add_argument("--remote-dir", default="climb_jax", help="code directory on the workers, relative to home")
    p.add_argument("--data", action="append", default=[], help="a local corpus directory to copy to <remote-dir>/data/ (repeatable)")
    p.add_argument("--jax-version", help="jax version to install (default: the jax== pin of requirements.txt)")
    p.add_argument("--python-version", default="3.11", help="Python for the workers' venv (installed by uv)")
    p.add_argument("--no-install", action="store_true", help="only copy; skip the installation")
    p.set_defaults(plan=plan_setup)

    p = add("run", "run `python -m climb_jax.main` on every worker at once, logging per worker")
    p.add_argument("--config", required=True, help="e.g. configs/vanilla.py:small (preset words after ':')")
    p.add_argument("--workdir", help="gs://bucket/path: checkpoints, metrics and eval results; rerun to resume")
    p.add_argument("--run-name", help="name of the per-worker log folder ~/climb_logs/<run-name> (default: workdir's last part)")
    p.add_argument("--remote-dir", default="climb_jax", help="code directory on the workers, relative to home")
    p.add_argument("--detach", action="store_true", help="start in the background (survives a dropped ssh); follow with `logs --follow`")
    add_preflight_args(p)
    p.add_argument("--no-preflight", action="store_true", help="launch without compiling for the slice first")
    p.set_defaults(plan=plan_run)

    p = sub.add_parser("preflight", help="compile a run for a slice on this machine: fits? step time? chip-hours?",
                       description="Compile a run for a TPU slice on this machine (no TPU, no VM) with "
                       "`python -m climb_jax.aot`: memory per chip against its HBM, estimated step time, "
                       "tokens/s, MFU and chip-hours. Exit status 2 when it does not fit.")
    p.add_argument("--config", required=True, help="e.g. configs/vanilla.py:small,bf16 (preset words after ':')")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    add_preflight_args(p)
    p.set_defaults(plan=plan_preflight, name=None)

    p = add("logs", "fetch every worker's log (or follow them live)")
    p.add_argument("--run-name", required=True, help="the run's log folder name (see `run`)")
    p.add_argument("--out", help="local folder for <worker>.log files (default: logs/<run-name>)")
    p.add_argument("--follow", action="store_true", help="stream the logs instead of fetching them")
    p.add_argument("--lines", type=int, default=20, help="with --follow: lines of history per worker")
    p.set_defaults(plan=plan_logs)

    p = add("stop", "stop the training processes on every worker (the VM stays)")
    p.set_defaults(plan=plan_stop)

    p = add("status", "describe the TPU VM or queued resource", queued=True)
    p.set_defaults(plan=plan_status)

    p = add("delete", "delete the TPU VM, or the queued resource with its VM", queued=True)
    p.set_defaults(plan=plan_delete)

    p = add("ssh", "open a shell (or run --command) on one worker")
    p.add_argument("--worker", default="0", help="worker index, or 'all' with --command")
    p.add_argument("--command", help="command to run instead of an interactive shell")
    p.set_defaults(plan=plan_ssh)
    return parser


def plan(argv: Sequence[str]) -> tuple[list[Step], argparse.Namespace]:
    """Parses a command line into its plan (nothing runs); extra `--config.*` words go to `run`."""
    parser = build_parser()
    args, extra = parser.parse_known_args(list(argv))
    args.overrides = extra
    if extra and args.subcommand not in ("run", "preflight"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.name is not None:
        _check_name(args.name, "name")
    return args.plan(args), args


def main(argv: Sequence[str] | None = None) -> int:
    steps, args = plan(sys.argv[1:] if argv is None else argv)
    return finish(steps, dry_run=args.dry_run, gcloud=getattr(args, "gcloud", None))


if __name__ == "__main__":
    sys.exit(run_main(main, None))
