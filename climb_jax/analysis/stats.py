"""Is a curriculum better than vanilla? Paired bootstrap intervals and sign-flip tests.

The CLIMB paper's lesson is that most curricula differ from a vanilla model by less than the noise
between seeds, so every difference in a report comes with an uncertainty. The data are score
matrices of shape [seeds, items]: items are matched between the two models (the same BLiMP pairs,
or the same paradigms), seeds are independent training runs.

* `bootstrap_ci`: a two-level (hierarchical) bootstrap. Each replicate resamples the items with
  replacement, the same items for both models (the pairing), and each model's seeds with
  replacement, so the interval covers both item sampling and training noise.
* `sign_flip_test`: a paired permutation test on the per-item differences of the seed means. Under
  the null hypothesis the sign of each item's difference is arbitrary; the p-value is the share of
  sign assignments whose mean difference is at least as extreme as the observed one. With few items
  every assignment is enumerated (an exact test), otherwise a Monte Carlo sample is drawn with the
  usual (count + 1) / (n + 1) estimate, which is never zero.
* Item weights: BLiMP's average is the mean over paradigms, not over pairs; with pairs as items each
  pair weighs 1 / (paradigms x pairs in its paradigm), so the statistic is the paradigm average
  while the resampling still works pair by pair. Without weights every item counts the same.
* `label_permutation_test`: with a single score per seed (a fine-tuning accuracy, a perplexity)
  there are no items to pair; runs are exchanged between the two groups instead, enumerated exactly.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np

# Above this many items the sign-flip test samples instead of enumerating 2**n assignments.
MAX_EXACT_ITEMS = 16


@dataclass(frozen=True)
class Difference:
    """The difference `a - b` of two models' mean scores, with its uncertainty."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    alpha: float
    n_items: int
    n_seeds_a: int
    n_seeds_b: int
    test: str  # "sign_flip_exact", "sign_flip_mc", "label_permutation_exact", "none"

    @property
    def significant(self) -> bool:
        """p below alpha and the interval excluding zero (both, so the flag never contradicts either)."""
        if not np.isfinite(self.p_value):
            return False
        return self.p_value < self.alpha and (self.ci_low > 0 or self.ci_high < 0)

    def to_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant}


def _matrix(x, name: str) -> np.ndarray:
    m = np.asarray(x, dtype=np.float64)
    if m.ndim == 1:
        m = m[None, :]  # one seed
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty [seeds, items] matrix, got shape {np.shape(x)}")
    return m


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _matrix(a, "a"), _matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must score the same items, got {a.shape[1]} and {b.shape[1]}")
    return a, b


def _weights(weights, n: int) -> np.ndarray:
    """Item weights normalised to sum 1 (uniform when None)."""
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size != n or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"weights must be {n} non-negative finite numbers with a positive sum")
    return w / w.sum()


def mean_difference(a, b, weights=None) -> float:
    """(Weighted) mean over items of (seed mean of a − seed mean of b)."""
    a, b = _pair(a, b)
    return float(_weights(weights, a.shape[1]) @ (a.mean(axis=0) - b.mean(axis=0)))


def bootstrap_ci(a, b, *, weights=None, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0,
                 chunk: int = 64) -> tuple[float, float]:
    """Percentile interval of the mean difference under the two-level bootstrap (items and seeds)."""
    a, b = _pair(a, b)
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    w = _weights(weights, n)
    stats = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        # Seed resampling: per replicate, a mean over seeds drawn with replacement = a weighted mean.
        wa = _resample_weights(rng, a.shape[0], k)  # [k, Sa]
        wb = _resample_weights(rng, b.shape[0], k)
        d = wa @ a - wb @ b  # [k, N] per-item differences of the resampled seed means
        items = rng.integers(0, n, size=(k, n))
        wi = w[items]  # the weights of the drawn items, renormalised per replicate
        stats[start:start + k] = (np.take_along_axis(d, items, axis=1) * wi).sum(axis=1) / wi.sum(axis=1)
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _resample_weights(rng: np.random.Generator, s: int, k: int) -> np.ndarray:
    """k rows of multinomial(s, 1/s) counts / s: the weights of a bootstrap resample of s seeds."""
    if s == 1:
        return np.ones((k, 1))
    return rng.multinomial(s, np.full(s, 1.0 / s), size=k) / s


def sign_flip_test(a, b, *, weights=None, n_perm: int = 10_000, seed: int = 0,
                   max_exact_items: int = MAX_EXACT_ITEMS) -> tuple[float, str]:
    """Two-sided paired sign-flip p-value of the (weighted) mean per-item difference; (p, test name)."""
    a, b = _pair(a, b)
    n = a.shape[1]
    d = _weights(weights, n) * (a.mean(axis=0) - b.mean(axis=0))  # weighted: the statistic is a sum
    observed = abs(d.sum())
    tol = 1e-12 * max(1.0, float(np.abs(d).sum()))  # ties with the observed value count as extreme
    if n <= max_exact_items:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # [2**n, n]
        perm = np.abs(signs @ d)
        return float(np.mean(perm >= observed - tol)), "sign_flip_exact"
    rng = np.random.default_rng(seed)
    count, done = 0, 0
    while done < n_perm:
        k = min(1024, n_perm - done)
        signs = rng.integers(0, 2, size=(k, n)) * 2.0 - 1.0
        count += int(np.sum(np.abs(signs @ d) >= observed - tol))
        done += k
    return (count + 1) / (n_perm + 1), "sign_flip_mc"


def label_permutation_test(a, b) -> float:
    """Two-sided exact p-value for per-seed scalars: every split of the pooled runs into groups of
    the original sizes, the share whose difference of means is at least as extreme as observed."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if not a.size or not b.size:
        raise ValueError("both groups need at least one run")
    pooled = np.concatenate([a, b])
    total = pooled.sum()
    observed = abs(a.mean() - b.mean())
    tol = 1e-12 * max(1.0, float(np.abs(pooled).max()))
    n, na = pooled.size, a.size
    if math.comb(n, na) > 200_000:
        raise ValueError(f"too many runs ({n}) for an exact label permutation; use item-level scores")
    extreme = count = 0
    for idx in itertools.combinations(range(n), na):
        sa = pooled[list(idx)].sum()
        diff = abs(sa / na - (total - sa) / (n - na))
        extreme += diff >= observed - tol
        count += 1
    return extreme / count


def compare(a, b, *, weights=None, n_boot: int = 2000, n_perm: int = 10_000, alpha: float = 0.05,
            seed: int = 0) -> Difference:
    """The difference a − b with a bootstrap CI and a p-value, choosing the test by the data's shape.

    `a`, `b`: [seeds, items] matrices over matched items (1-D = one seed); `weights`: optional
    per-item weights of the mean (see the module docstring). With a single item
    (one scalar per seed) the runs are permuted between groups; with one item and one seed each
    there is nothing to test and p is NaN (never flagged significant).
    """
    a, b = _pair(a, b)
    diff = mean_difference(a, b, weights)
    lo, hi = bootstrap_ci(a, b, weights=weights, n_boot=n_boot, alpha=alpha, seed=seed)
    if a.shape[1] > 1:
        p, test = sign_flip_test(a, b, weights=weights, n_perm=n_perm, seed=seed)
    elif a.shape[0] + b.shape[0] > 2:
        p, test = label_permutation_test(a[:, 0], b[:, 0]), "label_permutation_exact"
    else:
        p, test = float("nan"), "none"
    return Difference(diff=diff, ci_low=lo, ci_high=hi, p_value=float(p), alpha=alpha,
                      n_items=a.shape[1], n_seeds_a=a.shape[0], n_seeds_b=b.shape[0], test=test)
