"""Vocabulary curricula: tokens outside a growing allowed set are replaced by <unk> early in training.

  python -m climb_jax.main --config=configs/vocab_cl.py --workdir=...               # token_ids, linear
  python -m climb_jax.main --config=configs/vocab_cl.py:pos_tags,log --workdir=...
  python -m climb_jax.main --config=configs/vocab_cl.py:token_ids,root --workdir=...

Preset words (the reference's six vocabulary configs are a kind word with `linear` or `log`):
  token_ids                 allowed iff the token's id <= pace * vocabulary size (default)
  pos_tags                  allowed iff the token's POS class <= pace * 11 (NOUN, VERB, ADJ, ... X)
  pos_tags_and_token_ids    allowed iff pos * V + id <= pace * 11 * V
  linear (default), log, quad, root, exp, step   the pacing function
  exclude_unk               leave replaced positions out of the MLM loss (the reference predicts <unk> there)
Token ids are the BPE's merge order, as in the reference (`data.token_order=frequency` ranks them by
training-corpus count instead).
Pacing parameters are the reference's (start 6.25% of training, full vocabulary by 87.5%, starting
difficulty 0.1); override any of them: --config.vocab_curriculum.pacing.end_percent=0.5
"""

from climb_jax.config import choices

from climb_jax.config import schema

KINDS = choices.VOCAB_CURRICULUM_KINDS
PACINGS = choices.PACING_WORDS
# The reference's six vocabulary configs (launch/sweep.py's comparison grid).
PAPER_GRID = [(kind, pacing) for kind in choices.PAPER_VOCAB_KINDS for pacing in choices.PAPER_PACINGS]


def _kind(kind):
    def apply(c):
        c.vocab_curriculum.kind = kind

    return apply


def _pacing(name):
    def apply(c):
        c.vocab_curriculum.pacing.name = name

    return apply


PRESETS = {
    **{k: _kind(k) for k in KINDS},
    **{p: _pacing(p) for p in PACINGS},
    "exclude_unk": lambda c: setattr(c.vocab_curriculum, "unk_targets", "exclude"),
}


def setup(c):
    c.vocab_curriculum.kind = choices.VOCAB_CL_DEFAULT_KIND
    c.vocab_curriculum.pacing = schema.pacing_config()


def get_config(arg=None):
    return schema.build("vocab_cl", arg, PRESETS, setup)
