"""Data curricula: each training sequence gets a difficulty and the sampler draws from the easiest part.

  python -m climb_jax.main --config=configs/data_cl.py --workdir=...                # n-gram, linear (the paper's)
  python -m climb_jax.main --config=configs/data_cl.py:ngram,log --workdir=...
  python -m climb_jax.main --config=configs/data_cl.py:source_order,grammatical_first,linear --workdir=...

Preset words (the reference's ten data configs are a scorer word with `linear` or `log`):
  ngram               unigram perplexity of each sequence (default)
  source_order        difficulty of the sequence's source file, spoken first (the reference's `data_split`)
  spoken_first, grammatical_first   the source order (either implies `source_order`)
  self_perplexity     the model's own perplexity, re-scored every 25k steps (n-gram scores before)
  random_perplexity   self_perplexity with uniform scores before the first re-scoring (n_gram=0)
  child_age           position in the (age-ordered) source file, beyond the reference
  linear (default), log, quad, root, exp, step   the pacing function
  uniform (default, as in every reference config) or weighted   how rows are drawn inside the allowed set
Pacing parameters are the reference's (start 6.25% of training, the whole corpus by 87.5%, starting with
the easiest 10%); override any: --config.data_curriculum.pacing.starting_difficulty=0.2
A corpus with other sources takes a custom order:
  --config.data_curriculum.source_order=custom --config.data_curriculum.source_difficulty=a:1,b:2
"""

from climb_jax.config import choices

from climb_jax.config import schema

PACINGS = choices.PACING_WORDS


def _set(**fields):
    def apply(c):
        c.data_curriculum.update(fields)

    return apply


def _pacing(name):
    def apply(c):
        c.data_curriculum.pacing.name = name

    return apply


SCORERS = {
    "ngram": _set(scorer="ngram_perplexity", n_gram=1),
    "source_order": _set(scorer="source_order"),
    "spoken_first": _set(scorer="source_order", source_order="spoken_first"),
    "grammatical_first": _set(scorer="source_order", source_order="grammatical_first"),
    "self_perplexity": _set(scorer="self_perplexity", n_gram=1, update_every=25_000),
    "random_perplexity": _set(scorer="self_perplexity", n_gram=0, update_every=25_000),
    "child_age": _set(scorer="child_age"),
}

# The reference's ten data configs (launch/sweep.py's comparison grid).
PAPER_GRID = [(curriculum, pacing)
              for curriculum in ("spoken_first", "grammatical_first", "ngram", "self_perplexity", "random_perplexity")
              for pacing in choices.PAPER_PACINGS]

PRESETS = {
    **SCORERS,
    **{p: _pacing(p) for p in PACINGS},
    "uniform": _set(uniform_sampling=True),
    "weighted": _set(uniform_sampling=False),
}


def setup(c):
    dc = c.data_curriculum
    dc.scorer = choices.DATA_CL_DEFAULT_SCORER
    dc.n_gram = 1
    dc.uniform_sampling = True  # every data config of the reference samples uniformly inside the allowed set
    dc.pacing = schema.pacing_config()


def get_config(arg=None):
    return schema.build("data_cl", arg, PRESETS, setup)
