"""configs/vocab_cl.py and configs/data_cl.py: every preset word combination, the reference's ten data
configs, every preset of every config file, and the curriculum plot."""

import itertools

import numpy as np
import pytest

from climb_jax.config import schema
from climb_jax.curriculum.pacing import PacingParams, pace
from climb_jax.curriculum.plot import curriculum_curves, plot_curricula
from climb_jax.errors import ConfigError

# The reference's pacing parameters, written out here (not read from climb_jax.config.choices) so that a
# change to the defaults fails this test.
REFERENCE_PACING = dict(start_percent=0.0625, end_percent=0.875, starting_difficulty=0.1, max_difficulty=1.0)

VOCAB = schema.load_module("configs/vocab_cl.py")
DATA = schema.load_module("configs/data_cl.py")


def check_pacing(section, name):
    assert section.pacing.name == name
    for key, value in REFERENCE_PACING.items():
        assert section.pacing[key] == value


def test_vocab_default():
    c = VOCAB.get_config()
    assert c.name == "vocab_cl" and c.vocab_curriculum.kind == "token_ids"
    check_pacing(c.vocab_curriculum, "linear")
    assert c.vocab_curriculum.unk_targets == "predict_unk" and c.data_curriculum.scorer == "none"
    schema.validate(c)


@pytest.mark.parametrize("kind, pacing, extra", list(itertools.product(
    VOCAB.KINDS, VOCAB.PACINGS, ["", "exclude_unk"])))
def test_vocab_presets(kind, pacing, extra):
    c = VOCAB.get_config(",".join(w for w in (kind, pacing, extra) if w))
    assert c.vocab_curriculum.kind == kind
    check_pacing(c.vocab_curriculum, pacing)
    assert c.vocab_curriculum.unk_targets == ("exclude" if extra else "predict_unk")
    schema.validate(c)


def test_data_default_is_the_papers_ngram_curriculum():
    c = DATA.get_config()
    dc = c.data_curriculum
    assert c.name == "data_cl" and dc.scorer == "ngram_perplexity" and dc.n_gram == 1 and dc.uniform_sampling
    check_pacing(dc, "linear")
    assert c.vocab_curriculum.kind == "none"
    schema.validate(c)


# The reference's ten data configs: (words, scorer, n_gram, source_order).
REFERENCE_DATA = {
    "source_order,spoken_first": ("source_order", 1, "spoken_first"),
    "source_order,grammatical_first": ("source_order", 1, "grammatical_first"),
    "ngram": ("ngram_perplexity", 1, "spoken_first"),
    "self_perplexity": ("self_perplexity", 1, "spoken_first"),
    "random_perplexity": ("self_perplexity", 0, "spoken_first"),
}


@pytest.mark.parametrize("words, pacing", list(itertools.product(REFERENCE_DATA, ["linear", "log"])))
def test_the_references_ten_data_configs(words, pacing):
    scorer, n_gram, order = REFERENCE_DATA[words]
    c = DATA.get_config(f"{words},{pacing}")
    dc = c.data_curriculum
    assert (dc.scorer, dc.n_gram, dc.source_order, dc.uniform_sampling) == (scorer, n_gram, order, True)
    if scorer == "self_perplexity":
        assert dc.update_every == 25_000
    check_pacing(dc, pacing)
    schema.validate(c)


@pytest.mark.parametrize("scorer, pacing, sampling", list(itertools.product(
    DATA.SCORERS, DATA.PACINGS, ["", "uniform", "weighted"])))
def test_every_data_preset_combination(scorer, pacing, sampling):
    c = DATA.get_config(",".join(w for w in (scorer, pacing, sampling) if w))
    dc = c.data_curriculum
    expected = {"ngram": "ngram_perplexity", "self_perplexity": "self_perplexity",
                "random_perplexity": "self_perplexity", "child_age": "child_age"}.get(scorer, "source_order")
    assert dc.scorer == expected
    if scorer in ("spoken_first", "grammatical_first"):
        assert dc.source_order == scorer
    assert dc.uniform_sampling == (sampling != "weighted")
    check_pacing(dc, pacing)
    schema.validate(c)


def test_smoke_and_overrides():
    c = DATA.get_config("source_order,linear,smoke,data_curriculum.pacing.end_percent=0.5")
    assert c.trainer.total_steps == 300 and c.data_curriculum.update_every == 100
    assert c.data_curriculum.pacing.end_percent == 0.5 and c.data_curriculum.scorer == "source_order"
    c = VOCAB.get_config("pos_tags,log,smoke")
    assert c.model.size == "tiny" and c.vocab_curriculum.kind == "pos_tags"
    schema.validate(c)


def test_bad_words_and_impossible_pacing():
    with pytest.raises(ConfigError, match="Did you mean 'pos_tags'"):
        VOCAB.get_config("pos_tag")
    with pytest.raises(ConfigError, match="Valid words"):
        DATA.get_config("bigram")
    c = DATA.get_config("ngram,data_curriculum.pacing.start_percent=0.9")
    with pytest.raises(ConfigError, match="data_curriculum.pacing: .*smaller than end_percent"):
        schema.validate(c)


PRETRAINING_FILES = ("vanilla", "vocab_cl", "data_cl", "objective_cl")


@pytest.mark.parametrize("name", PRETRAINING_FILES)
def test_every_preset_word_of_every_config_file_resolves(name):
    module = schema.load_module(f"configs/{name}.py")
    words = sorted(set(getattr(module, "PRESETS", {})) | set(schema.COMMON_PRESETS))
    for word in words:
        c = schema.load(f"configs/{name}.py:{word},smoke")
        assert c.name == name
        schema.validate(c)
    # The comparison grid the sweep reads from each file: 1 + 6 + 10 + 8 configurations.
    assert len(module.PAPER_GRID) == {"vanilla": 1, "vocab_cl": 6, "data_cl": 10, "objective_cl": 8}[name]
    for grid_words in module.PAPER_GRID:
        schema.validate(schema.load(f"configs/{name}.py", ",".join(grid_words)))


def test_objective_default_is_pos_nv_mlm_and_a_word_replaces_it():
    OBJ = schema.load_module("configs/objective_cl.py")
    assert set(OBJ.get_config().objective_curriculum.units) == {"pos_nv", "mlm"}
    assert set(OBJ.get_config("pos_all_mlm,smoke").objective_curriculum.units) == {"pos_all", "mlm"}
    assert set(OBJ.get_config("smoke").objective_curriculum.units) == {"pos_nv", "mlm"}


# -- the plot ----------------------------------------------------------------------------------


def test_plot_for_a_vocab_config(tmp_path):
    c = VOCAB.get_config("pos_tags_and_token_ids,log,smoke")
    out = plot_curricula(c, tmp_path / "sub" / "curricula.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    curves = curriculum_curves(c)
    steps = curves["step"]
    assert steps[0] == 0 and steps[-1] == 300
    p = PacingParams.from_config(c.vocab_curriculum.pacing)
    np.testing.assert_allclose(curves["vocabulary pace (pos_tags_and_token_ids, log)"], pace(p, steps, 300))
    fraction = curves["allowed vocabulary fraction"]
    assert fraction[-1] == 1.0 and np.all(np.diff(fraction) >= 0) and fraction[0] < 0.2


def test_plot_with_data_and_objective_curricula(tmp_path):
    c = DATA.get_config("random_perplexity,log,smoke")
    c.objective_curriculum.units = schema.ConfigDict(dict(
        pos=schema.unit_config("pos", 0.0, 0.125, "NOUN,VERB"), mlm=schema.unit_config("mlm", 0.125, 1.0)))
    out = plot_curricula(c, tmp_path / "c.png")
    assert out.stat().length > 5_000
    assert set(curriculum_curves(c)) == {"step", "data pace (self_perplexity, log)"}
