"""The tagger shipped in the package unpacks into a cache folder and tags like NLTK's own code (and, where
the shared data is present, like the installed tagger)."""

import os

import pytest

from climb_jax.constants import POS_INDEX
from climb_jax.data import pos
from tests.conftest import shared_path

WORDS = [["The", "dog", "runs", "quickly", "."], ["She", "saw", "two", "red", "birds"]]


@pytest.fixture
def bundled(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("CLIMB_JAX_CACHE", str(tmp_path))
    return pos.bundled_nltk_data()


def test_bundled_tagger_unpacks_once_and_tags(bundled, tmp_path):
    assert bundled == str(tmp_path / "nltk_data")
    assert (tmp_path / "nltk_data" / pos.TAGGER_RESOURCE).is_dir()
    assert (tmp_path / "nltk_data" / pos.UNIVERSAL_RESOURCE).exists()
    again = pos.bundled_nltk_data()  # already unpacked: reused, not unpacked twice
    assert again == bundled and len(os.listdir(tmp_path)) == 1
    fast = pos.PosTagger(bundled).tag_sents(WORDS)
    reference = pos.PosTagger(bundled, engine="nltk").tag_sents(WORDS)  # NLTK's own perceptron code
    assert fast.tolist() == reference.tolist()
    assert fast[:5].tolist() == [POS_INDEX[t] for t in ("DET", "NOUN", "VERB", "ADV", ".")]


def test_bundled_tagger_equals_the_installed_one(bundled):
    installed = shared_path("nltk_data", what="the installed NLTK tagger data (nltk_data)")
    assert pos.PosTagger(bundled).tag_sents(WORDS).tolist() == pos.PosTagger(str(installed)).tag_sents(WORDS).tolist()
