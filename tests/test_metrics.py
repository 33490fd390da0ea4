"""Metric functions against hand-computed values."""

import math

import numpy as np
import pytest

from climb_jax.errors import ConfigError
from climb_jax.eval import metrics

# TP = 3 (items 0, 4, 7), FP = 2 (1, 6), FN = 1 (3), TN = 2 (2, 5).
PRED = [1, 1, 0, 0, 1, 0, 1, 1]
GOLD = [1, 0, 0, 1, 1, 0, 0, 1]


def test_binary_metrics_by_hand():
    assert metrics.accuracy(PRED, GOLD) == pytest.approx(5 / 8)
    assert metrics.f1(PRED, GOLD) == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert metrics.matthews_corrcoef(PRED, GOLD) == pytest.approx((3 * 2 - 2 * 1) / math.sqrt(5 * 4 * 4 * 3))
    # F1 of the other class: TP' = TN = 2, FP' = FN = 1, FN' = FP = 2.
    assert metrics.f1(PRED, GOLD, positive=0) == pytest.approx(4 / (4 + 1 + 2))


def test_multiclass_mcc_by_hand():
    # C = [[1,0,0],[1,1,0],[0,0,1]]: n=4, correct=3, t=(1,2,1), p=(2,1,1) -> (12-5)/sqrt(10*10).
    assert metrics.matthews_corrcoef([0, 1, 2, 0], [0, 1, 2, 1]) == pytest.approx(0.7)
    np.testing.assert_array_equal(metrics.confusion_matrix([0, 1, 2, 0], [0, 1, 2, 1]),
                                  [[1, 0, 0], [1, 1, 0], [0, 0, 1]])


def test_extremes_and_degenerate_cases():
    y = np.array([0, 1, 1, 0, 1])
    assert metrics.matthews_corrcoef(y, y) == pytest.approx(1.0)
    assert metrics.matthews_corrcoef(1 - y, y) == pytest.approx(-1.0)
    assert metrics.matthews_corrcoef(np.ones(5, int), y) == 0.0  # constant prediction: undefined -> 0
    assert metrics.f1(np.zeros(5, int), np.zeros(5, int)) == 0.0  # no positive anywhere
    assert metrics.accuracy([], []) == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        metrics.accuracy([1, 0], [1])


def test_compute_and_majority():
    got = metrics.compute_metrics(("accuracy", "f1", "mcc"), PRED, GOLD)
    assert set(got) == {"accuracy", "f1", "mcc"}
    assert got["accuracy"] == pytest.approx(0.625)
    with pytest.raises(ConfigError, match="unknown metric 'auc'.*accuracy"):
        metrics.compute_metrics(("auc",), PRED, GOLD)
    base = metrics.majority_baseline([0, 0, 0, 1], ("accuracy", "f1", "mcc"))
    assert base == {"accuracy": 0.75, "f1": 0.0, "mcc": 0.0}
    mean, std = metrics.mean_metrics([{"accuracy": 0.5}, {"accuracy": 0.7}])
    assert mean["accuracy"] == pytest.approx(0.6) and std["accuracy"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
