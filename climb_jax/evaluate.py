"""Evaluate a training run's checkpoint: zero-shot minimal pairs and/or fine-tuning tasks.

    python -m climb_jax.evaluate --workdir=runs/x --suite=embedded [--method=pll_word_l2r]
        [--max_pairs_per_file=N] [--step=N] [--batch_size=N] [--noprogress]
    python -m climb_jax.evaluate --workdir=runs/x --tasks=rte,mrpc [--tasks_dir=DIR] [--step=N]
        [--max_train_examples=N] [--max_valid_examples=N] [--epochs=N] [--seeds=12,13]

The suite result is written to <workdir>/eval/<suite>[_first<N>]_<method>_step_<step:06d>.json and
its path printed (`_first<N>` when only the first N pairs of each file are scored). The pair limit
defaults to the run's own `eval.max_pairs_per_file`, so this command and the run's evaluation score
the same pairs unless told otherwise; both print the pair count and the limit. A finished result is
never overwritten: asked again for the same suite, method, limit and step, the command prints the
written result. Two suites whose folders share a name get different files.

--tasks hands over to `climb_jax.eval.finetune.evaluate_tasks`, which fine-tunes and writes its own
results (it prints their folder). Without --suite and --tasks the run's own `eval.blimp_dir` is
scored. Mistakes a user can fix (no checkpoint, missing suite, bad option) print one line and exit
with status 2. Heavy imports (JAX, the model) wait until the options and the suite are checked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from typing import Sequence

from climb_jax import uri
from climb_jax.config.choices import EMBEDDED_SUITE, EVAL_METHODS
from climb_jax.errors import ClimbError, print_error

TASKS_DIR_FLAG = "--tasks_dir"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m climb_jax.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="run directory written by climb_jax.main")
    p.add_argument("--suite", default=None,
                   help=f"directory of minimal-pair *.jsonl files, or '{EMBEDDED_SUITE}' (default: the run's "
                        "eval.blimp_dir)")
    p.add_argument("--method", default=None, choices=EVAL_METHODS, help="default: the run's eval.method")
    p.add_argument("--max_pairs_per_file", type=int, default=None,
                   help="first N pairs of each file, 0 = all (default: the run's eval.max_pairs_per_file)")
    p.add_argument("--batch_size", type=int, default=None, help="masked copies per call (default: eval.batch_size)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--noprogress", action="store_true", help="no progress bar (plain lines when not a terminal)")
    p.add_argument("--tasks", default=None, help="comma-separated fine-tuning tasks, e.g. rte,mrpc")
    p.add_argument("--tasks_dir", default=None,
                   help="fine-tuning data folder (default: the run's finetune.data_dir)")
    p.add_argument("--max_train_examples", type=int, default=None, help="fine-tuning: first N training examples")
    p.add_argument("--max_valid_examples", type=int, default=None, help="fine-tuning: first N validation examples")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning: at most N epochs")
    p.add_argument("--seeds", default=None, help="fine-tuning: comma-separated random seeds, e.g. 12,13")
    return p


def output_name(suite_name: str, suite_path: str, method: str, max_pairs_per_file: int, step: int,
                taken: dict[str, str]) -> str:
    """The result file's name. `taken` maps names already in the eval folder to the suite path they
    scored: a suite whose folder shares its name with another's gets its path's hash appended."""
    limit = f"_first{max_pairs_per_file}" if max_pairs_per_file else ""
    tail = f"{limit}_{method}_step_{int(step):06d}.json"
    name = f"{suite_name}{tail}"
    if name in taken and taken[name] != suite_path:
        name = f"{suite_name}-{hashlib.sha1(suite_path.encode()).hexdigest()[:8]}{tail}"
    return name


def evaluate_suite(run, suite: str, *, method: str, max_pairs_per_file: int, batch_size: int,
                   progress: bool = True) -> tuple[str, dict, bool]:
    """Scores `run.params` on a suite; returns (output path, result, whether it was scored now)."""
    from etils import epath

    from climb_jax.eval.blimp import BlimpEvaluator, blimp_average
    from climb_jax.eval.evaluator import read_finished
    from climb_jax.eval.suites import resolve_suite_dir
    from climb_jax.train.workdir import write_json

    suite_name, suite_dir = resolve_suite_dir(suite)
    eval_dir = epath.Path(run.workdir) / "eval"
    plain = output_name(suite_name, str(suite_dir), method, max_pairs_per_file, run.step, {})
    taken = {}
    found = read_finished(eval_dir / plain)
    if found is not None:
        taken[plain] = str(found.get("suite_path"))
    path = eval_dir / output_name(suite_name, str(suite_dir), method, max_pairs_per_file, run.step, taken)
    done = found if path.name == plain else read_finished(path)
    if done is not None:
        return str(path), done, False
    evaluator = BlimpEvaluator(run.model_config, run.tokenizer, suite, method=method, batch_size=batch_size,
                               max_pairs_per_file=max_pairs_per_file, progress=progress)
    report = evaluator(run.params)
    result = {"step": int(run.step), "workdir": str(run.workdir), **report,
              "blimp_avg": blimp_average(report)["blimp_avg"]}
    write_json(path, result)
    return str(path), result, True


def _int_list(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ClimbError(f"{flag} takes comma-separated integers, e.g. {flag}=12,13; got '{text}'.") from None
    if not values:
        raise ClimbError(f"{flag} is empty; give at least one integer, e.g. {flag}=12.")
    return values


def _run_tasks(workdir: str, tasks: Sequence[str], args) -> object:
    try:
        from climb_jax.eval.finetune import evaluate_tasks
    except ModuleNotFoundError as e:
        if e.name != "climb_jax.eval.finetune":
            raise
        raise ClimbError("fine-tuning evaluation (climb_jax.eval.finetune) is not installed; "
                         "--tasks is unavailable.") from None
    limits = {"step": args.step, "max_train_examples": args.max_train_examples,
              "max_valid_examples": args.max_valid_examples, "epochs": args.epochs,
              "seeds": _int_list(args.seeds, "--seeds")}
    try:  # errors about the data folder name this command's flag for it
        return evaluate_tasks(workdir, list(tasks), data_dir=args.tasks_dir, data_dir_flag=TASKS_DIR_FLAG,
                              **{k: v for k, v in limits.items() if v is not None})
    except ClimbError as e:  # the fine-tuning config's own flag is not this command's
        raise type(e)(str(e).replace("--config.finetune.data_dir", TASKS_DIR_FLAG)) from None


def _check_limits(args) -> None:
    for flag in ("max_pairs_per_file",):
        value = getattr(args, flag)
        if value is not None and value < 0:
            raise ClimbError(f"--{flag} must be >= 0 (0 = all pairs), got {value}.")
    for flag in ("batch_size", "max_train_examples", "max_valid_examples", "epochs"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise ClimbError(f"--{flag} must be positive, got {value}.")
    fine_tuning_only = [f for f in ("max_train_examples", "max_valid_examples", "epochs", "seeds", "tasks_dir")
                        if getattr(args, f) is not None]
    if fine_tuning_only and args.tasks is None:
        raise ClimbError(f"--{fine_tuning_only[0]} applies to fine-tuning; add --tasks=<task,...>.")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from pathlib import Path

        from climb_jax.eval.suites import resolve_suite_dir

        uri.check(args.workdir, "--workdir")
        from climb_jax.parallel.mesh import skip_absent_tpu

        skip_absent_tpu()
        if not uri.is_uri(args.workdir) and not Path(args.workdir).is_dir():
            raise ClimbError(f"--workdir {args.workdir} does not exist; pass a run directory written by "
                             "`python -m climb_jax.main`.")
        _check_limits(args)
        _int_list(args.seeds, "--seeds")
        tasks = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
        if args.tasks is not None and not tasks:
            raise ClimbError("--tasks is empty; name tasks such as --tasks=rte,mrpc.")
        if args.suite is not None:
            resolve_suite_dir(args.suite)  # fail before restoring the checkpoint

        if args.suite is not None or not tasks:
            from climb_jax.eval.evaluator import pair_limit_text
            from climb_jax.train.checkpoint import load_run

            run = load_run(args.workdir, args.step)
            ev = run.config.get("eval", {}) if hasattr(run.config, "get") else {}
            suite = args.suite if args.suite is not None else ev.get("blimp_dir", EMBEDDED_SUITE)
            method = args.method or ev.get("method", EVAL_METHODS[0])
            limit = args.max_pairs_per_file if args.max_pairs_per_file is not None else \
                int(ev.get("max_pairs_per_file", 0))
            batch_size = args.batch_size or int(ev.get("batch_size", 256))
            path, result, scored = evaluate_suite(run, suite, method=method, max_pairs_per_file=limit,
                                                  batch_size=batch_size, progress=not args.noprogress)
            if not scored:
                print(f"already evaluated (delete the file to score again): {path}", file=sys.stderr)
            print(f"{result['suite']} ({method}, step {run.step}): {result['overall']:.4f} over "
                  f"{result['num_pairs']} pairs ({pair_limit_text(limit)}), blimp_avg "
                  f"{result.get('blimp_avg', float('nan')):.4f}", file=sys.stderr)
            print(path, flush=True)
        if tasks:
            out = _run_tasks(args.workdir, tasks, args)
            if out is not None:
                print(json.dumps(out, indent=2, default=str) if isinstance(out, (dict, list)) else str(out),
                      flush=True)
    except ClimbError as e:
        print_error(e)
        return 2
    except OSError as e:  # unreadable or unwritable paths are the user's to fix
        print_error(e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
