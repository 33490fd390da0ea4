"""Objective curriculum: tag labels, POS masking rates, windows and schedule validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from climb_jax import config_lib
from climb_jax.constants import POS_INDEX
from climb_jax.curriculum import objectives
from climb_jax.errors import ConfigError

unit = config_lib.unit_config


def _units(**kw):
    from ml_collections import ConfigDict

    return ConfigDict(kw)


def test_labels_for_each_seed_tag_list():
    pos = jnp.asarray([[POS_INDEX[t] for t in ("NOUN", "VERB", "ADJ", "DET", ".", "X")]])
    nv = objectives.pos_labels(pos, objectives.TAG_LISTS["pos_noun_verb"])
    assert np.asarray(nv).tolist() == [[1, 2, 0, 0, 0, 0]]
    nva = objectives.pos_labels(pos, objectives.TAG_LISTS["pos_noun_verb_adj"])
    assert np.asarray(nva).tolist() == [[1, 2, 3, 0, 0, 0]]
    allt = objectives.pos_labels(pos, objectives.TAG_LISTS["pos_all"])
    assert np.asarray(allt).tolist() == [[1, 2, 3, 6, 11, 0]]


def test_pos_masking_rates_by_tag():
    u = objectives.parse_units(_units(mlm=unit("mlm", 0, 1), nv=unit("pos", 0, 1, "NOUN,VERB")))[1]
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 500, size=(256, 128)).astype(np.int32)
    ids[:, 0] = 0
    pos = rng.integers(0, 12, size=(256, 128))
    labels = objectives.pos_labels(jnp.asarray(pos), u.tags)
    masked, selected = objectives.pos_masking(jax.random.PRNGKey(0), jnp.asarray(ids), labels, u, 500)
    sel = np.asarray(selected)
    lab = np.asarray(labels)
    assert not sel[:, 0].any()  # specials never
    tagged = sel[:, 1:][lab[:, 1:] > 0].mean()
    other = sel[:, 1:][lab[:, 1:] == 0].mean()
    assert abs(tagged - 0.4) < 0.01, tagged
    assert abs(other - 0.15) < 0.01, other
    # unselected tokens unchanged
    assert (np.asarray(masked)[~sel] == ids[~sel]).all()


def test_window_activation_at_boundaries():
    units = objectives.parse_units(_units(mlm=unit("mlm", 0.125, 1.0), nv=unit("pos", 0.0, 0.125, "pos_noun_verb")))
    assert [u.name for u in units] == ["mlm", "nv"]
    total = 800
    w = lambda s: np.asarray(objectives.unit_weights(units, s, total)).tolist()
    assert w(0) == [0.0, 1.0]
    assert w(99) == [0.0, 1.0]
    assert w(100) == [1.0, 0.0]
    assert w(799) == [1.0, 0.0]
    for s in (0, 99, 100, 500):
        assert w(s) == objectives.unit_weights_host(units, s, total).tolist()
    # Jitted with a traced step: same values, no recompile per step.
    f = jax.jit(lambda s: objectives.unit_weights(units, s, total))
    assert np.asarray(f(jnp.int32(100))).tolist() == [1.0, 0.0]


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
