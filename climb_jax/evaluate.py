"""Evaluate a training run's checkpoint: zero-shot minimal pairs and/or fine-tuning tasks.

    python -m climb_jax.evaluate --workdir=runs/x --suite=embedded [--method=pll_word_l2r]
        [--max_pairs_per_file=N] [--step=N] [--batch_size=N]
    python -m climb_jax.evaluate --workdir=runs/x --tasks=rte,mrpc [--tasks_dir=DIR] [--step=N]

The suite result is written to <workdir>/eval/<suite>_<method>_step_<step:06d>.json and its path
printed. --tasks hands over to `climb_jax.eval.finetune.evaluate_tasks`, which fine-tunes and
writes its own results (it prints their folder). Without --suite and --tasks the run's own
`eval.blimp_dir` is scored. Mistakes a user
can fix (no checkpoint, missing suite, bad option) print one line and exit with status 2.
Heavy imports (JAX, the model) wait until the options and the suite have been checked.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from typing import Sequence

from climb_jax.errors import ClimbError, print_error

METHODS = ("pll", "pll_word_l2r")  # climb_jax.eval.blimp.METHODS, without importing JAX here


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m climb_jax.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="run directory written by climb_jax.main")
    p.add_argument("--suite", default=None,
                   help="directory of minimal-pair *.jsonl files, or 'embedded' (default: the run's eval.blimp_dir)")
    p.add_argument("--method", default=None, choices=METHODS, help="default: the run's eval.method")
    p.add_argument("--max_pairs_per_file", type=int, default=0, help="first N pairs of each file (0 = all)")
    p.add_argument("--batch_size", type=int, default=None, help="masked copies per call (default: eval.batch_size)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--tasks", default=None, help="comma-separated fine-tuning tasks, e.g. rte,mrpc")
    p.add_argument("--tasks_dir", default=None, help="fine-tuning data folder (default: the fine-tuning config's)")
    return p


def _write_json(path, data: dict) -> None:
    """Writes through a temporary file, so a reader never sees half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.rename(path)


def evaluate_suite(run, suite: str, *, method: str, max_pairs_per_file: int, batch_size: int) -> tuple[str, dict]:
    """Scores `run.params` on a suite; returns (output path, result)."""
    from etils import epath

    from climb_jax.eval.blimp import BlimpEvaluator

    evaluator = BlimpEvaluator(run.model_config, run.tokenizer, suite, method=method, batch_size=batch_size,
                               max_pairs_per_file=max_pairs_per_file)
    result = {"step": int(run.step), "workdir": str(run.workdir), **evaluator(run.params)}
    path = epath.Path(run.workdir) / "eval" / f"{result['suite']}_{method}_step_{int(run.step):06d}.json"
    _write_json(path, result)
    return str(path), result


def _run_tasks(workdir: str, tasks: Sequence[str], step: int | None, data_dir: str | None):
    try:
        from climb_jax.eval.finetune import evaluate_tasks
    except ModuleNotFoundError as e:
        if e.name != "climb_jax.eval.finetune":
            raise
        raise ClimbError("fine-tuning evaluation (climb_jax.eval.finetune) is not installed; "
                         "--tasks is unavailable.") from None
    params = inspect.signature(evaluate_tasks).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {}
    for name, value in (("step", step), ("data_dir", data_dir)):
        if value is None:
            continue
        if name not in params and not takes_any:
            raise ClimbError(f"--{name} is not supported together with --tasks.")
        kwargs[name] = value
    return evaluate_tasks(workdir, list(tasks), **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from pathlib import Path

        from climb_jax.eval.suites import resolve_suite_dir

        if "://" not in args.workdir and not Path(args.workdir).is_dir():
            raise ClimbError(f"--workdir {args.workdir} does not exist; pass a run directory written by "
                             "`python -m climb_jax.main`.")
        if args.max_pairs_per_file < 0:
            raise ClimbError(f"--max_pairs_per_file must be >= 0 (0 = all pairs), got {args.max_pairs_per_file}.")
        if args.batch_size is not None and args.batch_size <= 0:
            raise ClimbError(f"--batch_size must be positive, got {args.batch_size}.")
        tasks = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
        if args.tasks is not None and not tasks:
            raise ClimbError("--tasks is empty; name tasks such as --tasks=rte,mrpc.")
        if args.suite is not None:
            resolve_suite_dir(args.suite)  # fail before restoring the checkpoint

        if args.suite is not None or not tasks:
            from climb_jax.train.checkpoint import load_run

            run = load_run(args.workdir, args.step)
            ev = run.config.get("eval", {}) if hasattr(run.config, "get") else {}
            suite = args.suite if args.suite is not None else ev.get("blimp_dir", "embedded")
            method = args.method or ev.get("method", "pll")
            batch_size = args.batch_size or int(ev.get("batch_size", 256))
            path, result = evaluate_suite(run, suite, method=method, max_pairs_per_file=args.max_pairs_per_file,
                                          batch_size=batch_size)
            print(f"{result['suite']} ({method}, step {run.step}): {result['overall']:.4f} over "
                  f"{result['num_pairs']} pairs", file=sys.stderr)
            print(path, flush=True)
        if tasks:
            out = _run_tasks(args.workdir, tasks, args.step, args.tasks_dir)
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
