"""The tagger shipped in the package unpacks into a cache folder and tags like the installed one."""

import os

from climb_jax.constants import POS_INDEX
from climb_jax.data import pos


def test_bundled_tagger_unpacks_and_tags(tmp_path, monkeypatch, nltk_data):
    monkeypatch.setenv("CLIMB_JAX_CACHE", str(tmp_path))
    root = pos.bundled_nltk_data()
    assert root == str(tmp_path / "nltk_data")
    assert (tmp_path / "nltk_data" / pos.TAGGER_RESOURCE).is_dir()
    again = pos.bundled_nltk_data()  # already unpacked: reused, not unpacked twice
    assert again == root and len(os.listdir(tmp_path)) == 1
    words = [["The", "dog", "runs", "quickly", "."], ["She", "saw", "two", "red", "birds"]]
    bundled = pos.PosTagger(root).tag_sents(words)
    installed = pos.PosTagger(str(nltk_data)).tag_sents(words)
    assert bundled.tolist() == installed.tolist()
    assert bundled[:5].tolist() == [POS_INDEX[t] for t in ("DET", "NOUN", "VERB", "ADV", ".")]
