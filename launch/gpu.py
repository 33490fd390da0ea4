"""One multi-GPU host: optionally install the CUDA build of the pinned JAX, then train with a log file.

    python launch/gpu.py --install --config=configs/vanilla.py:small,bf16 --workdir=runs/vanilla_small
    python launch/gpu.py --gpus=0,1 --config=configs/vocab_cl.py:pos_tags,log --workdir=runs/pos_log \\
        --config.trainer.batch_size=256

One process drives every visible GPU (JAX's single-process multi-device mode), so no
`jax.distributed.initialize()` is needed; the mesh's data axis spans the GPUs. `--dry-run` prints the
commands (shell-quoted, one per line, comments start with `#`) and runs nothing.
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

from launch.common import REPO_ROOT, Command, Comment, LaunchError, MakeDir, Step, finish, pinned_jax_version, run_main  # noqa: E402

# XLA flags that help data-parallel training on GPUs (and exist in the pinned XLA: a test checks
# that the CPU build of jaxlib accepts them, since XLA aborts on an unknown flag).
# The latency-hiding scheduler overlaps the gradient all-reduce with the backward pass.
GPU_XLA_FLAGS = ("--xla_gpu_enable_latency_hiding_scheduler=true",)
CUDA_EXTRAS = ("cuda12", "cuda13")
# The part-of-speech tagger the data pipeline needs (downloaded to NLTK's default folder, ~/nltk_data).
NLTK_PACKAGES = ("averaged_perceptron_tagger_eng", "universal_tagset")


def plan_gpu(args) -> list[Step]:
    """The install (optional) and training commands for one GPU host."""
    for extra in args.overrides:
        if not extra.startswith("--config.") or "=" not in extra:
            raise LaunchError(f"unexpected argument {extra!r}: extra arguments must be config overrides like --config.trainer.lr=3e-4.")
    if args.gpus is not None and not re.fullmatch(r"\d+(,\d+)*", args.gpus):
        raise LaunchError(f"--gpus={args.gpus!r}: give GPU indices separated by commas, e.g. 0,1,2,3.")
    plan: list[Step] = []
    if args.install:
        version = args.jax_version or pinned_jax_version(Path(args.requirements))
        plan.append(Comment(f"install requirements, jax[{args.cuda}]=={version} and the NLTK tagger into {args.python}'s environment"))
        plan.append(Command((args.python, "-m", "pip", "install", "-r", str(args.requirements), f"jax[{args.cuda}]=={version}")))
        plan.append(Command((args.python, "-m", "nltk.downloader", "-q", "-e", *NLTK_PACKAGES)))
    flags = [] if args.no_default_xla_flags else list(GPU_XLA_FLAGS)
    flags += shlex.split(args.xla_flags or "")
    inherited = os.environ.get("XLA_FLAGS", "") if args.keep_env_xla_flags else ""
    env: dict[str, str] = {}
    if inherited or flags:
        env["XLA_FLAGS"] = " ".join([inherited, *flags]).strip()
    if args.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = args.gpus
    if args.mem_fraction is not None:
        if not 0 < args.mem_fraction <= 1:
            raise LaunchError(f"--mem-fraction={args.mem_fraction} must lie in (0, 1].")
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{args.mem_fraction:g}"
    if args.compile_cache:
        env["JAX_COMPILATION_CACHE_DIR"] = args.compile_cache
    env["PYTHONUNBUFFERED"] = "1"
    workdir = args.workdir.rstrip("/")
    log = args.log or os.path.join("logs", (workdir.rsplit("/", 1)[-1] or "run") + ".log")
    argv = (args.python, "-m", "climb_jax.main", f"--config={args.config}", f"--workdir={args.workdir}", *args.overrides)
    plan.append(Comment(f"train; output also appended to {log} (rerun the same command to resume)"))
    if os.path.dirname(log):
        plan.append(MakeDir(os.path.dirname(log)))
    plan.append(Command(argv, env=env, tee=log))
    return plan


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="e.g. configs/vanilla.py:small,bf16")
    p.add_argument("--workdir", required=True, help="run directory (local path or gs://); rerun to resume")
    p.add_argument("--install", action="store_true", help="first pip-install requirements.txt and jax[cuda]")
    p.add_argument("--cuda", choices=CUDA_EXTRAS, default="cuda13", help="the jax extra matching the host's CUDA driver")
    p.add_argument("--jax-version", help="jax version to install (default: the jax== pin of requirements.txt)")
    p.add_argument("--requirements", default=str(REPO_ROOT / "requirements.txt"), help=argparse.SUPPRESS)
    p.add_argument("--python", default="python", help="interpreter of the environment to use (default: python)")
    p.add_argument("--gpus", help="GPU indices to use, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES; default: all)")
    p.add_argument("--log", help="log file, appended to (default: logs/<workdir's last part>.log)")
    p.add_argument("--xla-flags", help="more XLA flags, space-separated")
    p.add_argument("--no-default-xla-flags", action="store_true", help="leave out the flags in GPU_XLA_FLAGS")
    p.add_argument("--keep-env-xla-flags", action="store_true", help="prepend the current $XLA_FLAGS")
    p.add_argument("--mem-fraction", type=float, help="XLA_PYTHON_CLIENT_MEM_FRACTION (JAX's default 0.75)")
    p.add_argument("--compile-cache", default=str(Path.home() / ".cache" / "climb_jax" / "xla"),
                   help="persistent XLA compilation cache: restarts skip compiling ('' to disable)")
    p.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    return p


def plan(argv: Sequence[str]) -> tuple[list[Step], argparse.Namespace]:
    args, extra = build_parser().parse_known_args(list(argv))
    args.overrides = extra
    return plan_gpu(args), args


def main(argv: Sequence[str] | None = None) -> int:
    steps, args = plan(sys.argv[1:] if argv is None else argv)
    config_file = args.config.split(":", 1)[0]
    if not args.dry_run and not Path(config_file).is_file():
        raise LaunchError(f"config file {config_file} not found from {os.getcwd()}; run from the repository root.")
    return finish(steps, dry_run=args.dry_run)


if __name__ == "__main__":
    sys.exit(run_main(main, None))
