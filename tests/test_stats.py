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


def test_paired_differences_remove_what_a_clip_shares():
    """Strategies that differ by a constant 0.1 on clips whose levels vary widely: the two rows' intervals overlap,
    the paired difference is 0.1 with an interval of width ~0 (closed form); the reference row and rows of other
    videos get none."""
    from anchorface.evaluation.stats import paired_differences

    rng = np.random.default_rng(3)
    level = rng.normal(0.5, 0.2, size=8)
    noise = rng.normal(0, 0.01, size=16)

    def row(merge, shift, videos=None):
        videos = videos or [f"d{i // 2}" for i in range(16)]
        vals = [level[i // 2] + shift + noise[i] for i in range(16)]
        m, lo, hi = bootstrap_ci(vals, groups=videos)
        return {"conditions": "landmarks", "length": 32, "checkpoint": "c", "merge": merge, "self_csim": m,
                "ci": {"self_csim": [lo, hi]}, "per_video": [{"video": v, "self_csim": x} for v, x in zip(videos, vals)]}

    ref, other = row("anchored", 0.0), row("multidiffusion", 0.1)
    stranger = row("independent", 0.2, videos=[f"e{i}" for i in range(16)])
    assert other["ci"]["self_csim"][0] < ref["ci"]["self_csim"][1]  # the unpaired intervals overlap
    paired_differences([ref, other, stranger], ["self_csim", "absent"])
    mean, lo, hi = other["vs_reference"]["self_csim"]
    assert other["vs_reference"]["merge"] == "anchored" and "absent" not in other["vs_reference"]
    assert abs(mean - 0.1) < 1e-12 and 0.1 - 1e-9 < lo and hi < 0.1 + 1e-9
    assert "vs_reference" not in ref and "vs_reference" not in stranger
