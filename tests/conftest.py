"""Shared test fixtures: the optional data beside the checkout, and the XLA compile cache.

Most tests need no data beyond the package: the training, resume, curriculum and fault tests run on the
corpus sample and the part-of-speech tagger shipped in `climb_jax/data/sample/` (`tests/helpers.py`).
The few that need the full data sets (BLiMP, babylm_mini, GLUE, the installed NLTK data) take them from
`../shared` beside the checkout (or `$CLIMB_SHARED`) and are skipped, with the data named, without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole test session (and the subprocesses it starts): the
# same tiny train step compiled by many tests is compiled once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"climb_jax_test_xla_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CLIMB_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str, what: str = "") -> Path:
    """A path under the shared test data; skips the test, naming the data, when it is not present."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {what or '/'.join(parts)} from the shared test data, not found at {path} "
                    "(set CLIMB_SHARED to the folder that holds data/ and nltk_data/)")
    return path


# What each data set of `../shared/data` is, for the skip message of a test that needs it.
SHARED_DATA_SETS = {
    "babylm_mini": "the babylm_mini corpus",
    "blimp": "the full BLiMP suite",
    "blimp_filtered": "the BabyLM-filtered BLiMP suite",
    "blimp_supplement": "the BLiMP supplement",
    "glue_filtered": "the BabyLM-filtered (Super)GLUE tasks",
}


class SharedData:
    """`../shared/data` as the tests use it, `shared_data / "blimp"`: each data set is looked up when the
    test asks for it, so a test without it is skipped naming the one data set it needs."""

    def __truediv__(self, name: str) -> Path:
        return shared_path("data", name, what=f"{SHARED_DATA_SETS.get(name, name)} (data/{name})")


@pytest.fixture(scope="session")
def shared_data() -> SharedData:
    """`../shared/data`: babylm_mini, blimp, blimp_filtered, blimp_supplement, glue_filtered."""
    return SharedData()


@pytest.fixture(scope="session")
def babylm_mini() -> Path:
    """A corpus folder in the `train/ dev/ test/` layout: `../shared/data/babylm_mini` when present, else
    the sample shipped in the package, which holds the first lines of every babylm_mini file (so a test
    that reads a few hundred lines of a file reads the same text from either)."""
    path = SHARED / "data" / "babylm_mini"
    if path.exists():
        return path
    from climb_jax.data.corpus import EMBEDDED_DIR

    return EMBEDDED_DIR


@pytest.fixture(scope="session")
def nltk_data(tmp_path_factory) -> Path:
    """A folder of NLTK tagger data: `../shared/nltk_data` when present, else the tagger shipped in the
    package, unpacked into this session's temporary folder (the same perceptron model and tag map;
    `test_bundled_tagger.py` checks that they tag alike)."""
    path = SHARED / "nltk_data"
    if not path.exists():
        from climb_jax.data import pos

        os.environ["CLIMB_JAX_CACHE"] = str(tmp_path_factory.mktemp("climb_jax_cache"))
        path = Path(pos.bundled_nltk_data())
    os.environ["NLTK_DATA"] = str(path)
    return path


def pytest_collection_modifyitems(items):
    """Marks every test that asks for the shared data `shared`, so `-m "not shared"` selects what runs on
    any checkout."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared)
