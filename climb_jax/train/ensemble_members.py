"""An ensemble config's members: which runs it holds, and whether one compiled step can train them all.

An ensemble (`configs/ensemble.py`) names config specs and a seed count; each (spec, seed) is a member,
an ordinary run in `<workdir>/<label>_seed<seed>/`. The members are trained by one vmapped step, so
everything the step closes over must be the same for all of them: the model, the data (and so the
tokenizer), the objective units, the optimizer's static settings and the schedule's length. What reaches
the step as an argument may differ: the seed, the curricula (the allowed-vocabulary table, the data
threshold, the units' weights) and the learning rates. A member that differs where it may not is named
with the first such field, before any data is prepared.
"""

from __future__ import annotations

import copy
import dataclasses
import re

from ml_collections import ConfigDict

from climb_jax.config import schema
from climb_jax.config.grammar import flatten
from climb_jax.errors import ConfigError

MEMBER_SEPARATOR = ";"
# Fields whose values reach the step as arguments (or never reach it): members may differ in them.
MAY_DIFFER = ("seed", "name", "label", "ensemble", "vocab_curriculum", "data_curriculum", "curriculum", "eval",
              "finetune", "trainer.lr", "trainer.end_lr", "trainer.warmup_steps")
# Not shared with members: the ensemble's own name and fields.
NOT_INHERITED = ("name", "label", "seed", "ensemble")


@dataclasses.dataclass(frozen=True)
class Member:
    label: str  # the arm's name in reports (the member spec's default label)
    seed: int
    config: ConfigDict  # a complete run config

    @property
    def dirname(self) -> str:
        """`<label>_seed<seed>`, with the label's `:` and other characters a folder name avoids as `-`."""
        return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', self.label)}_seed{self.seed}"


def is_ensemble(config: ConfigDict) -> bool:
    return "ensemble" in config and bool(str(config.ensemble.members).strip())


def _under(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def specs(config: ConfigDict) -> list[str]:
    found = [s.strip() for s in str(config.ensemble.members).split(MEMBER_SEPARATOR) if s.strip()]
    if int(config.ensemble.seeds) < 1:
        raise ConfigError(f"ensemble.seeds is {config.ensemble.seeds}: give the number of seeds per member (1 or more).")
    return found


def _spec_path(spec: str) -> str:
    path, words = schema.split_spec(spec)
    if "/" not in path and not path.startswith("."):
        path = f"configs/{path}"
    return path if words is None else f"{path}:{words}"


def expand(config: ConfigDict) -> list[Member]:
    """The members of an ensemble config: each spec's config with the ensemble's own settings (every
    field that differs from the base defaults) applied, for seeds `seed, seed + 1, ...`."""
    base = flatten(schema.base_config())
    shared = {k: v for k, v in flatten(config).items()
              if not _under(k, NOT_INHERITED) and (k not in base or base[k] != v)}
    members = []
    for spec in specs(config):
        try:
            loaded = schema.load(_spec_path(spec))
        except ConfigError as e:
            raise ConfigError(f"ensemble member '{spec}': {e}") from None
        label = schema.default_label(spec)
        for k in range(int(config.ensemble.seeds)):
            c = copy.deepcopy(loaded)
            with c.ignore_type():
                for key, value in shared.items():
                    _set(c, key, value)
            c.seed = int(config.seed) + k
            c.label = label
            members.append(Member(label, c.seed, c))
    check_shared(members)
    return members


def _set(c: ConfigDict, key: str, value) -> None:
    *parents, last = key.split(".")
    target = c
    for part in parents:
        if part not in target:
            target[part] = ConfigDict()
        target = target[part]
    target[last] = value


_UNSET = object()


def _show(value) -> str:
    return "not set" if value is _UNSET else repr(value)


def check_shared(members: list[Member]) -> None:
    """One `ConfigError` naming the first member that one compiled step cannot train with the first."""
    if not members:
        raise ConfigError("ensemble.members is empty: name the configs to train, e.g. "
                          "--config.ensemble.members='vanilla.py;vocab_cl.py:token_ids'.")
    labels = [m.dirname for m in members]
    if len(set(labels)) != len(labels):
        dup = next(x for x in labels if labels.count(x) > 1)
        raise ConfigError(f"ensemble member {dup} appears twice: give each config once (ensemble.seeds sets the seeds).")
    first = flatten(members[0].config)
    unk = {}
    for m in members:
        fields = flatten(m.config)
        for key in sorted(set(first) | set(fields)):
            if _under(key, MAY_DIFFER):
                continue
            a, b = first.get(key, _UNSET), fields.get(key, _UNSET)
            if a != b:
                raise ConfigError(
                    f"ensemble member '{m.label}' (seed {m.seed}) differs from '{members[0].label}' in {key} "
                    f"({_show(b)} vs {_show(a)}): one compiled step cannot train both; run them as separate runs "
                    "(python -m climb_jax.main --config=configs/<file>.py ...) and compare their workdirs.")
        if m.config.vocab_curriculum.kind != "none":  # applies only where tokens are replaced
            unk.setdefault(m.config.vocab_curriculum.unk_targets, m)
    if len(unk) > 1:
        m = list(unk.values())[1]
        raise ConfigError(f"ensemble member '{m.label}' differs in vocab_curriculum.unk_targets from "
                          f"'{list(unk.values())[0].label}': one compiled step cannot train both; run them separately.")
