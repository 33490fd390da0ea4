"""Pacing functions: how far a curriculum has progressed at a given training step.

A pacing function maps a step to a difficulty in [0, 1]: the fraction of the (difficulty-sorted) data
the sampler may draw from, or the share of the vocabulary the model may see. The same `pace` runs on
the host (Python ints or numpy arrays, for the sampler, logging and plots) and inside the jitted train
step (traced `jnp` values), so moving the curriculum never recompiles the step.

The formulas are CLIMB's (after google-research/understanding-curricula), with the constant c = 10 for
`exp` and `log`. With `T = total_steps`, `a = start_percent * T`, `n = floor(end_percent * T - a)` (the
reference truncates the window length to an integer), `b = starting_difficulty`, `M = max_difficulty` and
`d = step - a`, each function returns `b` while `step < a` and otherwise `min(f(d), M)` with

    linear  b + (M - b) * d / n
    quad    b + (M - b) * (d / n) ** 2
    root    b + (M - b) * sqrt(d / n)
    exp     b + (M - b) * (exp(c * d / n) - 1) / (exp(c) - 1)
    log     b + (M - b) * (1 + log(d / n + exp(-c)) / c)
    step    b until step reaches end_percent * T, then M
    none    M from the first step

Differences from the reference, all deliberate: `none` returns `max_difficulty` (the reference returns 1.0, which
is the same for its configs); a window shorter than one step is treated as one step instead of dividing
by zero; once `d >= n` the value is exactly `M` (the reference computes `min(f(d), M)`, which agrees up to
float rounding) so that large steps never overflow `exp`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from climb_jax.config.choices import PACING_DEFAULTS, PACING_NAMES, DEFAULT_PACING
from climb_jax.errors import ConfigError

GROWTH_C = 10.0  # the reference's growth constant for `exp` and `log`


@dataclasses.dataclass(frozen=True)
class PacingParams:
    """The parameters of one pacing function (hashable, so it can be closed over by a jitted step)."""

    name: str = DEFAULT_PACING
    start_percent: float = PACING_DEFAULTS["start_percent"]
    end_percent: float = PACING_DEFAULTS["end_percent"]
    starting_difficulty: float = PACING_DEFAULTS["starting_difficulty"]
    max_difficulty: float = PACING_DEFAULTS["max_difficulty"]

    @classmethod
    def from_config(cls, cfg: Any) -> "PacingParams":
        """From a `pacing` config group (a ConfigDict or any mapping with the five fields)."""
        try:
            return cls(
                name=str(cfg["name"]),
                start_percent=float(cfg["start_percent"]),
                end_percent=float(cfg["end_percent"]),
                starting_difficulty=float(cfg["starting_difficulty"]),
                max_difficulty=float(cfg["max_difficulty"]),
            )
        except (KeyError, AttributeError) as e:
            raise ConfigError(
                f"a pacing config needs the fields name, start_percent, end_percent, starting_difficulty "
                f"and max_difficulty; missing {e}."
            ) from None

    def validate(self) -> "PacingParams":
        """Raises `ConfigError` for parameters that would give NaNs or a curriculum that never moves."""
        if self.name not in PACING_NAMES:
            raise ConfigError(f"unknown pacing function '{self.name}'; choose one of: {', '.join(PACING_NAMES)}.")
        for field in ("start_percent", "end_percent", "starting_difficulty", "max_difficulty"):
            value = getattr(self, field)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ConfigError(f"pacing {field}={value} must lie in [0, 1].")
        if self.start_percent >= self.end_percent:
            raise ConfigError(
                f"pacing start_percent={self.start_percent} must be smaller than end_percent={self.end_percent}."
            )
        if self.starting_difficulty > self.max_difficulty:
            raise ConfigError(
                f"pacing starting_difficulty={self.starting_difficulty} must not exceed "
                f"max_difficulty={self.max_difficulty}."
            )
        return self


def array_module(*values):
    """`jnp` when any input is a JAX array or tracer (inside jit), `numpy` otherwise (cheap on the host)."""
    return jnp if any(isinstance(v, jax.Array) or isinstance(v, jax.core.Tracer) for v in values) else np


def pace(params: PacingParams, step, total_steps):
    """The pacing value at `step` of `total_steps`, with `jnp` semantics: works on Python ints, numpy
    arrays (elementwise, float64) and traced values inside jit (float32), with no Python branching on
    the step."""
    xp = array_module(step, total_steps)
    step = xp.asarray(step)
    dtype = xp.float64 if xp is np else jnp.result_type(float)
    s = step.astype(dtype)
    total = xp.asarray(total_steps).astype(dtype)
    b = params.starting_difficulty
    m = params.max_difficulty
    if params.name == "none":
        return xp.full(s.shape, m, dtype)
    start = params.start_percent * total
    end = params.end_percent * total
    if params.name == "step":
        return xp.where(s < end, xp.asarray(b, dtype), xp.asarray(m, dtype))
    n = xp.maximum(xp.floor(end - start), 1.0)
    d = s - start
    done = d >= n
    r = xp.clip(d, 0.0, n) / n  # progress through the window in [0, 1]; clipped so exp never overflows
    c = GROWTH_C
    if params.name == "linear":
        f = r
    elif params.name == "quad":
        f = r * r
    elif params.name == "root":
        f = xp.sqrt(r)
    elif params.name == "exp":
        f = (xp.exp(c * r) - 1.0) / (math.exp(c) - 1.0)
    elif params.name == "log":
        f = 1.0 + xp.log(r + math.exp(-c)) / c
    else:
        raise ConfigError(f"unknown pacing function '{params.name}'; choose one of: {', '.join(PACING_NAMES)}.")
    value = xp.minimum(b + (m - b) * f, m)
    value = xp.where(done, xp.asarray(m, dtype), value)
    return xp.where(s < start, xp.asarray(b, dtype), value).astype(dtype)


def pace_float(params: PacingParams, step: int, total_steps: int) -> float:
    """`pace` as a Python float, for host code that wants a scalar."""
    return float(pace(params, int(step), int(total_steps)))
