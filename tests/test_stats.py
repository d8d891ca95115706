import numpy as np

from anchorface.evaluation.stats import bootstrap_ci


def test_bootstrap_matches_the_normal_interval():
    """For n i.i.d. values the 95% interval of the mean is mean +- 1.96 sigma / sqrt(n) (closed form)."""
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, size=400)
    mean, lo, hi = bootstrap_ci(x, samples=4000)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert mean == x.mean()
    assert abs((hi - lo) / 2 - half) < 0.1 * half
    assert abs((lo + hi) / 2 - mean) < 0.1 * half


def test_groups_are_resampled_whole():
    """Two seeds of one clip are one clip's evidence: identical pairs give the interval of the clip means."""
    rng = np.random.default_rng(2)
    clips = rng.normal(0, 1, size=50)
    paired = np.repeat(clips, 2)
    a = bootstrap_ci(clips, seed=3)
    b = bootstrap_ci(paired, seed=3, groups=np.repeat(np.arange(50), 2))
    np.testing.assert_allclose(a, b)
    narrow = bootstrap_ci(paired, seed=3)  # treated as 100 independent values: a too-narrow interval
    assert narrow[2] - narrow[1] < 0.8 * (a[2] - a[1])


def test_degenerate_inputs():
    assert np.isnan(bootstrap_ci([])[0])
    m, lo, hi = bootstrap_ci([1.0, float("nan")])
    assert m == 1.0 and np.isnan(lo) and np.isnan(hi)
