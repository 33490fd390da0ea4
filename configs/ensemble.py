"""A comparison trained as one program: several configs x several seeds, one vmapped step.

  python -m climb_jax.main --config=configs/ensemble.py:smoke --workdir=/tmp/climb/ensemble
  python -m climb_jax.main --config=configs/ensemble.py --config.data.corpus=$DATA --workdir=...
  python -m climb_jax.main --config=configs/ensemble.py:smoke \
      '--config.ensemble.members=vanilla.py;vocab_cl.py:pos_tags,log' --config.ensemble.seeds=3 --workdir=...

`ensemble.members`: config specs (`<file>.py[:<words>]`, files in configs/) separated by `;`;
`ensemble.seeds`: seeds per member (seed, seed + 1, ...). Every setting of this file that differs from
the base defaults (the preset words here, --config.<key> overrides) applies to every member. Each member
is an ordinary run in `<workdir>/<label>_seed<seed>/` (compare, evaluate and export read it as such).
Members must share the model, the data, the objective units and the optimizer; their curricula, seeds
and learning-rate schedules may differ.

Preset words: vocab (vanilla vs vocab_cl:token_ids, the default), data (vanilla vs data_cl:ngram), the
model sizes, bf16, smoke; and key=value pairs.
"""

from ml_collections import ConfigDict

from climb_jax.config import schema


def _members(specs):
    def apply(c):
        c.ensemble.members = specs

    return apply


PRESETS = {
    "vocab": _members("vanilla.py;vocab_cl.py:token_ids"),
    "data": _members("vanilla.py;data_cl.py:ngram"),
}


def setup(c):
    c.ensemble = ConfigDict(dict(members="vanilla.py;vocab_cl.py:token_ids", seeds=2))


def get_config(arg=None):
    return schema.build("ensemble", arg, PRESETS, setup)
