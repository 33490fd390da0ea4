"""Objective curricula: masked LM plus part-of-speech class prediction units, each over a window.

  python -m climb_jax.main --config=configs/objective_cl.py:pos_nv_mlm --workdir=...

Presets (the reference's objective configs; windows are fractions of training):
  base_mlm                    MLM throughout (the vanilla objective, for comparison)
  pos_nv_mlm                  noun/verb prediction for the first 12.5%, then MLM
  pos_all_mlm                 all-tags prediction for the first 12.5%, then MLM
  multitask_pos_all_mlm       all tags throughout, MLM from 12.5%
  multitask_pos_all_mlm_0     all tags and MLM, both from the start
  multitask_pos_nv_all_mlm    noun/verb for 6.25%, then all tags; MLM from 12.5%
  multitask_pos_nv_all_mlm_0  noun/verb for 6.25%, then all tags; MLM from the start
  multitask_pos_nv_mlm_0      noun/verb and MLM, both from the start
Windows and unit settings are overridable: --config.objective_curriculum.units.pos_nv.end=0.2
"""

from ml_collections import ConfigDict

from climb_jax.config import schema

unit = schema.unit_config


def _units(**units) -> schema.Preset:
    def apply(c):
        c.objective_curriculum.units = ConfigDict(units)

    return apply


PRESETS = {
    "base_mlm": _units(mlm=unit("mlm", 0.0, 1.0)),
    "pos_nv_mlm": _units(pos_nv=unit("pos", 0.0, 0.125, "pos_noun_verb"), mlm=unit("mlm", 0.125, 1.0)),
    "pos_all_mlm": _units(pos_all=unit("pos", 0.0, 0.125, "pos_all"), mlm=unit("mlm", 0.125, 1.0)),
    "multitask_pos_all_mlm": _units(pos_all=unit("pos", 0.0, 1.0, "pos_all"), mlm=unit("mlm", 0.125, 1.0)),
    "multitask_pos_all_mlm_0": _units(pos_all=unit("pos", 0.0, 1.0, "pos_all"), mlm=unit("mlm", 0.0, 1.0)),
    "multitask_pos_nv_all_mlm": _units(pos_nv=unit("pos", 0.0, 0.0625, "pos_noun_verb"),
                                       pos_all=unit("pos", 0.0625, 1.0, "pos_all"),
                                       mlm=unit("mlm", 0.125, 1.0)),
    "multitask_pos_nv_all_mlm_0": _units(pos_nv=unit("pos", 0.0, 0.0625, "pos_noun_verb"),
                                         pos_all=unit("pos", 0.0625, 1.0, "pos_all"),
                                         mlm=unit("mlm", 0.0, 1.0)),
    "multitask_pos_nv_mlm_0": _units(pos_nv=unit("pos", 0.0, 1.0, "pos_noun_verb"), mlm=unit("mlm", 0.0, 1.0)),
}


# The reference's eight objective configs (launch/sweep.py's comparison grid).
PAPER_GRID = [(name,) for name in PRESETS]


def get_config(arg=None):
    # The default (no preset word) is the first objective curriculum of the paper's tables; a preset
    # word replaces the units.
    return schema.build("objective_cl", arg, PRESETS, setup=PRESETS["pos_nv_mlm"])
