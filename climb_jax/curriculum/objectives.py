"""Objective curriculum: the units (MLM and part-of-speech class prediction) and their windows.

Every unit's head exists from step 0 and the compiled step computes from the step counter which units
are active, so switching objectives never recompiles. A POS unit classifies masked tokens into its tag
list (label = tag index + 1, 0 = any other tag), masking tagged tokens more often than the rest
(`train/masking.py`).

Windows follow the reference exactly. Its trainer computes a unit's loss at step k (0-based) when
`start <= k / T <= end` (both ends inclusive), and steps the unit's optimizer and scheduler in a
callback that already sees the incremented counter k + 1. Hence, for a unit whose window starts after
step 0, the scheduler takes one step (with no gradient) just before the unit's first loss, and a unit
whose window ends before T computes its loss on its last step without updating its head (the encoder
still learns from it). `Unit.loss_steps`, `Unit.update_steps` and `Unit.schedule_offset` state those
three facts once; the step and the optimizers read them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from climb_jax.config import choices
from climb_jax.constants import POS_INDEX, POS_TAGS
from climb_jax.errors import ConfigError

# The reference's tag lists.
TAG_LISTS = {
    "pos_all": POS_TAGS[:-1],
    "pos_noun_verb": ("NOUN", "VERB"),
    "pos_noun_verb_adj": ("NOUN", "VERB", "ADJ"),
}


def _first_step_at_or_after(fraction: float, total_steps: int) -> int:
    """The smallest k >= 0 with fraction <= k / total_steps, in the reference's float arithmetic."""
    k = max(0, math.ceil(fraction * total_steps))
    while k > 0 and fraction <= (k - 1) / total_steps:
        k -= 1
    while not fraction <= k / total_steps:
        k += 1
    return k


def _last_step_at_or_before(fraction: float, total_steps: int) -> int:
    """The largest k <= total_steps with k / total_steps <= fraction, in the same arithmetic."""
    k = min(total_steps, math.floor(fraction * total_steps))
    while k < total_steps and (k + 1) / total_steps <= fraction:
        k += 1
    while k >= 0 and not k / total_steps <= fraction:
        k -= 1
    return k


@dataclasses.dataclass(frozen=True)
class Unit:
    """One objective unit, resolved from config; hashable so it can be closed over by the jitted step."""

    name: str
    task: str  # choices.UNIT_TASKS
    start: float
    end: float
    lr: float
    weight_decay: float
    schedule: str  # choices.UNIT_SCHEDULES
    tags: tuple[str, ...] = ()
    adam_eps: float = 1e-6  # the reference's heads: transformers.AdamW's default
    mask_probability: float = choices.MLM_MASK_PROBABILITY
    mask_probability_pos: float = choices.POS_MASK_PROBABILITY
    mask_probability_other: float = choices.OTHER_MASK_PROBABILITY
    random_probability: float = choices.RANDOM_TOKEN_PROBABILITY
    unmask_probability: float = choices.MLM_UNMASK_PROBABILITY

    @property
    def head(self) -> str:
        """The name of this unit's head (its parameter group and optimizer) in the parameter tree."""
        return "mlm_head" if self.task == "mlm" else f"{self.name}_head"

    @property
    def num_classes(self) -> int:
        return len(self.tags) + 1

    def loss_steps(self, total_steps: int) -> tuple[int, int]:
        """First and last step (inclusive, 0-based) at which the unit's loss is computed:
        start <= step / T <= end. `last` is capped at T - 1, the last step of training."""
        first = _first_step_at_or_after(self.start, total_steps)
        last = min(_last_step_at_or_before(self.end, total_steps), total_steps - 1)
        return first, last

    def update_steps(self, total_steps: int) -> tuple[int, int]:
        """First and last step (inclusive) at which the unit's head moves: a loss step whose next
        step k + 1 also lies in the window (the reference's optimizer callback sees k + 1)."""
        first, last = self.loss_steps(total_steps)
        return first, min(last, _last_step_at_or_before(self.end, total_steps) - 1)

    def schedule_offset(self, total_steps: int) -> int:
        """Scheduler steps taken before the unit's first update: 1 when its window starts after step 0."""
        return 1 if self.loss_steps(total_steps)[0] >= 1 else 0

    def num_steps(self, total_steps: int) -> int:
        """The reference's `task_num_steps`: int(T * (end - start)), the length of its lr schedule."""
        return int(total_steps * (self.end - self.start))

    def always_active(self, total_steps: int) -> bool:
        """Whether the unit computes its loss and moves its head at every step of training."""
        first, last = self.update_steps(total_steps)
        return first == 0 and last >= total_steps - 1


def _parse_tags(raw: str, unit: str) -> tuple[str, ...]:
    raw = raw.strip()
    if raw in TAG_LISTS:
        return tuple(TAG_LISTS[raw])
    tags = tuple(t.strip().upper() for t in raw.split(",") if t.strip())
    if not tags:
        raise ConfigError(
            f"objective unit '{unit}' is a pos unit but has no tags; set objective_curriculum.units.{unit}.tags "
            f"to a list such as 'NOUN,VERB' or one of {', '.join(TAG_LISTS)}."
        )
    for t in tags:
        if t not in POS_INDEX or t == "X":
            raise ConfigError(
                f"objective unit '{unit}': unknown tag '{t}'. Valid tags: {', '.join(POS_TAGS[:-1])}."
            )
    if len(set(tags)) != len(tags):
        raise ConfigError(f"objective unit '{unit}': tag list '{raw}' repeats a tag.")
    return tags


def parse_units(units_cfg: ConfigDict) -> tuple[Unit, ...]:
    """Units in a fixed order (MLM first, then by name) so the weight vector's layout is stable."""
    units = []
    for name in sorted(units_cfg.keys(), key=lambda n: (units_cfg[n].task != "mlm", n)):
        u = units_cfg[name]
        if u.task not in choices.UNIT_TASKS:
            raise ConfigError(f"objective unit '{name}': task '{u.task}' is not valid; choose one of: "
                              f"{', '.join(choices.UNIT_TASKS)}.")
        if u.schedule not in choices.UNIT_SCHEDULES:
            raise ConfigError(f"objective unit '{name}': schedule '{u.schedule}' is not valid; choose one of: "
                              f"{', '.join(choices.UNIT_SCHEDULES)}.")
        tags = _parse_tags(u.tags, name) if u.task == "pos" else ()
        fields = {f.name: f.default for f in dataclasses.fields(Unit) if f.default is not dataclasses.MISSING}
        values = {key: float(u.get(key, default)) for key, default in fields.items() if key != "tags"}
        for key in ("mask_probability", "mask_probability_pos", "mask_probability_other",
                    "random_probability", "unmask_probability"):
            if not 0 <= values[key] <= 1:
                raise ConfigError(f"objective unit '{name}': {key}={values[key]} must lie in [0, 1].")
        if values["random_probability"] + values["unmask_probability"] > 1:
            raise ConfigError(f"objective unit '{name}': random_probability + unmask_probability must be at most 1.")
        if not values["adam_eps"] > 0:
            raise ConfigError(f"objective unit '{name}': adam_eps must be positive, got {values['adam_eps']}.")
        units.append(Unit(name=name, task=u.task, start=float(u.start), end=float(u.end), lr=float(u.lr),
                          weight_decay=float(u.weight_decay), schedule=u.schedule, tags=tags, **values))
    return tuple(units)


def validate_units(units_cfg: ConfigDict) -> tuple[Unit, ...]:
    """The reference's checks: MLM present, windows inside [0, 1], and no point of training without a unit."""
    units = parse_units(units_cfg)
    mlm = [u for u in units if u.task == "mlm"]
    if len(mlm) != 1:
        raise ConfigError(
            f"the objective curriculum needs exactly one 'mlm' unit, found {len(mlm)} "
            f"({', '.join(u.name for u in units)})."
        )
    for u in units:
        if not (0.0 <= u.start <= u.end <= 1.0):
            raise ConfigError(
                f"objective unit '{u.name}': window [{u.start}, {u.end}] must satisfy 0 <= start <= end <= 1."
            )
        if u.lr <= 0:
            raise ConfigError(f"objective unit '{u.name}': lr must be positive, got {u.lr}.")
    # Coverage: sweep the sorted windows and report the first uncovered interval.
    covered = 0.0
    for u in sorted(units, key=lambda u: u.start):
        if u.start > covered + 1e-9:
            raise ConfigError(
                f"the objective schedule leaves training between {covered:g} and {u.start:g} with no active unit; "
                "extend a unit's window (objective_curriculum.units.<name>.start/end) to cover it."
            )
        covered = max(covered, u.end)
    if covered < 1.0 - 1e-9:
        raise ConfigError(
            f"the objective schedule leaves training between {covered:g} and 1 with no active unit; "
            "extend a unit's window to the end of training."
        )
    return units


def unit_weights(units: Sequence[Unit], step, total_steps: int):
    """Each unit's loss weight (1.0 while its loss is computed, else 0.0) at `step`: jnp, usable in jit."""
    step = jnp.asarray(step)
    out = []
    for u in units:
        first, last = u.loss_steps(total_steps)
        out.append(((step >= first) & (step <= last)).astype(jnp.float32))
    return jnp.stack(out)


def head_updates(units: Sequence[Unit], step, total_steps: int):
    """Whether each unit's head moves at `step` (its optimizer and schedule advance): jnp bool [U]."""
    step = jnp.asarray(step)
    out = []
    for u in units:
        first, last = u.update_steps(total_steps)
        out.append((step >= first) & (step <= last))
    return jnp.stack(out)


def pos_labels(pos_ids, tags: Sequence[str]):
    """Per-token class: index of the token's tag in `tags` plus one, or 0 for any other tag."""
    table = np.zeros(len(POS_TAGS), np.int32)
    for i, t in enumerate(tags):
        table[POS_INDEX[t]] = i + 1
    return jnp.asarray(table)[jnp.asarray(pos_ids).astype(jnp.int32)]
