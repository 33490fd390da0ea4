"""Objective curriculum: tag labels, POS masking rates, windows and schedule validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from climb_jax.config import schema
from climb_jax.constants import POS_INDEX
from climb_jax.curriculum import objectives
from climb_jax.errors import ConfigError

unit = schema.unit_config


def _units(**kw):
    from ml_collections import ConfigDict

    return ConfigDict(kw)


def test_labels_for_each_reference_tag_list():
    pos = jnp.asarray([[POS_INDEX[t] for t in ("NOUN", "VERB", "ADJ", "DET", ".", "X")]])
    nv = objectives.pos_labels(pos, objectives.TAG_LISTS["pos_noun_verb"])
    assert np.asarray(nv).tolist() == [[1, 2, 0, 0, 0, 0]]
    nva = objectives.pos_labels(pos, objectives.TAG_LISTS["pos_noun_verb_adj"])
    assert np.asarray(nva).tolist() == [[1, 2, 3, 0, 0, 0]]
    allt = objectives.pos_labels(pos, objectives.TAG_LISTS["pos_all"])
    assert np.asarray(allt).tolist() == [[1, 2, 3, 6, 11, 0]]


def _reference_trainer(units, total):
    """The reference's trainer loop, step by step: at step k the units with start <= k/T <= end
    compute their loss; the optimizer callback then sees k + 1 and steps every unit with
    start <= (k+1)/T <= end (the head moves only if it holds a gradient, i.e. computed its loss
    since its last step). Returns per unit the loss steps, the update steps and the number of
    scheduler steps taken before each update."""
    out = {}
    for u in units:
        loss, updates, sched_before = [], [], []
        sched, has_grad = 0, False
        for k in range(total):
            if u.start <= k / total <= u.end:
                loss.append(k)
                has_grad = True
            if u.start <= (k + 1) / total <= u.end:
                if has_grad:
                    updates.append(k)
                    sched_before.append(sched)
                sched += 1
                has_grad = False
        out[u.name] = (loss, updates, sched_before)
    return out


@pytest.mark.parametrize("total", [800, 1000, 37])
def test_windows_match_the_reference_trainer(total):
    units = objectives.parse_units(_units(
        mlm=unit("mlm", 0.125, 1.0), nv=unit("pos", 0.0, 0.125, "pos_noun_verb"),
        nva=unit("pos", 0.0625, 0.3, "pos_noun_verb_adj"), all=unit("pos", 0.1, 1.0, "pos_all")))
    ref = _reference_trainer(units, total)
    for u in units:
        loss, updates, sched_before = ref[u.name]
        first, last = u.loss_steps(total)
        assert (first, last) == (loss[0], loss[-1]) and loss == list(range(first, last + 1)), u.name
        ufirst, ulast = u.update_steps(total)
        assert updates == list(range(ufirst, ulast + 1)), u.name
        # The schedule index at each update: updates so far plus the offset.
        assert sched_before == [u.schedule_offset(total) + i for i in range(len(updates))], u.name
        assert u.num_steps(total) == int(total * (u.end - u.start))


def test_window_activation_at_boundaries():
    units = objectives.parse_units(_units(mlm=unit("mlm", 0.125, 1.0), nv=unit("pos", 0.0, 0.125, "pos_noun_verb")))
    assert [u.name for u in units] == ["mlm", "nv"]
    total = 800
    w = lambda s: np.asarray(objectives.unit_weights(units, s, total)).tolist()
    moves = lambda s: np.asarray(objectives.head_updates(units, s, total)).tolist()
    assert w(0) == [0.0, 1.0] and moves(0) == [False, True]
    assert w(99) == [0.0, 1.0] and moves(99) == [False, True]
    # Both ends inclusive: at step 100 = 0.125 T both losses count; the POS head no longer moves.
    assert w(100) == [1.0, 1.0] and moves(100) == [True, False]
    assert w(101) == [1.0, 0.0]
    assert w(799) == [1.0, 0.0] and moves(799) == [True, False]
    assert [u.always_active(total) for u in units] == [False, False]
    # Jitted with a traced step: same values, no recompile per step.
    f = jax.jit(lambda s: objectives.unit_weights(units, s, total))
    assert np.asarray(f(jnp.int32(100))).tolist() == [1.0, 1.0]


def test_unit_masking_defaults_are_the_reference():
    units = objectives.parse_units(_units(mlm=unit("mlm", 0, 1), nv=unit("pos", 0, 1, "NOUN,VERB")))
    mlm, nv = units
    assert (mlm.mask_probability, mlm.random_probability, mlm.unmask_probability) == (0.15, 0.1, 0.0)
    assert (nv.mask_probability_pos, nv.mask_probability_other) == (0.4, 0.15)
    assert (nv.random_probability, nv.unmask_probability) == (0.1, 0.1)
    assert mlm.schedule == nv.schedule == "window" and mlm.adam_eps == nv.adam_eps == 1e-6
    with pytest.raises(ConfigError, match="at most 1"):
        bad = unit("mlm", 0, 1)
        bad.random_probability, bad.unmask_probability = 0.6, 0.6
        objectives.parse_units(_units(mlm=bad))


@pytest.mark.parametrize(
    "units, message",
    [
        (dict(nv=unit("pos", 0, 1, "NOUN,VERB")), "exactly one 'mlm' unit"),
        (dict(mlm=unit("mlm", 0.2, 1.0)), "between 0 and 0.2 with no active unit"),
        (dict(mlm=unit("mlm", 0.5, 1.0), nv=unit("pos", 0.0, 0.3, "NOUN")), "between 0.3 and 0.5"),
        (dict(mlm=unit("mlm", 0.0, 0.9)), "between 0.9 and 1"),
        (dict(mlm=unit("mlm", 0.6, 0.4)), "0 <= start <= end <= 1"),
        (dict(mlm=unit("mlm", 0, 1), nv=unit("pos", 0, 1, "NOUN,BANANA")), "unknown tag 'BANANA'"),
        (dict(mlm=unit("mlm", 0, 1), nv=unit("pos", 0, 1, "")), "has no tags"),
        (dict(mlm=unit("mlm", 0, 1), nv=unit("cls", 0, 1)), "task 'cls' is not valid"),
    ],
)
def test_schedule_validation_errors(units, message):
    with pytest.raises(ConfigError, match=message):
        objectives.validate_units(_units(**units))
