"""Uncertainty of the studies' means: percentile bootstrap confidence intervals over clips (and seeds)."""

from __future__ import annotations

import numpy as np

BOOTSTRAP_SAMPLES = 2000
LEVEL = 0.95


def bootstrap_ci(values, level: float = LEVEL, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                 groups=None) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and its percentile-bootstrap confidence interval at `level`.

    `groups` (one label per value, e.g. the clip): resample whole groups rather than single values, so that
    several seeds of one clip count as one clip's worth of evidence. NaNs are left out; fewer than two values
    give an interval of NaNs."""
    v = np.asarray(values, np.float64).reshape(-1)
    keep = np.isfinite(v)
    if groups is None:
        groups = np.arange(len(v))
    labels = np.asarray(groups)[keep]
    v = v[keep]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    names, index = np.unique(labels, return_inverse=True)
    if len(names) < 2:
        return mean, float("nan"), float("nan")
    sums = np.bincount(index, weights=v, minlength=len(names))
    counts = np.bincount(index, minlength=len(names)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(samples, len(names)))
    means = sums[draws].sum(1) / counts[draws].sum(1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return mean, float(low), float(high)
