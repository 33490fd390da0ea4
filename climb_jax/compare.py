"""`python -m climb_jax.compare RUN_DIR... --out=DIR [--baseline=vanilla]`: the comparison report.

RUN_DIR is a training run's workdir, or a folder whose sub-folders are workdirs (a sweep's output).
Runs are grouped by their config `label` into arms, seeds averaged. The runs of an arm must differ only
in their seed (same corpus, model and recipe; `--allow_mixed` pools them anyway) and never repeat one.
Runs that have not reached their last step are left out and listed (`--include_unfinished`: an arm of
their own). Every arm is compared with the baseline arm. Writes report.md,
report.csv, report.json and PNG plots into --out, and prints the summary table and the path of
report.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from climb_jax import console
from climb_jax.errors import ClimbError, print_error


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m climb_jax.compare", description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="training workdirs or folders of them")
    p.add_argument("--out", required=True, help="folder for report.md, report.csv, report.json and plots")
    p.add_argument("--baseline", default=None,
                   help="label of the baseline runs (default: 'vanilla', skipped if absent)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--n_boot", type=int, default=2000, help="bootstrap replicates (default 2000)")
    p.add_argument("--n_perm", type=int, default=10000, help="sign-flip permutations (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the resampling")
    p.add_argument("--no_plots", action="store_true", help="write the tables only")
    p.add_argument("--include_unfinished", action="store_true",
                   help="compare runs that have not reached their last step too, each label's as an arm of its own "
                        "(default: left out, and listed in the report)")
    p.add_argument("--allow_mixed", action="store_true",
                   help="pool runs of one label that differ in more than their seed (corpus, model, recipe); "
                        "the report names the differences")
    args = p.parse_args(argv)
    if not 0 < args.alpha < 1:
        p.error("--alpha must lie in (0, 1)")
    if args.n_boot < 100 or args.n_perm < 100:
        p.error("--n_boot and --n_perm must be at least 100")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    from climb_jax.analysis.render import headline
    from climb_jax.analysis.report import DEFAULT_BASELINE, build_report

    try:
        paths = build_report(
            args.run_dirs, args.out,
            baseline=args.baseline or DEFAULT_BASELINE, require_baseline=args.baseline is not None,
            alpha=args.alpha, n_boot=args.n_boot, n_perm=args.n_perm, seed=args.seed,
            plots=not args.no_plots, include_unfinished=args.include_unfinished, allow_mixed=args.allow_mixed,
        )
    except ClimbError as e:
        print_error(e)
        return 2
    markdown = paths["markdown"].read_text()
    table = headline(markdown)
    if table:
        print(table)
    for line in markdown.splitlines():
        if line.startswith("> "):  # the report's notes (baseline missing, unfinished runs, ...)
            print("note: " + line[2:])
    print(f"report: {paths['markdown']}")
    return 0


if __name__ == "__main__":
    with console.guarded():  # `... | head`: the lines nobody reads are dropped, the report is still written
        status = main()
    sys.exit(status)
