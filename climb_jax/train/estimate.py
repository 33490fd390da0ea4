"""What a run will cost, said a few steps in, before most of it is paid: wall-clock time by stage.

The reference's recipe measures dev pseudo-perplexity on 10,000 rows with every position masked at
every eighth of training: on a CPU a `tiny` run of a few hundred steps spends hours there, silently,
after minutes of training. So every run times its real compiled functions once at start-up (a few
train steps after the first, which compiles; one batch of each evaluation's heaviest shape, twice,
the first call compiling it; one re-scoring call) and prints the schedule's cost stage by stage,
with a warning naming the settings that shrink evaluation when it would take most of the run.

Costs come from the plans the evaluations will run (eval/batching.py): a plan's time is its timed
batch's time scaled by its padded tokens (size x width). As the run goes, measured durations replace
the estimates (`remaining`, the log line's ETA).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

import jax
import numpy as np

CALIBRATION_STEPS = 5  # steady train steps timed after the first
ASSUMED_SAVE_BYTES_PER_S = 200e6  # a checkpoint's cost until one is timed
# The stages the schedule counts, by their `schedule` key.
STAGE_NAMES = {"steps": "training", "dev_perplexity": "dev perplexity (checkpoint selection)",
               "evaluate": "evaluation (BLiMP, dev pseudo-perplexity)", "rescore": "self-perplexity re-scoring",
               "checkpoint": "checkpoints"}


@dataclasses.dataclass(frozen=True)
class Stage:
    """One kind of work in the run: `count` times `unit_s` seconds."""

    name: str
    count: int
    unit_s: float
    detail: str = ""
    evaluation: bool = False
    keys: tuple[str, ...] = ()  # the config keys (with a hint) that shrink it

    @property
    def seconds(self) -> float:
        return self.count * self.unit_s


def schedule(config, start: int, selection_points, rescoring: bool) -> dict[str, int]:
    """How many of each scheduled event the run holds after step `start`, as the training loop
    orders them: dev measurements at the selection points, evaluations every `trainer.eval_every`
    steps before the last and one at the end, re-scorings at the multiples of `update_every`
    before the last step, and checkpoints every `checkpoint_every` steps and at the last."""
    t, total = config.trainer, int(config.trainer.total_steps)

    def multiples(every: int, last: int) -> int:  # multiples of `every` in (start, last]
        return last // every - start // every if every > 0 and last > start else 0

    return {
        "steps": max(total - start, 0),
        "dev_perplexity": sum(1 for p in selection_points if p > start),
        "evaluate": multiples(int(t.eval_every), total - 1) + int(bool(config.eval.at_end)),
        "rescore": multiples(int(config.data_curriculum.update_every), total - 1) if rescoring else 0,
        "checkpoint": multiples(int(t.checkpoint_every), total) + int(total > start and total % t.checkpoint_every != 0),
    }


def plan_seconds(plan, timed_batch, seconds: float) -> float:
    """A plan's time from one timed batch: scaled by padded tokens (batch size x width)."""
    tokens = sum(b.size * b.width for b in plan.batches)
    return seconds * tokens / (timed_batch.size * timed_batch.width)


def heaviest_batch(plan):
    """A batch of the shape holding the most padded tokens of `plan` (the one worth timing)."""
    work: dict[tuple[int, int], int] = {}
    first: dict[tuple[int, int], object] = {}
    for b in plan.batches:
        work[(b.size, b.width)] = work.get((b.size, b.width), 0) + b.size * b.width
        first.setdefault((b.size, b.width), b)
    return first[max(work, key=work.get)]


def duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def total_seconds(stages: list[Stage]) -> float:
    return sum(s.seconds for s in stages)


def evaluation_share(stages: list[Stage]) -> float:
    total = total_seconds(stages)
    return sum(s.seconds for s in stages if s.evaluation) / total if total > 0 else 0.0


def describe(stages: list[Stage], header: str) -> list[str]:
    """The printed estimate: one line per stage, the total, and a warning when evaluation is most of it."""
    width = max(len(s.name) for s in stages)
    lines = [header]
    for s in stages:
        times = f"{s.count} x {duration(s.unit_s)}" if s.count != 1 else "1"
        lines.append(f"  {s.name:<{width}}  {duration(s.seconds):>7}  ({times}{'; ' + s.detail if s.detail else ''})")
    share = evaluation_share(stages)
    lines.append(f"  {'total':<{width}}  {duration(total_seconds(stages)):>7}  (evaluation {100 * share:.0f}%)")
    if share > 0.5:
        keys: dict[str, str] = {}  # by key, in the order of the costliest stage first
        for s in sorted(stages, key=lambda s: -s.seconds):
            for k in s.keys if s.evaluation and s.seconds > 0 else ():
                keys.setdefault(k.split(" ")[0].split("=")[0], k)
        lines.append(f"warning: evaluation is {100 * share:.0f}% of this run's estimated time; to shrink it, set "
                     + "; ".join(keys.values()) + ".")
    return lines


class CostEstimate:
    """Times the run's first steps and its evaluations' calls, prints the estimate, keeps it current.

    `after_step(step, params)` is called by the training loop after every step; `saved(seconds)`
    after every checkpoint save; `remaining(step, step_s)` is the time left at `step`."""

    def __init__(self, config, *, evaluator=None, selection=None, curriculum=None, train_ids=None,
                 say: Callable[[str], None] = print):
        self.config, self.evaluator, self.selection, self.curriculum = config, evaluator, selection, curriculum
        self.points = selection.points if selection is not None else set()
        self.rescoring = curriculum is not None and curriculum.rescoring
        self.train_ids, self.say = train_ids, say
        self.created = time.perf_counter()
        self.start: int | None = None
        self.times: list[float] = []  # when after_step was called, from the run's first step on
        self.save_s: float | None = None
        self.stages: list[Stage] | None = None
        self.compiles: list[float] = []  # first call minus steady call, per shape compiled while timing
        self.header = ""

    # -- hooks ----------------------------------------------------------------------------------
    def after_step(self, step: int, params) -> None:
        """Times the step; after a few, or sooner when a (perhaps long) measurement is due at `step`,
        times the evaluations and prints the estimate."""
        if self.stages is not None:
            return
        if self.start is None:
            self.start = step - 1
        self.times.append(time.perf_counter())
        t = self.config.trainer
        measuring = step in self.points or bool(t.eval_every and step % t.eval_every == 0)
        if len(self.times) == CALIBRATION_STEPS + 1 or step >= int(t.total_steps) or (measuring and len(self.times) > 1):
            self.stages = self.estimate(params)
            for line in describe(self.stages, self.header):
                self.say(line)

    def saved(self, seconds: float) -> None:
        self.save_s = seconds

    # -- the estimate ---------------------------------------------------------------------------
    def estimate(self, params) -> list[Stage]:
        """Times the evaluations' calls with `params` and builds the stages of the run after `start`."""
        c = self.config
        intervals = np.diff(self.times)
        step_s = float(statistics.median(intervals)) if len(intervals) else self.times[0] - self.created
        counts = schedule(c, self.start, self.points, self.rescoring)
        stages = [Stage("start-up and first step (measured)", 1, self.times[0] - self.created, "state, first compile"),
                  Stage(STAGE_NAMES["steps"], counts["steps"] - 1, step_s,
                        f"{c.trainer.batch_size} x {c.data.seq_len} tokens")]
        plans = self.evaluator.plans() if self.evaluator is not None else {}
        plans = {k: v for k, v in plans.items() if counts[k]}  # the measures this run still makes
        if "dev_perplexity" in plans:
            (plan,) = plans["dev_perplexity"]
            stages.append(Stage(
                STAGE_NAMES["dev_perplexity"], counts["dev_perplexity"], self._time_plans(params, [plan]),
                f"{len(plan.sequences)} dev rows, {plan.num_copies:,} masked copies each", True,
                (f"eval.dev_perplexity_sequences (now {c.eval.dev_perplexity_sequences}: the dev rows each "
                 "measurement scores, every position masked)", "eval.select=last (no dev measurements)")))
        if "evaluate" in plans:
            periodic = counts["evaluate"] > int(bool(c.eval.at_end))
            stages.append(Stage(
                STAGE_NAMES["evaluate"], counts["evaluate"], self._time_plans(params, plans["evaluate"]),
                f"{self.evaluator.describe()}; {sum(p.num_copies for p in plans['evaluate']):,} masked copies", True,
                (f"eval.max_pairs_per_file (now {c.eval.max_pairs_per_file}; 0 = all)",
                 f"eval.perplexity_sequences (now {c.eval.perplexity_sequences})")
                + ((f"trainer.eval_every (now {c.trainer.eval_every}; 0 = at the end only)",) if periodic else ())))
        if counts["rescore"]:
            stages.append(self._rescore_stage(params, counts["rescore"]))
        shapes = self._uncompiled(params, [p for v in plans.values() for p in v])
        if shapes:
            stages.append(Stage("compiling evaluation shapes", len(shapes), float(np.mean(self.compiles)),
                                "each padded shape once, at its first use", True,
                                ("eval.max_pairs_per_file (fewer sentence lengths)",)))
        stages.append(Stage(STAGE_NAMES["checkpoint"], counts["checkpoint"] + counts["dev_perplexity"],
                            self._save_seconds(params), "regular saves and at most one best-checkpoint save "
                            "per dev measurement"))
        self.header = (f"cost estimate of this run from step {self.start} (timed: {len(intervals)} train steps, "
                       f"one batch of each evaluation; compiling the timed shapes took "
                       f"{duration(sum(self.compiles))}):")
        return stages

    def _time(self, first_and_steady: tuple[float, float], compiled: bool) -> float:
        """The steady time of a timed call; its compile time is kept when the call compiled."""
        first, steady = first_and_steady
        if compiled:
            self.compiles.append(max(first - steady, 0.0))
        return steady

    def _time_plans(self, params, plans) -> float:
        total, scorer = 0.0, self.evaluator.scorer
        for plan in plans:
            if plan.batches:
                batch = heaviest_batch(plan)
                new = (batch.size, batch.width) not in scorer.shapes_run
                total += plan_seconds(plan, batch, self._time(scorer.time_batch(params, plan, batch), new))
        return total

    def _rescore_stage(self, params, count: int) -> Stage:
        dc = self.config.data_curriculum
        scorer = self.curriculum.model_scorer()
        unit = self._time(scorer.time_call(params, self.train_ids), False)
        calls = scorer.calls(self.train_ids, self.curriculum.rows_to_rescore(int(dc.update_every)))
        return Stage(STAGE_NAMES["rescore"], count, calls * unit,
                     f"{calls:,} calls of {dc.rescore_batch_size}, {dc.self_perplexity_estimator} estimator", True,
                     (f"data_curriculum.update_every (now {dc.update_every})",
                      f"data_curriculum.rescore_fraction (now {dc.rescore_fraction})",
                      "data_curriculum.self_perplexity_estimator=one_mask (one pass per row)"))

    def _uncompiled(self, params, plans) -> set:
        """The shapes of `plans` not compiled yet; if no compile was timed, one of them is (the heaviest),
        so that the estimate has a compile time to count them with."""
        if not plans:
            return set()
        scorer = self.evaluator.scorer
        left = {(b.size, b.width): (p, b) for p in plans for b in p.batches if (b.size, b.width) not in scorer.shapes_run}
        if left and not self.compiles:
            plan, batch = left.pop(max(left, key=lambda shape: shape[0] * shape[1]))
            self._time(scorer.time_batch(params, plan, batch), True)
        return set(left)

    def _save_seconds(self, params) -> float:
        if self.save_s is not None:
            return self.save_s
        state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))
        return 3 * state_bytes / ASSUMED_SAVE_BYTES_PER_S  # parameters and two Adam moments

    # -- as the run goes ------------------------------------------------------------------------
    def remaining(self, step: int, step_s: float) -> float | None:
        """Seconds left at `step`: the steps at `step_s` each (the last log interval's rate) and the
        evaluations and saves still scheduled, at their measured durations where measured."""
        if self.stages is None:
            return None
        measured = {**(self.evaluator.seconds if self.evaluator is not None else {}),
                    **(self.curriculum.seconds if self.curriculum is not None else {})}
        if self.save_s is not None:
            measured["checkpoint"] = self.save_s
        counts = schedule(self.config, step - 1, self.points, self.rescoring)  # step's own events come after its log
        unit = {s.name: s.unit_s for s in self.stages}
        left = (counts["steps"] - 1) * step_s
        for key in ("dev_perplexity", "evaluate", "rescore", "checkpoint"):
            if counts[key] and STAGE_NAMES[key] in unit:
                left += counts[key] * measured.get(key, unit[STAGE_NAMES[key]])
        return left
