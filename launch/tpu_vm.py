"""Cloud TPU VMs: create a slice, put the code on every host, run training on all hosts, fetch logs, delete.

    python launch/tpu_vm.py create climb-v4-32 --zone=us-central2-b --accelerator-type=v4-32
    python launch/tpu_vm.py setup  climb-v4-32 --zone=us-central2-b
    python launch/tpu_vm.py run    climb-v4-32 --zone=us-central2-b --accelerator-type=v4-32 \\
        --config=configs/vanilla.py:small,bf16 --workdir=gs://my-bucket/runs/vanilla_small
    python launch/tpu_vm.py logs   climb-v4-32 --zone=us-central2-b --run-name=vanilla_small
    python launch/tpu_vm.py delete climb-v4-32 --zone=us-central2-b
    python launch/tpu_vm.py watch  climb-v4-32 --zone=us-central2-b --accelerator-type=v4-32 --spot \\
        --config=configs/vanilla.py:small,bf16 --workdir=gs://my-bucket/runs/vanilla_small

`watch` creates the slice, sets it up and runs, and when a spot or preemptible slice is taken back it
creates it again and resumes, until the run is done (launch/watch.py).

`run` first compiles the run for the slice on this machine (`python -m climb_jax.aot`, which needs
libtpu: `pip install "jax[tpu]==<the jax pin>"`) and stops, before any VM time is spent, when the
config does not fit the chips' memory or its global batch does not split over the slice; it needs
`--accelerator-type` for that, or `--no-preflight`. `preflight` runs that check alone:

    python launch/tpu_vm.py preflight --config=configs/vanilla.py:large,bf16 --accelerator-type=v4-32

Every subcommand takes `--dry-run`, which prints the commands (one per line, shell-quoted: gcloud's,
and the local pre-flight's) and comment lines starting with `#`, and runs nothing. Multi-host slices
need no per-host logic: `--worker=all` runs the same command on every host and `jax.distributed.initialize()` (switched
on by `--config.distributed.initialize=true`) discovers the slice's topology from the TPU metadata.

This file is the command line; the gcloud commands are built in launch/tpu_commands.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launch import watch  # noqa: E402
from launch.common import REPO_ROOT, Step, finish, run_main  # noqa: E402
from launch.tpu_commands import (  # noqa: E402  (re-exported: the slice table's entry points)
    _check_name,
    plan_create,
    plan_delete,
    plan_logs,
    plan_preflight,
    plan_run,
    plan_setup,
    plan_ssh,
    plan_status,
    plan_stop,
    slice_shape,
    tpu_hosts,
)

__all__ = ["build_parser", "main", "plan", "slice_shape", "tpu_hosts"]


# ------------------------------------------------------------------------------------------------
# Command line.


def add_preflight_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accelerator-type", help="the slice (v4-8, v4-32, v5litepod-16, ...): the pre-flight compiles for it")
    p.add_argument("--python", default="python", help="local interpreter with climb_jax and libtpu (default: python)")
    p.add_argument("--source", default=str(REPO_ROOT), help=argparse.SUPPRESS)


def add_create_args(p: argparse.ArgumentParser, poll_seconds: float) -> None:
    p.add_argument("--version", help="runtime version (default: the generation's, from the table in tpu_vm.py)")
    capacity = p.add_mutually_exclusive_group()
    capacity.add_argument("--spot", action="store_true", help="spot capacity (cheaper, can be preempted)")
    capacity.add_argument("--reserved", action="store_true", help="use the project's reservation")
    capacity.add_argument("--preemptible", action="store_true", help="preemptible TPU VM (not with --queued)")
    p.add_argument("--valid-until", help="queued resources: give up if not provisioned within this duration (e.g. 6h)")
    p.add_argument("--poll-seconds", type=float, default=poll_seconds, help="seconds between two looks at the slice's state")


def add_setup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--git", help="clone this git URL on every worker instead of copying the local tree")
    p.add_argument("--ref", help="with --git: branch, tag or commit to check out")
    p.add_argument("--data", action="append", default=[], help="a local corpus directory to copy to <remote-dir>/data/ (repeatable)")
    p.add_argument("--jax-version", help="jax version to install (default: the jax== pin of requirements.txt)")
    p.add_argument("--python-version", default="3.11", help="Python for the workers' venv (installed by uv)")
    p.add_argument("--no-install", action="store_true", help="only copy; skip the installation")


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="e.g. configs/vanilla.py:small (preset words after ':')")
    p.add_argument("--workdir", help="gs://bucket/path: checkpoints, metrics and eval results; rerun to resume")
    p.add_argument("--run-name", help="name of the per-worker log folder ~/climb_logs/<run-name> (default: workdir's last part)")
    p.add_argument("--prepared-dir", help="gs://bucket/prepared: prepare the corpus there once (on worker 0), then "
                   "every host reads it (data.prepared_dir)")
    add_preflight_args(p)
    p.add_argument("--no-preflight", action="store_true", help="launch without compiling for the slice first")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpu_vm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="subcommand", required=True)

    def add(name: str, help_text: str, queued: bool = False, remote_dir: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("name", help="TPU VM name (also the queued resource's name with --queued)")
        p.add_argument("--zone", required=True, help="e.g. us-central2-b (v4), us-west4-a (v5e), us-east5-a (v5p)")
        p.add_argument("--project", help="Google Cloud project (default: gcloud's configured project)")
        p.add_argument("--dry-run", action="store_true", help="print the gcloud commands instead of running them")
        p.add_argument("--gcloud", help="path of the gcloud binary (default: found on PATH)")
        if queued:
            p.add_argument("--queued", action="store_true", help="the TPU is a queued resource")
        if remote_dir:
            p.add_argument("--remote-dir", default="climb_jax", help="code directory on the workers, relative to home")
        return p

    p = add("create", "create a TPU VM slice, or request one as a queued resource", queued=True)
    p.add_argument("--accelerator-type", required=True, help="v4-8, v4-32, v5litepod-16, v5p-16, v6e-8, ...")
    add_create_args(p, poll_seconds=30.0)
    p.add_argument("--wait", action="store_true", help="queued resources: wait until the slice is ACTIVE")
    p.set_defaults(plan=plan_create)

    p = add("setup", "copy (or clone) the code to every worker and install the pinned stack with jax[tpu]", remote_dir=True)
    p.add_argument("--source", default=str(REPO_ROOT), help="local repository root to copy (default: this checkout)")
    add_setup_args(p)
    p.set_defaults(plan=plan_setup)

    p = add("run", "run `python -m climb_jax.main` on every worker at once, logging per worker", remote_dir=True)
    add_run_args(p)
    p.add_argument("--detach", action="store_true", help="start in the background (survives a dropped ssh); follow with `logs --follow`")
    p.set_defaults(plan=plan_run)

    p = add("watch", "create, set up and run; on preemption recreate the slice and resume, until the run is done",
            queued=True, remote_dir=True)
    add_run_args(p)
    add_create_args(p, poll_seconds=60.0)
    add_setup_args(p)
    p.add_argument("--max-restarts", type=int, default=10,
                   help="stop after recreating the slice, or relaunching the run, this many times (default 10)")
    p.set_defaults(plan=watch.plan_watch)

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
    if extra and args.subcommand not in ("run", "preflight", "watch"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.name is not None:
        _check_name(args.name, "name")
    return args.plan(args), args


def main(argv: Sequence[str] | None = None) -> int:
    steps, args = plan(sys.argv[1:] if argv is None else argv)
    if args.subcommand == "watch" and not args.dry_run:
        return watch.main(args)
    return finish(steps, dry_run=args.dry_run, gcloud=getattr(args, "gcloud", None))


if __name__ == "__main__":
    sys.exit(run_main(main, None))
