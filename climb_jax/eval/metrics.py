"""Classification metrics for fine-tuning: accuracy, binary F1 and Matthews correlation.

Written with numpy rather than imported from scikit-learn, which the project does not depend on.
Degenerate cases follow scikit-learn's conventions (F1 and MCC are 0.0 when undefined), so the
numbers match what the BabyLM evaluation pipeline reports.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from climb_jax.errors import ConfigError

ArrayLike = Sequence[int] | np.ndarray


def _as_pair(predictions: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predictions).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"predictions ({p.size}) and labels ({y.size}) differ in length")
    return p.astype(np.int64), y.astype(np.int64)


def accuracy(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of exact matches; 0.0 for empty input."""
    p, y = _as_pair(predictions, labels)
    return float(np.mean(p == y)) if p.size else 0.0


def f1(predictions: ArrayLike, labels: ArrayLike, positive: int = 1) -> float:
    """Binary F1 of class `positive` (GLUE's F1 for MRPC and QQP); 0.0 when it has no support."""
    p, y = _as_pair(predictions, labels)
    tp = int(np.sum((p == positive) & (y == positive)))
    fp = int(np.sum((p == positive) & (y != positive)))
    fn = int(np.sum((p != positive) & (y == positive)))
    denom = 2 * tp + fp + fn
    return 2.0 * tp / denom if denom else 0.0


def confusion_matrix(predictions: ArrayLike, labels: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """Counts C[true, predicted]."""
    p, y = _as_pair(predictions, labels)
    k = num_classes or int(max(p.max(initial=-1), y.max(initial=-1)) + 1)
    k = max(k, 1)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, p), 1)
    return cm


def matthews_corrcoef(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Matthews correlation (CoLA's metric), multi-class form (Gorodkin's R_K); 0.0 when undefined.

    For two classes it is (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)).
    """
    cm = confusion_matrix(predictions, labels).astype(np.float64)
    n = cm.sum()
    if n == 0:
        return 0.0
    correct = np.trace(cm)
    t = cm.sum(axis=1)  # true counts per class
    p = cm.sum(axis=0)  # predicted counts per class
    cov_yp = correct * n - t @ p
    cov_pp = n * n - p @ p
    cov_yy = n * n - t @ t
    denom = np.sqrt(cov_pp * cov_yy)
    return float(cov_yp / denom) if denom > 0 else 0.0


METRICS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": matthews_corrcoef,
}


def check_metric_names(names: Sequence[str]) -> None:
    """Raises ConfigError for a metric this module does not provide."""
    for name in names:
        if name not in METRICS:
            raise ConfigError(f"unknown metric '{name}'; choose from: {', '.join(METRICS)}.")


def compute_metrics(names: Sequence[str], predictions: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """The named metrics of one set of predictions, as {name: value}."""
    check_metric_names(names)
    return {name: METRICS[name](predictions, labels) for name in names}


def majority_baseline(labels: ArrayLike, names: Sequence[str] = ("accuracy",)) -> dict[str, float]:
    """Scores of always predicting the most frequent label: the floor a fine-tuned model must beat."""
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if not y.size:
        return {name: 0.0 for name in names}
    majority = int(np.bincount(y).argmax())
    return compute_metrics(names, np.full_like(y, majority), y)


def mean_metrics(per_seed: Sequence[Mapping[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample standard deviation (ddof=1; 0.0 for one seed) of each metric over seeds."""
    keys = list(per_seed[0]) if per_seed else []
    ddof = 1 if len(per_seed) > 1 else 0
    mean = {k: float(np.mean([m[k] for m in per_seed])) for k in keys}
    std = {k: float(np.std([m[k] for m in per_seed], ddof=ddof)) for k in keys}
    return mean, std
