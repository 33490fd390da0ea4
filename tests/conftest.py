"""Shared test fixtures: the read-only data beside the checkout, and small configs."""

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


def shared_path(*parts: str) -> Path:
    """A path under the shared test data; skips the test when that data is not present."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"test data {path} is not present (set CLIMB_SHARED to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`: babylm_mini, blimp, blimp_filtered, blimp_supplement, glue_filtered."""
    return shared_path("data")


@pytest.fixture(scope="session")
def nltk_data() -> Path:
    path = shared_path("nltk_data")
    os.environ["NLTK_DATA"] = str(path)
    return path
