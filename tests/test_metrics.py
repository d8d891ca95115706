"""Metrics of §4.2 against closed forms: Fréchet distance, LMSE, CSIM / Self-CSIM, PSNR / SSIM, feature networks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from anchorface.evaluation import metrics
from anchorface.errors import AnchorfaceError, MissingWeightsError

RNG = np.random.default_rng(0)


def random_rotation(d: int) -> np.ndarray:
    q, r = np.linalg.qr(RNG.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def random_spd(d: int) -> np.ndarray:
    a = RNG.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


# ---------------------------------------------------------------------------------------------------------------
# Fréchet distance


def test_frechet_diagonal_closed_form():
    d = 6
    mu1, mu2 = RNG.normal(size=d), RNG.normal(size=d)
    s1, s2 = RNG.uniform(0.1, 3, d), RNG.uniform(0.1, 3, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_full_covariance_commuting():
    # sigma1 = Q A Q^T and sigma2 = Q B Q^T commute: tr sqrt(sigma1 sigma2) = sum sqrt(a_i b_i)
    d = 8
    q = random_rotation(d)
    a, b = RNG.uniform(0.2, 4, d), RNG.uniform(0.2, 4, d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = RNG.normal(size=d), RNG.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7)


def test_frechet_general_matches_symmetric_form():
    # tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2), the latter from a symmetric eigendecomposition
    d = 7
    s1, s2 = random_spd(d), random_spd(d)
    w, v = np.linalg.eigh(s1)
    r1 = v @ np.diag(np.sqrt(w)) @ v.T
    tr_sqrt = np.sum(np.sqrt(np.linalg.eigvalsh(r1 @ s2 @ r1)))
    mu1, mu2 = RNG.normal(size=d), RNG.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7)


def test_frechet_identical_is_zero_and_singular_is_finite():
    s = random_spd(5)
    mu = RNG.normal(size=5)
    assert metrics.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-8)
    # fewer samples than dimensions: singular covariances; the eps offset keeps the result finite and ~0 for equal sets
    feats = RNG.normal(size=(4, 32))
    assert metrics.fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-3)
    other = feats + 3.0
    assert metrics.fid_from_features(feats, other) == pytest.approx(9.0 * 32, rel=1e-3)


def test_feature_statistics_and_bad_shapes():
    f = RNG.normal(size=(50, 3))
    mu, sigma = metrics.feature_statistics(f)
    np.testing.assert_allclose(mu, f.mean(0))
    np.testing.assert_allclose(sigma, np.cov(f.T))
    with pytest.raises(AnchorfaceError, match="at least 2"):
        metrics.feature_statistics(f[:1])
    with pytest.raises(AnchorfaceError, match="inconsistent shapes"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


# ---------------------------------------------------------------------------------------------------------------
# LMSE / E-LMSE


def random_landmarks(n=5):
    return RNG.uniform(0.2, 0.8, size=(n, 478, 3)).astype(np.float32)


def test_lmse_identical_and_known_shift():
    drv = random_landmarks()
    assert metrics.lmse(drv, drv) == 0.0
    shift_px = 3.0  # a 3-pixel shift in a 256-px crop along x -> LMSE = 9 (pixels^2)
    gen = drv.astype(np.float64).copy()
    gen[..., 0] += shift_px / metrics.LMSE_CROP_PX
    assert metrics.lmse(gen, drv) == pytest.approx(shift_px ** 2, rel=1e-6)
    gen = drv + np.array([1.0, 2.0, 2.0]) / metrics.LMSE_CROP_PX  # |d| = 3 px -> 9
    assert metrics.lmse(gen, drv) == pytest.approx(9.0, rel=1e-4)


def test_lmse_excludes_frames_without_face_and_selects_indices():
    drv = random_landmarks(4)
    gen = drv.copy()
    gen[2] = 0.0  # a frame where the generated video had no face: garbage, excluded
    valid = np.array([True, True, False, True])
    assert metrics.lmse(gen, drv, valid=valid) == 0.0
    assert metrics.lmse(gen, drv) > 0
    assert math.isnan(metrics.lmse(gen, drv, valid=np.zeros(4, bool)))
    gen = drv.copy()
    gen[:, 10] += 1.0 / metrics.LMSE_CROP_PX
    assert metrics.lmse(gen, drv, indices=[11, 12]) == 0.0
    assert metrics.lmse(gen, drv, indices=[10]) == pytest.approx(3.0, rel=1e-4)
    with pytest.raises(AnchorfaceError, match="landmark arrays"):
        metrics.lmse(drv, drv[:, :10])


def test_expressive_lmse_uses_expressive_points():
    landmarks = pytest.importorskip("anchorface.faces.landmarks")
    idx = np.asarray(landmarks.EXPRESSIVE_INDICES)
    drv = random_landmarks(3)
    gen = drv.copy()
    others = np.setdiff1d(np.arange(478), idx)
    gen[:, others] += 0.1  # moving only non-expressive points leaves E-LMSE at 0
    assert metrics.expressive_lmse(gen, drv) == 0.0
    gen = drv.copy()
    gen[:, idx, 1] += 2.0 / metrics.LMSE_CROP_PX
    assert metrics.expressive_lmse(gen, drv) == pytest.approx(4.0, rel=1e-4)
    m = metrics.motion_metrics(gen, np.array([True, True, False]), drv)
    assert m["face_found_rate"] == pytest.approx(2 / 3)
    assert m["e_lmse"] == pytest.approx(4.0, rel=1e-4)
    assert m["lmse"] == pytest.approx(4.0 * len(idx) / 478, rel=1e-4)
    gen[0] = 0.0  # a driving frame without a face (filled landmarks) is excluded as well
    m = metrics.motion_metrics(gen, np.ones(3, bool), drv, drv_found=np.array([False, True, True]))
    assert m["e_lmse"] == pytest.approx(4.0, rel=1e-4) and m["face_found_rate"] == 1.0


# ---------------------------------------------------------------------------------------------------------------
# CSIM / Self-CSIM


def test_csim_and_self_csim():
    e = RNG.normal(size=(6, 16))
    assert metrics.csim(e[0], np.repeat(e[:1], 5, 0) * 3.0) == pytest.approx(1.0)
    assert metrics.self_csim(e, e.copy() * 2.0) == pytest.approx(0.0, abs=1e-12)

    def unit(theta):
        return np.array([math.cos(theta), math.sin(theta), 0.0])

    src = unit(0.0)
    gen = np.stack([unit(0.1), unit(0.5), unit(0.3)])
    assert metrics.csim(src, gen) == pytest.approx(math.cos(0.5))
    drv = np.stack([unit(0.0), unit(0.2)])
    # min pairwise within gen: angle 0.4; within drv: angle 0.2
    assert metrics.self_csim(gen, drv) == pytest.approx(abs(math.cos(0.4) - math.cos(0.2)))
    with pytest.raises(AnchorfaceError, match="zero embedding"):
        metrics.csim(np.zeros(3), gen)


class MeanColourEncoder(nn.Module):
    """A test double of a GlobalEncoder: the embedding is the mean colour (in [-1, 1]) plus a constant."""

    dim = 4
    resolution = 8

    def encode_images(self, px):
        assert px.shape[-2:] == (8, 8) and px.min() >= -1 and px.max() <= 1
        return torch.cat([px.mean((2, 3)), torch.ones(len(px), 1)], 1)


def test_embed_frames_resizes_and_scales():
    frames = [np.full((20, 20, 3), v, np.uint8) for v in (0, 255, 51)]
    emb = metrics.embed_frames(MeanColourEncoder(), frames, batch_size=2)
    np.testing.assert_allclose(emb[:, 0], [-1.0, 1.0, 51 / 127.5 - 1], atol=1e-5)
    assert emb.shape == (3, 4)


# ---------------------------------------------------------------------------------------------------------------
# PSNR / SSIM


def test_psnr_ssim_identical_and_known_noise():
    img = RNG.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    assert metrics.psnr(img, img) == math.inf
    assert metrics.ssim(img, img) == pytest.approx(1.0)
    base = np.full((32, 32, 3), 128, np.uint8)
    sign = RNG.choice([-1, 1], size=base.shape)
    noisy = (base.astype(int) + 5 * sign).astype(np.uint8)  # MSE = 25 exactly
    assert metrics.psnr(noisy, base) == pytest.approx(10 * math.log10(255 ** 2 / 25), rel=1e-9)
    assert metrics.ssim(noisy, base) < 0.99
    with pytest.raises(AnchorfaceError, match="frames"):
        metrics.psnr(np.zeros((4, 4)), np.zeros((4, 4)))


# ---------------------------------------------------------------------------------------------------------------
# Feature networks (FID / FVD): missing weights, calling convention


def test_missing_feature_weights_name_the_file(tmp_path):
    with pytest.raises(MissingWeightsError, match="inception-2015-12-05.pt"):
        metrics.InceptionFeatures(tmp_path / "nope.pt")
    with pytest.raises(MissingWeightsError, match="i3d_torchscript.pt"):
        metrics.I3DFeatures(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torchscript archive")
    with pytest.raises(MissingWeightsError, match="not a TorchScript"):
        metrics.InceptionFeatures(bad)
    fid_pth = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    fid_pth.write_bytes(b"a pickled state dict")
    with pytest.raises(MissingWeightsError, match="pytorch-fid's state dict.*inception-2015-12-05.pt"):
        metrics.InceptionFeatures(fid_pth)


def test_feature_extractors_on_tiny_torchscript(feature_nets):
    inc_path, i3d_path = feature_nets  # features = mean colour @ proj

    colours = np.array([[0, 128, 255], [10, 20, 30], [200, 100, 50]], np.uint8)
    frames = np.stack([np.broadcast_to(c, (40, 48, 3)) for c in colours])  # constant frames: resizing is exact
    feats = metrics.InceptionFeatures(inc_path, batch_size=2)(frames)
    assert feats.shape == (3, metrics.INCEPTION_DIM)
    expected = colours.astype(np.float64) @ torch.jit.load(str(inc_path)).proj.double().numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-3)

    videos = np.stack([np.broadcast_to(c, (8, 30, 30, 3)) for c in colours])  # 8 frames: mirror-padded to 10
    vfeats = metrics.I3DFeatures(i3d_path)(videos)
    assert vfeats.shape == (3, metrics.I3D_DIM)
    expected = (colours / 127.5 - 1.0) @ torch.jit.load(str(i3d_path)).proj.double().numpy()
    np.testing.assert_allclose(vfeats, expected, rtol=1e-4, atol=1e-4)

    # FID of a set against itself is ~0 and grows by |shift|^2 when one set shifts (16 dims: sqrtm of 2048 is slow)
    f16 = feats[:, :16]
    tol = 1e-6 * np.trace(np.cov(f16, rowvar=False))  # sqrtm of a rank-2 product is accurate relative to its scale
    assert metrics.fid_from_features(f16, f16) == pytest.approx(0.0, abs=tol)
    assert metrics.fid_from_features(f16, f16 + 1.0) == pytest.approx(16.0, abs=tol)


def test_pad_frames_mirrors():
    v = np.arange(4)
    np.testing.assert_array_equal(metrics.pad_frames(v, 10), [0, 1, 2, 3, 2, 1, 0, 1, 2, 3])
    np.testing.assert_array_equal(metrics.pad_frames(np.arange(1), 3), [0, 0, 0])
    assert metrics.pad_frames(np.arange(12), 10).shape == (12,)


def test_first_frame_csim_and_appearance_drift():
    e = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert metrics.first_frame_csim(e) == pytest.approx(0.0)
    assert metrics.first_frame_csim(e[:2] * 5) == pytest.approx(1.0)
    still = np.full((3, 32, 32, 3), 100, np.uint8)
    assert metrics.appearance_drift(still) == 0.0
    brighter = still.copy()
    brighter[1:] += 10  # a global brightness change of 10 -> drift 10
    assert metrics.appearance_drift(brighter) == pytest.approx(10.0)
    moving = np.zeros((2, 64, 64, 3), np.uint8)
    moving[0, 30:34, 30:34] = 255  # a small blob moving by one pixel barely changes the 8x8 appearance
    moving[1, 31:35, 30:34] = 255
    assert metrics.appearance_drift(moving) < 1.0


def test_fid_low_rank_path_matches_full_computation():
    # fewer samples than dimensions: the exact span computation equals frechet_distance (whose eps offset adds
    # ~1e-6 per dimension) ...
    real, fake = RNG.normal(size=(6, 40)), RNG.normal(size=(9, 40)) * 2 + 0.3
    full = metrics.frechet_distance(*metrics.feature_statistics(real), *metrics.feature_statistics(fake))
    assert metrics.fid_from_features(real, fake) == pytest.approx(full, abs=1e-3)
    # ... and in the commuting case the closed form: scaled copies of one set
    x = RNG.normal(size=(5, 30))
    c = metrics.feature_statistics(x)[1]
    expected = 4.0 + np.trace(c) * (1 + 9 - 2 * 3)  # mean shift |d|^2 = 4, S2 = 9 S1
    shift = np.zeros(30)
    shift[0] = 2.0
    assert metrics.fid_from_features(x, 3 * x + shift - 2 * x.mean(0)) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(AnchorfaceError, match="at least 2"):
        metrics.fid_from_features(x[:1], x)


def test_drift_to_closed_forms():
    e = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    mean, mx = metrics.drift_to(e, 0, "cosine")
    np.testing.assert_allclose([mean, mx], [(1.0 + (1 - 2 ** -0.5)) / 2, 1.0])
    mean, mx = metrics.drift_to(e, 2, "euclidean")
    np.testing.assert_allclose([mean, mx], [1.0, 1.0])
    assert metrics.drift_to(e[:1], 0) == (0.0, 0.0)


def test_background_drift_ignores_the_face_and_sees_the_background():
    rng = np.random.default_rng(0)
    n, size = 4, 64
    lmk = np.zeros((n, 478, 3))
    ang = np.linspace(0, 2 * np.pi, 478, endpoint=False)
    lmk[..., 0], lmk[..., 1] = 0.5 + 0.15 * np.cos(ang), 0.5 + 0.2 * np.sin(ang)  # a face in the middle
    frames = np.full((n, size, size, 3), 100, np.uint8)
    mask = metrics.face_mask(lmk[0], size)
    assert mask[32, 32] and not mask[2, 2]
    changed_face = frames.copy()
    changed_face[1:, mask] = rng.integers(0, 256, (n - 1, int(mask.sum()), 3))
    assert metrics.background_drift(changed_face, lmk) == 0.0  # face changes do not count
    changed_bg = frames.copy()
    changed_bg[1:, ~mask] = 130  # the outfit / background changes by 30 levels
    assert metrics.background_drift(changed_bg, lmk) == pytest.approx(30.0, abs=3.0)
