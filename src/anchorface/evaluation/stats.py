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


def paired_differences(rows: list[dict], measures, reference: str = "anchored", seed: int = 0) -> None:
    """Add to each consistency row (`consistency_protocol`'s, with `per_video` metrics) its paired difference from
    the `reference` strategy's row of the same setting, length and checkpoint: row["vs_reference"] = {"merge":
    reference, measure: [mean, low, high]} of (this strategy - reference) over the same clips and seeds, with the
    clips resampled whole. Pairing removes what a clip and seed share (its motion, its noise), so the interval of a
    difference is narrower than the two rows' intervals suggest. Rows whose videos do not pair are left as they are."""
    refs = {(r.get("conditions"), r["length"], r["checkpoint"]): r for r in rows if r["merge"] == reference}
    for r in rows:
        ref = refs.get((r.get("conditions"), r["length"], r["checkpoint"]))
        if ref is None or ref is r:
            continue
        mine, theirs = r.get("per_video") or [], ref.get("per_video") or []
        if not mine or [m["video"] for m in mine] != [m["video"] for m in theirs]:
            continue
        out = {"merge": reference}
        for key in measures:
            diff = [a.get(key, float("nan")) - b.get(key, float("nan")) for a, b in zip(mine, theirs)]
            if np.isfinite(diff).any():
                out[key] = list(bootstrap_ci(diff, groups=[m["video"] for m in mine], seed=seed))
        r["vs_reference"] = out
