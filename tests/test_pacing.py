"""Pacing functions: closed forms at the key points, the reference's step-by-step definition, host/jit agreement."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from climb_jax.curriculum.pacing import PACING_NAMES, PacingParams, pace, pace_float
from climb_jax.errors import ConfigError

T = 1000
P = dict(start_percent=0.1, end_percent=0.8, starting_difficulty=0.2, max_difficulty=0.9)


def reference_pace(name, step, total, start_percent, end_percent, starting_difficulty, max_difficulty):
    """The reference's definitions, one Python step at a time (CLIMB's get_pacing_fn, c = 10)."""
    a, e = start_percent * total, end_percent * total
    n = int(e - a)
    b, m = starting_difficulty, max_difficulty
    if name == "none":
        return m
    if name == "step":
        return b if step < e else m
    if step < a:
        return b
    d = step - a
    c = 10
    if name == "linear":
        v = (m - b) / n * d + b
    elif name == "quad":
        v = (m - b) / n**2 * d**2 + b
    elif name == "root":
        v = (m - b) / n**0.5 * d**0.5 + b
    elif name == "exp":
        v = (m - b) / (math.exp(c) - 1) * (math.exp(d * c / n) - 1) + b
    elif name == "log":
        v = (m - b) * (1 + math.log(d / n + math.exp(-c)) / c) + b
    return min(v, m)


@pytest.mark.parametrize("name", PACING_NAMES)
def test_matches_reference_definition_at_every_step(name):
    p = PacingParams(name=name, **P).validate()
    steps = np.arange(T + 1)
    ours = pace(p, steps, T)
    ref = np.array([reference_pace(name, int(s), T, **P) for s in steps])
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", [n for n in PACING_NAMES if n not in ("step", "none")])
def test_key_points(name):
    p = PacingParams(name=name, **P)
    b, m = P["starting_difficulty"], P["max_difficulty"]
    assert pace_float(p, 0, T) == pytest.approx(b)  # before start
    assert pace_float(p, 99, T) == pytest.approx(b)
    assert pace_float(p, 100, T) == pytest.approx(b)  # at start: the curve starts at b
    assert pace_float(p, 800, T) == pytest.approx(m)  # at end
    assert pace_float(p, 1000, T) == pytest.approx(m)  # after end
    mid = pace_float(p, 450, T)  # halfway through the 700-step window
    closed = {
        "linear": b + (m - b) * 0.5,
        "quad": b + (m - b) * 0.25,
        "root": b + (m - b) * math.sqrt(0.5),
        "exp": b + (m - b) * (math.exp(5) - 1) / (math.exp(10) - 1),
        "log": b + (m - b) * (1 + math.log(0.5 + math.exp(-10)) / 10),
    }[name]
    assert mid == pytest.approx(closed, abs=1e-12)


def test_step_and_none():
    s = PacingParams(name="step", **P)
    assert pace_float(s, 799, T) == pytest.approx(0.2) and pace_float(s, 800, T) == pytest.approx(0.9)
    n = PacingParams(name="none", **P)
    assert pace_float(n, 0, T) == pytest.approx(0.9) and pace_float(n, 1000, T) == pytest.approx(0.9)


@pytest.mark.parametrize("name", PACING_NAMES)
def test_monotone_and_bounded(name):
    p = PacingParams(name=name)
    v = pace(p, np.arange(0, 400_001, 997), 400_000)
    assert np.all(np.diff(v) >= -1e-12)
    assert v.min() >= p.starting_difficulty - 1e-12 and v.max() <= p.max_difficulty + 1e-12
    assert np.all(np.isfinite(v))


@pytest.mark.parametrize("name", PACING_NAMES)
def test_host_and_jit_agree_without_recompiling(name):
    p = PacingParams(name=name)
    total = 400_000
    traces = []

    @jax.jit
    def f(step):
        traces.append(1)
        return pace(p, step, total)

    steps = [0, 1, 24_999, 25_000, 100_000, 349_999, 350_000, 399_999]
    dev = np.array([float(f(jnp.int32(s))) for s in steps])
    host = np.array([pace_float(p, s, total) for s in steps])
    np.testing.assert_allclose(dev, host, atol=2e-6)
    assert len(traces) == 1


def test_short_window_does_not_divide_by_zero():
    p = PacingParams(name="log", start_percent=0.5, end_percent=0.501)
    v = pace(p, np.arange(0, 11), 10)  # the window is shorter than one step
    assert np.all(np.isfinite(v)) and v[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(start_percent=0.5, end_percent=0.5), "smaller than end_percent"),
    (dict(start_percent=0.9, end_percent=0.2), "smaller than end_percent"),
    (dict(max_difficulty=1.5), "must lie in [0, 1]"),
    (dict(starting_difficulty=-0.1), "must lie in [0, 1]"),
    (dict(starting_difficulty=0.8, max_difficulty=0.5), "must not exceed"),
    (dict(name="cosine"), "linear, quad, root, step, exp, log, none"),
])
def test_invalid_parameters_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=None) as info:
        PacingParams(**kwargs).validate()
    assert message in str(info.value)


def test_from_config():
    from climb_jax.config.schema import pacing_config

    cfg = pacing_config("root")
    p = PacingParams.from_config(cfg)
    assert p == PacingParams("root", 0.0625, 0.875, 0.1, 1.0)
    with pytest.raises(ConfigError, match="missing"):
        PacingParams.from_config({"name": "linear"})
