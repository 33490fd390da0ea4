"""A test that needs one of the shared data sets is skipped naming that data set, not all of them."""

from __future__ import annotations

import pytest

from tests import conftest


def test_a_missing_data_set_is_named_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "SHARED", tmp_path)
    (tmp_path / "data" / "blimp").mkdir(parents=True)
    assert conftest.SharedData() / "blimp" == tmp_path / "data" / "blimp"  # present: the path itself
    with pytest.raises(pytest.skip.Exception) as skipped:
        conftest.SharedData() / "glue_filtered"
    assert str(skipped.value).startswith(
        f"needs the BabyLM-filtered (Super)GLUE tasks (data/glue_filtered) from the shared test data, not found at "
        f"{tmp_path / 'data' / 'glue_filtered'}")
    for other in ("babylm_mini", "BLiMP supplement", "full BLiMP"):
        assert other not in str(skipped.value)
