"""Objective curriculum: the units (MLM and part-of-speech class prediction), their windows and masking.

Every unit's head exists from step 0 and the compiled step computes each unit's active weight from the
step counter, so switching objectives never recompiles. A POS unit classifies masked tokens into its tag
list (label = tag index + 1, 0 = any other tag), masking tagged tokens more often than the rest.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from climb_jax.constants import MASK_ID, NUM_SPECIAL, POS_INDEX, POS_TAGS
from climb_jax.errors import ConfigError

# The seed's tag lists.
TAG_LISTS = {
    "pos_all": POS_TAGS[:-1],
    "pos_noun_verb": ("NOUN", "VERB"),
    "pos_noun_verb_adj": ("NOUN", "VERB", "ADJ"),
}


@dataclasses.dataclass(frozen=True)
class Unit:
    """One objective unit, resolved from config; hashable so it can be closed over by the jitted step."""

    name: str
    task: str  # "mlm" or "pos"
    start: float
    end: float
    lr: float
    weight_decay: float
    schedule: str
    tags: tuple[str, ...] = ()
    mask_probability_pos: float = 0.4
    mask_probability_other: float = 0.15

    @property
    def head(self) -> str:
        """The name of this unit's head in the parameter tree."""
        return "mlm_head" if self.task == "mlm" else f"{self.name}_head"

    @property
    def num_classes(self) -> int:
        return len(self.tags) + 1

    @property
    def always_active(self) -> bool:
        return self.start <= 0.0 and self.end >= 1.0

    def window_steps(self, total_steps: int) -> tuple[int, int]:
        """[start, end) in steps; a unit ending at 1.0 stays active through the last step."""
        start = int(round(self.start * total_steps))
        end = total_steps + 1 if self.end >= 1.0 else int(round(self.end * total_steps))
        return start, end


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
        if u.task not in ("mlm", "pos"):
            raise ConfigError(f"objective unit '{name}': task '{u.task}' is not valid; choose 'mlm' or 'pos'.")
        if u.schedule not in ("trainer", "window"):
            raise ConfigError(f"objective unit '{name}': schedule '{u.schedule}' is not valid; choose 'trainer' or 'window'.")
        tags = _parse_tags(u.tags, name) if u.task == "pos" else ()
        for key in ("mask_probability_pos", "mask_probability_other"):
            if not 0 <= u[key] <= 1:
                raise ConfigError(f"objective unit '{name}': {key}={u[key]} must lie in [0, 1].")
        units.append(
            Unit(name=name, task=u.task, start=float(u.start), end=float(u.end), lr=float(u.lr),
                 weight_decay=float(u.weight_decay), schedule=u.schedule, tags=tags,
                 mask_probability_pos=float(u.mask_probability_pos),
                 mask_probability_other=float(u.mask_probability_other))
        )
    return tuple(units)


def validate_units(units_cfg: ConfigDict) -> tuple[Unit, ...]:
    """The seed's checks: MLM present, windows inside [0, 1], and no point of training without a unit."""
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
    """Each unit's active weight (0 or 1) at `step`: a jnp vector, usable inside jit."""
    step = jnp.asarray(step)
    weights = []
    for u in units:
        start, end = u.window_steps(total_steps)
        weights.append(((step >= start) & (step < end)).astype(jnp.float32))
    return jnp.stack(weights)


def unit_weights_host(units: Sequence[Unit], step: int, total_steps: int) -> np.ndarray:
    out = []
    for u in units:
        start, end = u.window_steps(total_steps)
        out.append(1.0 if start <= step < end else 0.0)
    return np.asarray(out, np.float32)


def pos_labels(pos_ids: jax.Array, tags: Sequence[str]) -> jax.Array:
    """Per-token class: index of the token's tag in `tags` plus one, or 0 for any other tag."""
    table = np.zeros(len(POS_TAGS), np.int32)
    for i, t in enumerate(tags):
        table[POS_INDEX[t]] = i + 1
    return jnp.asarray(table)[pos_ids.astype(jnp.int32)]


def pos_masking(key: jax.Array, input_ids: jax.Array, labels: jax.Array, unit: Unit, vocab_size: int,
                random_probability: float = 0.1, unmask_probability: float = 0.1):
    """The seed's POS-unit masking: tagged tokens masked with `mask_probability_pos`, other non-special
    tokens with `mask_probability_other`, then 80/10/10 mask/random/keep.

    Returns (masked_ids, selected) where `selected` marks the positions the loss is computed on.
    """
    k_sel, k_kind, k_rand = jax.random.split(key, 3)
    special = input_ids < NUM_SPECIAL
    prob = jnp.where(labels > 0, unit.mask_probability_pos, unit.mask_probability_other)
    selected = (jax.random.uniform(k_sel, input_ids.shape) < prob) & ~special
    r = jax.random.uniform(k_kind, input_ids.shape)
    to_mask = r < 1.0 - random_probability - unmask_probability
    to_random = (~to_mask) & (r < 1.0 - unmask_probability)
    random_ids = jax.random.randint(k_rand, input_ids.shape, NUM_SPECIAL, vocab_size, dtype=input_ids.dtype)
    replaced = jnp.where(to_mask, MASK_ID, jnp.where(to_random, random_ids, input_ids))
    return jnp.where(selected, replaced, input_ids), selected
