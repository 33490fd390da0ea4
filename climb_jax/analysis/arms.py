"""Which runs a comparison may pool as the seeds of one arm, and which it leaves out.

An arm's mean and its confidence interval are over seeds: they mean something only when the runs differ
in nothing but their seed. Runs that share a label are not that by themselves: a label can be reused for
another corpus, another model size or a changed learning rate, and a copied workdir repeats a seed. So the
runs of one label must have the same corpus (by content: `provenance.corpus_fingerprint` in config.json)
and the same config in every field that decides what is trained or measured; `--allow_mixed` pools them
anyway. A seed counts once per arm, always. Runs that have not reached their last step are left out
(`--include_unfinished` shows each as an arm of its own), and the report lists what it left out and why.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from climb_jax.analysis.runs import Run
from climb_jax.config.grammar import flatten
from climb_jax.errors import DataError

# Config fields that say where, how fast or how often a run ran, not what it trained or measured: runs
# of one arm may differ in these (a field or a whole section).
NOT_THE_RECIPE = (
    "seed", "label", "provenance",
    "data.cache_dir", "data.prepared_dir", "data.nltk_data", "data.num_workers", "data.prefetch", "data.shards",
    "trainer.log_every", "trainer.checkpoint_every", "trainer.keep_checkpoints", "trainer.async_checkpoints",
    "trainer.eval_every", "eval.batch_size", "data_curriculum.rescore_batch_size",
    "mesh", "distributed", "finetune",  # the device layout; fine-tuning has its own config
)
# Where the corpus was read from; the corpus fingerprint decides instead when both runs have one.
CORPUS_LOCATION = "data.corpus"
FINGERPRINT = "corpus fingerprint"


def _ignored(key: str) -> bool:
    return any(key == f or key.startswith(f + ".") for f in NOT_THE_RECIPE)


def corpus_fingerprint(run: Run) -> str | None:
    value = (run.config.get("provenance") or {}).get("corpus_fingerprint")
    return str(value) if value else None


def differences(a: Run, b: Run) -> list[tuple[str, Any, Any]]:
    """What makes `a` and `b` more than two seeds of one configuration: (field, a's value, b's value),
    the corpus fingerprint first, then the config fields in sorted order (a field one run lacks: None)."""
    out = []
    fa, fb = corpus_fingerprint(a), corpus_fingerprint(b)
    by_content = fa is not None and fb is not None
    if by_content and fa != fb:
        out.append((FINGERPRINT, fa, fb))
    ca, cb = flatten(a.config), flatten(b.config)
    for key in sorted(set(ca) | set(cb)):
        if _ignored(key) or (by_content and key == CORPUS_LOCATION):
            continue
        if ca.get(key) != cb.get(key):
            out.append((key, ca.get(key), cb.get(key)))
    return out


def _short(value: Any) -> str:
    """A value as the error shows it: a SHA-256 by its first 12 digits, anything else as Python writes it."""
    return value[:12] + "..." if isinstance(value, str) and len(value) == 64 else repr(value)


def check(groups: Mapping[str, list[Run]], *, allow_mixed: bool = False) -> list[str]:
    """Raises DataError, naming the field and the two runs, when an arm's runs repeat a seed or (unless
    `allow_mixed`) differ in more than their seed. Returns the report's notes on the arms that
    `allow_mixed` let pool unlike runs."""
    notes = []
    for label, runs in groups.items():
        seen: dict[int, Run] = {}
        for run in runs:
            if run.seed in seen:
                raise DataError(
                    f"the runs labelled '{label}' in {seen[run.seed].workdir} and {run.workdir} both have seed "
                    f"{run.seed}: a seed counts once in an arm's mean. Leave one out, or give one another "
                    "label (--config.label) if it is a different configuration.")
            seen[run.seed] = run
        first = runs[0]
        for run in runs[1:]:
            diff = differences(first, run)
            if diff and allow_mixed:
                notes.append(f"`{label}` pools runs that differ in more than their seed (--allow_mixed): "
                             f"{first.workdir} and {run.workdir} differ in {', '.join(k for k, _, _ in diff)}.")
            elif diff:
                key, va, vb = diff[0]
                others = [k for k, _, _ in diff[1:]]
                more = f" (and in {', '.join(others[:3])}{', ...' if len(others) > 3 else ''})" if others else ""
                raise DataError(
                    f"the runs labelled '{label}' in {first.workdir} and {run.workdir} differ in {key} "
                    f"({_short(va)} vs {_short(vb)}){more}, not only in their seed: give them different labels "
                    "(--config.label), or pass --allow_mixed to pool them anyway.")
    return notes


def left_out_unfinished(runs: Iterable[Run], include: bool) -> tuple[list[Run], list[dict]]:
    """(the runs to compare, the ones left out as {"workdir", "label", "seed", "why"}): runs that have not
    reached their `trainer.total_steps` are left out unless `include`."""
    kept, left = [], []
    for run in runs:
        if run.finished or include:
            kept.append(run)
        else:
            at = run.last_step if run.last_step is not None else 0
            left.append({"workdir": str(run.workdir), "label": run.label, "seed": run.seed,
                         "why": f"unfinished: trained to step {at} of {run.total_steps}"})
    return kept, left
