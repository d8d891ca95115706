"""Landmarks (§3.1), expressive weight maps (§4.1) and relative motion (supp. §1) on the real face corpus."""

import itertools
import math

import numpy as np
import pytest
import torch
from mediapipe.python.solutions import face_mesh_connections as conn

from anchorface.errors import NoFaceError
from anchorface.faces.detect import FaceDetector, crop, source_crop_box, track_crop_boxes
from anchorface.faces.landmarks import (EXPRESSIVE_INDICES, EXPRESSIVE_REGIONS, LandmarkDetector, expressive_mask,
                                  expressive_weight_map, expressive_weight_maps, fill_from_nearest, landmark_vector,
                                  relative_motion, track_landmarks)
from anchorface.io.images import load_image
from anchorface.io.video import iter_frames

FULL_CLIPS = ("d0", "d12", "d20")  # every frame
STRIDE = 5  # every 5th frame of the other clips (tracking mode still has to re-find the face after the jumps)


@pytest.fixture(scope="module")
def frames(face_corpus):
    """frames("d3", stride, limit): frames of a driving clip of the real corpus (skips, or fails in CI, without it)."""
    return lambda name, stride=1, limit=None: itertools.islice(
        iter_frames(face_corpus / "driving" / f"{name}.mp4"), 0, limit, stride)


@pytest.fixture(scope="module")
def clip_landmarks(face_corpus, frames):
    out = {}
    for path in sorted((face_corpus / "driving").glob("*.mp4")):
        stride = 1 if path.stem in FULL_CLIPS else STRIDE
        out[path.stem] = track_landmarks(frames(path.stem, stride), progress=False)
    return out


@pytest.fixture(scope="module")
def source_landmarks(face_corpus):
    image = load_image(face_corpus / "source" / "s1.jpg")
    with LandmarkDetector(static_image_mode=True) as det:
        return det.detect(crop(image, source_crop_box(image), 256))


# ---- index sets and the L_t vector ------------------------------------------------------------------------------

def test_expressive_sets_are_mediapipe_connection_sets():
    sets = {"left_eye": conn.FACEMESH_LEFT_EYE, "right_eye": conn.FACEMESH_RIGHT_EYE,
            "left_iris": conn.FACEMESH_LEFT_IRIS, "right_iris": conn.FACEMESH_RIGHT_IRIS,
            "left_eyebrow": conn.FACEMESH_LEFT_EYEBROW, "right_eyebrow": conn.FACEMESH_RIGHT_EYEBROW,
            "lips": conn.FACEMESH_LIPS}
    assert set(EXPRESSIVE_REGIONS) == set(sets)
    for name, edges in sets.items():
        assert set(EXPRESSIVE_REGIONS[name].tolist()) == {v for e in edges for v in e}
    assert [len(EXPRESSIVE_REGIONS[k]) for k in ("left_eye", "left_iris", "left_eyebrow", "lips")] == [16, 4, 10, 40]
    assert set(EXPRESSIVE_REGIONS["left_iris"].tolist()) == {474, 475, 476, 477}
    assert np.all(np.diff(EXPRESSIVE_INDICES) > 0) and EXPRESSIVE_INDICES.max() < 478
    assert len(EXPRESSIVE_INDICES) == sum(len(v) for v in EXPRESSIVE_REGIONS.values())  # regions are disjoint


def test_landmark_vector_numpy_and_torch():
    lmk = np.random.default_rng(0).random((2, 5, 478, 3)).astype(np.float32)
    v = landmark_vector(lmk)
    assert v.shape == (2, 5, 1434) and v.dtype == np.float32
    v3 = v.reshape(2, 5, 478, 3)
    np.testing.assert_allclose(v3[..., :2], 2 * lmk[..., :2] - 1, atol=1e-6)
    np.testing.assert_allclose(v3[..., 2], 2 * lmk[..., 2], atol=1e-6)
    corners = landmark_vector(np.tile(np.array([0.0, 1.0, 0.25], np.float32), (478, 1)))
    np.testing.assert_allclose(corners[:3], [-1.0, 1.0, 0.5])
    t = landmark_vector(torch.from_numpy(lmk))
    assert isinstance(t, torch.Tensor) and t.shape == (2, 5, 1434)
    np.testing.assert_allclose(t.numpy(), v, atol=1e-6)
    with pytest.raises(ValueError, match="478"):
        landmark_vector(np.zeros((468, 3)))


def test_fill_from_nearest():
    values = np.arange(7, dtype=float)
    found = np.array([False, True, False, False, False, True, False])
    np.testing.assert_array_equal(fill_from_nearest(values, found), [1, 1, 1, 1, 5, 5, 5])  # tie (3) -> earlier


# ---- detection and tracking on real clips -------------------------------------------------------------------------

def test_landmarks_found_on_every_frame_of_the_driving_clips(clip_landmarks):
    assert len(clip_landmarks) == 10
    for name, (lmk, found) in clip_landmarks.items():
        assert lmk.dtype == np.float32 and lmk.shape[1:] == (478, 3) and len(lmk) == len(found) > 10, name
        assert found.all(), f"{name}: no face on frames {np.flatnonzero(~found)}"
        # normalised frame coordinates: the face centre inside the frame, the face a sizeable part of it
        centre, width = lmk[..., :2].mean(1), np.ptp(lmk[..., 0], axis=1)
        assert (0.2 < centre).all() and (centre < 0.8).all() and (0.2 < width).all() and (width < 0.8).all(), name
        # the eyes are above the mouth on every frame (upright faces)
        eyes_y = lmk[:, EXPRESSIVE_REGIONS["left_eye"], 1].mean(1)
        assert (eyes_y < lmk[:, EXPRESSIVE_REGIONS["lips"], 1].mean(1)).all(), name
    assert len(clip_landmarks["d0"][0]) == 78  # full clips really were taken frame by frame


def test_landmarks_on_256px_crops_of_a_tracked_clip(frames):
    boxes = track_crop_boxes(frames("d20"), progress=False)
    lmk, found = track_landmarks((crop(f, b, 256) for f, b in zip(frames("d20"), boxes)), progress=False)
    assert len(lmk) == len(boxes) == 175 and found.all()
    # the crop is framed on the face: landmark centroid near the crop centre, face about half the crop wide
    centre = lmk[..., :2].mean(1)
    assert np.abs(centre - 0.5).max() < 0.12
    width = np.ptp(lmk[..., 0], axis=1)
    assert 0.3 < width.min() and width.max() < 0.7


def test_missing_faces_are_filled_from_the_nearest_frame(frames):
    real = list(frames("d12", limit=6))
    blank = np.full_like(real[0], 128)
    seq = [blank, real[0], real[1], blank, blank, blank, real[2], blank]
    lmk, found = track_landmarks(seq, progress=False)
    np.testing.assert_array_equal(found, [0, 1, 1, 0, 0, 0, 1, 0])
    for i, j in [(0, 1), (3, 2), (4, 2), (5, 6), (7, 6)]:
        np.testing.assert_array_equal(lmk[i], lmk[j])
    with pytest.raises(NoFaceError, match="no face found in any of the 3 video frames"):
        track_landmarks([blank] * 3, progress=False)


# ---- expressive weight maps ---------------------------------------------------------------------------------------

def test_expressive_weight_maps_on_real_frames(clip_landmarks, frames):
    with FaceDetector() as det:
        for name in ("d0", "d3", "d9"):
            frame = next(frames(name))
            lmk = clip_landmarks[name][0][0]
            face = det.detect(frame)[0]
            h, w = frame.shape[:2]
            for size in (8, 16, 32, 64):
                wmap = expressive_weight_map(lmk, size, lambda_ex=1.0)
                assert wmap.shape == (size, size) and wmap.dtype == np.float32
                assert set(np.unique(wmap).tolist()) == {1.0, 2.0}
                marked = np.argwhere(wmap == 2.0)
                assert 0 < len(marked) < 0.5 * size * size or size == 8, (name, size)
                # every marked latent pixel overlaps the face detection box (in latent units, +1 px for pooling)
                ys, xs = marked[:, 0], marked[:, 1]
                assert (xs + 1 >= face.x0 / w * size - 1).all() and (xs <= face.x1 / w * size + 1).all()
                assert (ys + 1 >= face.y0 / h * size - 1).all() and (ys <= face.y1 / h * size + 1).all()
                # each region's centroid lies on a marked pixel; the nose tip (landmark 1) does not at 64
                for region in ("left_eye", "right_eye", "lips", "left_eyebrow", "right_eyebrow"):
                    cx, cy = lmk[EXPRESSIVE_REGIONS[region], :2].mean(0) * size
                    assert wmap[int(cy), int(cx)] == 2.0, (name, size, region)
            nose = (lmk[1, :2] * 64).astype(int)
            assert expressive_weight_map(lmk, 64)[nose[1], nose[0]] == 1.0
            # λ_ex scales the weight; λ_ex = 0 is the plain MSE
            np.testing.assert_array_equal(expressive_weight_map(lmk, 16, 0.5) == 1.5, expressive_mask(lmk, 16))
            assert (expressive_weight_map(lmk, 16, 0.0) == 1.0).all()


def test_batched_weight_maps_match_single(clip_landmarks):
    lmk = clip_landmarks["d0"][0][:5]
    maps = expressive_weight_maps(lmk, 16, 1.0)
    assert maps.shape == (5, 16, 16)
    for i in range(5):
        np.testing.assert_array_equal(maps[i], expressive_weight_map(lmk[i], 16, 1.0))


# ---- relative motion ----------------------------------------------------------------------------------------------

def _similarity(points, s, theta, t):
    r = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    out = points.copy()
    out[..., :2] = s * points[..., :2] @ r.T + t
    out[..., 2] = s * points[..., 2]
    return out


def test_relative_motion_reference_maps_exactly_to_the_source(clip_landmarks, source_landmarks):
    driving = clip_landmarks["d3"][0]
    for ref in (0, len(driving) // 2, -1):
        out = relative_motion(driving, source_landmarks, reference=ref)
        assert out.shape == driving.shape and out.dtype == np.float32
        np.testing.assert_allclose(out[ref], source_landmarks, atol=1e-6)
    # other frames differ from the source by the driving motion (not zero, not the raw driving landmarks)
    out = relative_motion(driving, source_landmarks)
    assert np.abs(out[1:] - source_landmarks).max() > 1e-3
    with pytest.raises(ValueError, match="reference frame"):
        relative_motion(driving, source_landmarks, reference=len(driving))


def test_relative_motion_closed_form_under_a_similarity(clip_landmarks, source_landmarks):
    """driving_t = M(source + D_t) with a similarity M  =>  output_t = source + D_t - D_ref, exactly."""
    real = clip_landmarks["d9"][0].astype(np.float64)
    disp = real - real[0]  # real facial motion, D_0 = 0
    src = source_landmarks.astype(np.float64)
    driving = _similarity(src + disp, s=0.62, theta=math.radians(25), t=np.array([0.2, -0.1]))
    np.testing.assert_allclose(relative_motion(driving, src, reference=0), src + disp, atol=1e-5)
    ref = 7  # the same with another reference frame: driving_t = M(source + D_t - D_ref)
    driving = _similarity(src + disp - disp[ref], s=1.3, theta=math.radians(-40), t=np.array([-0.3, 0.05]))
    np.testing.assert_allclose(relative_motion(driving, src, reference=ref), src + disp - disp[ref], atol=1e-5)
    # the raw driving face at another scale: displacements are scaled (and rotated) into the source's frame, so
    # their lengths follow the Umeyama scale s from the driving reference to the source
    other = _similarity(real, s=2.0, theta=math.radians(-10), t=np.array([0.3, 0.1]))
    out = relative_motion(other, src).astype(np.float64)
    s = _scale(other[0], src)
    np.testing.assert_allclose(np.linalg.norm(out[..., :2] - src[:, :2], axis=-1),
                               2.0 * s * np.linalg.norm(disp[..., :2], axis=-1), atol=1e-5)
    np.testing.assert_allclose(out[..., 2] - src[:, 2], 2.0 * s * disp[..., 2], atol=1e-5)


def _scale(a, b):
    """Umeyama scale taking landmarks a onto b (x, y), in closed form."""
    a, b = a[:, :2] - a[:, :2].mean(0), b[:, :2] - b[:, :2].mean(0)
    sv = np.linalg.svd(b.T @ a, compute_uv=False)
    d = np.sign(np.linalg.det(b.T @ a))
    return (sv[0] + d * sv[1]) / (a**2).sum()
