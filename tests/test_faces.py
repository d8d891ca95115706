"""Face detection, App. B crop framing, box smoothing, crop and paste-back on the real face corpus."""

import itertools

import cv2
import numpy as np
import pytest

from anchorface.errors import AnchorfaceError, NoFaceError
from anchorface.faces.detect import (CROP_SHIFT_UP, FACE_HEIGHT_RATIO, FACE_SCORE_ON_CROP, FACE_WIDTH_RATIO,
                              MAX_INSIDE_SHIFT, Box, FaceDetector, crop, crop_box, crop_side, detect_face_boxes,
                              feather_mask, iou, paste_back, smooth_boxes, source_crop_box, track_crop_boxes)
from anchorface.io.images import load_image
from anchorface.io.video import iter_frames

PORTRAITS = ("s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s10", "s11", "s12", "drv_d8", "drv_d12",
             "drv_d30")


@pytest.fixture(scope="module")
def source(face_corpus):
    """source("s1"): a portrait of the real corpus (skips, or fails in CI, without the corpus)."""
    return lambda name: load_image(face_corpus / "source" / f"{name}.jpg")


@pytest.fixture(scope="module")
def frames(face_corpus):
    """frames("d3", limit): the frames of a driving clip of the real corpus."""
    return lambda name, limit=None: itertools.islice(iter_frames(face_corpus / "driving" / f"{name}.mp4"), limit)


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def inside(box, hw):
    """Integer slices of the pixels whose centres lie inside the box and the frame."""
    y0, x0 = max(0, int(np.ceil(box.y0 - 0.5))), max(0, int(np.ceil(box.x0 - 0.5)))
    y1, x1 = min(hw[0], int(np.floor(box.y1 - 0.5)) + 1), min(hw[1], int(np.floor(box.x1 - 0.5)) + 1)
    return slice(y0, y1), slice(x0, x1)


# ---- geometry ------------------------------------------------------------------------------------------------------

def test_box():
    b = Box(10.0, 20.0, 50.0, 100.0)
    assert (b.width, b.height, b.center, b.area) == (40.0, 80.0, (30.0, 60.0), 3200.0)
    np.testing.assert_array_equal(b.as_array(), [10, 20, 50, 100])
    assert Box.from_array(b.as_array()) == b
    assert Box.square(5, 5, 4) == Box(3, 3, 7, 7)


def test_crop_side_is_the_app_b_maximum_likelihood():
    # a box with App. B's own aspect: both ratios hold exactly
    face = Box(0, 0, 100 * FACE_WIDTH_RATIO, 100 * FACE_HEIGHT_RATIO)
    assert crop_side(face) == pytest.approx(100)
    # MediaPipe's square box: the ratio is the precision-weighted mean of 0.45 (std 0.05) and 0.53 (std 0.07)
    ratio = 100 / crop_side(Box(0, 0, 100, 100))
    expected = (0.45 / 0.05**2 + 0.53 / 0.07**2) / (1 / 0.05**2 + 1 / 0.07**2)
    assert ratio == pytest.approx(expected) and 0.47 < ratio < 0.48


def test_crop_box_framing_and_inside_shift():
    face = Box(400, 300, 500, 400)
    b = crop_box(face, (2000, 2000))  # far from the borders: centred, raised by CROP_SHIFT_UP box heights
    assert b.width == pytest.approx(b.height) == pytest.approx(crop_side(face))
    assert b.center[0] == pytest.approx(450) and b.center[1] == pytest.approx(350 - CROP_SHIFT_UP * 100)
    near = crop_box(Box(5, 300, 105, 400), (2000, 2000))  # sticks out on the left: slid right by at most 5%
    assert near.center[0] - 55 == pytest.approx(MAX_INSIDE_SHIFT * near.width)
    assert near.x0 < 0
    big = crop_box(Box(0, 0, 300, 300), (200, 200))  # larger than the frame: not moved
    assert big.center[0] == pytest.approx(150)


# ---- detection -----------------------------------------------------------------------------------------------------

def test_crop_framing_matches_the_paper_on_real_portraits(source):
    """Re-detect the face in the 256-px crop: it spans ~0.45 of the crop's width (App. B) on every portrait."""
    ratios = []
    with FaceDetector() as det:
        for name in PORTRAITS:
            img = crop(source(name), source_crop_box(source(name)), 256)
            faces = det.detect(img)
            assert len(faces) >= 1, name
            ratios.append(faces[0].width / 256)
            assert 0.4 < faces[0].center[1] / 256 < 0.65, name  # face a little below the centre (hair above)
    ratios = np.array(ratios)
    assert np.all(np.abs(ratios - FACE_WIDTH_RATIO) < 0.1), dict(zip(PORTRAITS, ratios.round(3)))
    assert abs(ratios.mean() - FACE_WIDTH_RATIO) < 0.05


@pytest.mark.parametrize("name", ["s22", "s23", "s30", "s31", "s33", "s36", "s38", "s40", "s41"])
def test_no_face_in_animal_photos(name, source):
    # BlazeFace alone fires on several of these (the capuchin s22 at 0.85); the check on the framed crop rejects them
    with pytest.raises(NoFaceError, match=f"^no face found in {name}.jpg$"):
        source_crop_box(source(name), what=f"{name}.jpg")


def test_human_faces_pass_the_crop_check(source):
    with FaceDetector() as det:
        for name in PORTRAITS:
            img = source(name)
            assert det.crop_score(img, det.detect(img)[0]) >= FACE_SCORE_ON_CROP, name


def test_no_face_in_a_blank_image_and_bad_input():
    with pytest.raises(NoFaceError, match="no face found in the source image"):
        source_crop_box(np.full((300, 300, 3), 200, np.uint8))
    with pytest.raises(AnchorfaceError, match="RGB uint8"):
        source_crop_box(np.zeros((300, 300), np.float32))


def test_several_faces_take_the_largest_and_warn(source):
    big = cv2.resize(source("s1"), (500, 500), interpolation=cv2.INTER_AREA)
    small = cv2.resize(source("s11"), (400, 366), interpolation=cv2.INTER_AREA)
    canvas = np.full((500, 920, 3), 90, np.uint8)
    canvas[:, 420:] = big
    canvas[67:433, :400] = small
    with pytest.warns(UserWarning, match="found 2 faces in the source image, using the largest"):
        box = source_crop_box(canvas)
    assert 420 < box.center[0] < 920  # framed on the big portrait
    alone = source_crop_box(np.ascontiguousarray(canvas[:, 420:]))
    shifted = Box(box.x0 - 420, box.y0, box.x1 - 420, box.y1)
    assert iou(shifted, alone) > 0.8  # the same crop as of the big portrait alone (up to detector noise)


# ---- video boxes ---------------------------------------------------------------------------------------------------

def test_smoothed_video_boxes_jitter_less_than_raw_detections(frames):
    faces, found, hw = detect_face_boxes(frames("d3"), progress=False)
    assert found.all() and faces.shape == (354, 4) and hw == (512, 512)
    raw = np.stack([crop_box(Box.from_array(f), hw).as_array() for f in faces])
    smooth = smooth_boxes(raw)

    def jitter(b):  # frame-to-frame std of the box centre, pixels
        return np.diff((b[:, :2] + b[:, 2:]) / 2, axis=0).std(0)

    assert np.all(jitter(smooth) < 0.5 * jitter(raw)), (jitter(raw), jitter(smooth))
    side = smooth[:, 2] - smooth[:, 0]
    assert np.ptp(side) < 1e-9 and side[0] == pytest.approx(np.median(raw[:, 2] - raw[:, 0]))
    # smoothing follows the head: centres stay within a few percent of the side of the raw ones
    dev = np.abs((smooth[:, :2] + smooth[:, 2:]) / 2 - (raw[:, :2] + raw[:, 2:]) / 2)
    assert dev.mean() < 0.02 * side[0] and dev.max() < 0.1 * side[0]
    # and track_crop_boxes is exactly this pipeline
    np.testing.assert_allclose(track_crop_boxes(frames("d3"), progress=False), smooth)


def test_video_boxes_fill_gaps_and_need_a_face(frames):
    real = list(frames("d12", limit=5))
    blank = np.full_like(real[0], 128)
    faces, found, _ = detect_face_boxes([blank, real[0], blank, blank, real[4], blank], progress=False)
    np.testing.assert_array_equal(found, [0, 1, 0, 0, 1, 0])
    np.testing.assert_allclose(faces[0], faces[1])
    np.testing.assert_allclose(faces[2], faces[1] + (faces[4] - faces[1]) / 3)  # linear in between
    np.testing.assert_allclose(faces[5], faces[4])
    boxes = track_crop_boxes(real, progress=False, every=2)  # detect on frames 0, 2, 4 only
    assert boxes.shape == (5, 4)
    with pytest.raises(NoFaceError, match="no face found in any of the 2 video frames"):
        track_crop_boxes([blank, blank], progress=False)


def test_track_video_is_boxes_then_landmarks_on_crops(tmp_path, source, frames):
    """The first pass shared by reenact, prepare and evaluate: crop boxes, then landmarks on crops of
    landmark_crop_size(resolution) px (256 up to a 256-px model, the model resolution above), the same for a
    path (decoded twice) and for frames in memory."""
    from anchorface.errors import VideoError
    from anchorface.faces.detect import source_landmarks, track_video
    from anchorface.faces.landmarks import LandmarkDetector, landmark_crop_size, track_landmarks
    from anchorface.io.video import VideoWriter

    assert [landmark_crop_size(r) for r in (None, 64, 256, 512)] == [256, 256, 256, 512]
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, 25, preset="ultrafast") as w:
        for f in frames("d12", limit=8):
            w.write(f)
    clip = list(iter_frames(path))
    track = track_video(path, 64, keep_crops=True, progress=False)
    boxes = track_crop_boxes(clip, progress=False)
    np.testing.assert_array_equal(track.boxes, boxes)
    lmk, found = track_landmarks([crop(f, Box.from_array(b), 256) for f, b in zip(clip, boxes)], progress=False)
    np.testing.assert_array_equal(track.landmarks, lmk)
    np.testing.assert_array_equal(track.found, found)
    assert found.all() and track.crops.shape == (8, 64, 64, 3)
    np.testing.assert_array_equal(track.crops[3], crop(clip[3], Box.from_array(boxes[3]), 64))
    in_memory = track_video(clip, 64, progress=False)
    np.testing.assert_array_equal(in_memory.landmarks, track.landmarks)
    assert in_memory.crops is None
    big = track_video(clip[:3], 320, progress=False)  # above 256 px the crops follow the model resolution
    lmk320, _ = track_landmarks([crop(f, Box.from_array(b), 320) for f, b in zip(clip, big.boxes)], progress=False)
    np.testing.assert_array_equal(big.landmarks, lmk320)

    whole = Box(0, 0, clip[0].shape[1], clip[0].shape[0])
    fixed = track_video(clip[:3], 64, fixed_box=whole, progress=False)
    assert fixed.boxes.shape == (3, 4) and (fixed.boxes == whole.as_array()).all()

    class ShorterSecondTime:  # the second decoding gives fewer frames than the first
        calls = 0

        def __iter__(self):
            self.calls += 1
            return iter(clip[:4] if self.calls == 1 else clip[:3])

    with pytest.raises(VideoError, match="second decoding gave 3 frames, the first 4"):
        track_video(ShorterSecondTime(), 64, progress=False)

    photo = source("s1")
    box = source_crop_box(photo)
    with LandmarkDetector(static_image_mode=True) as det:
        np.testing.assert_array_equal(source_landmarks(photo, box, 64), det.detect(crop(photo, box, 256)))


# ---- crop and paste-back -------------------------------------------------------------------------------------------

def test_crop_is_exact_at_unit_scale_and_repeats_edges():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    out = crop(img, Box(10, 5, 31, 26), 21)  # integer box at scale 1, odd size: a plain copy
    np.testing.assert_array_equal(out, img[5:26, 10:31])
    out = crop(img, Box(-7, -3, 14, 18), 21)  # sticks out top-left: edge pixels repeated
    np.testing.assert_array_equal(out[3:, 7:], img[0:18, 0:14])
    np.testing.assert_array_equal(out[3:, :7], np.repeat(img[0:18, :1], 7, axis=1))
    np.testing.assert_array_equal(out[:3, 7:], np.repeat(img[:1, 0:14], 3, axis=0))
    with pytest.raises(AnchorfaceError, match="RGB uint8"):
        crop(img.astype(np.float32), Box(0, 0, 10, 10), 8)


def test_crop_shrinks_without_aliasing():
    stripes = np.zeros((512, 512, 3), np.uint8)
    stripes[:, ::2] = 255  # 1-px stripes: nearest/bilinear sampling at 1/4 scale would alias to black or white
    out = crop(stripes, Box(0, 0, 512, 512), 128)
    assert np.abs(out.astype(float) - 127.5).max() < 2


def test_paste_back_feather_and_clipping():
    frame = np.zeros((100, 120, 3), np.uint8)
    patch = np.full((64, 64, 3), 200, np.uint8)
    box = Box(-20.0, 30.0, 60.0, 110.0)  # sticks out left and bottom
    out = paste_back(frame, patch, box, feather=0.1)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert (out[:, 60:] == 0).all() and (out[:30] == 0).all()  # outside the box: untouched
    assert (out[45:95, 0:50] == 200).all()  # deeper inside than the 8-px ramp: the patch
    assert 0 < out[31, 30, 0] < 200 and out[31, 30, 0] < out[35, 30, 0]  # ramp towards the top edge
    alpha = feather_mask(10, 10, Box(0, 0, 10, 10), 0, 0, feather=0.2)
    assert alpha[5, 5] == 1.0 and alpha[0, 5] == pytest.approx(0.25) and alpha[0, 0] == pytest.approx(0.25)
    np.testing.assert_array_equal(paste_back(frame, patch, Box(200, 200, 260, 260)), frame)  # off the frame


@pytest.mark.parametrize("where", ["s1", "d9"])
def test_unmodified_crop_pasted_back_reproduces_the_frame(where, source, frames):
    frame = source(where) if where.startswith("s") else next(frames(where))
    box = source_crop_box(frame)
    assert box.x0 != int(box.x0)  # a sub-pixel box: the round trip exercises resampling both ways
    native = crop(frame, box, int(round(box.width)))
    for feather in (0.1, 0.0):
        out = paste_back(frame, native, box, feather=feather)
        ys, xs = inside(box, frame.shape[:2])
        assert psnr(out[ys, xs], frame[ys, xs]) > 40, (where, feather)
        outside = np.ones(frame.shape[:2], bool)  # pixels not even partly covered by the box stay untouched
        y0, x0 = max(0, int(np.floor(box.y0))), max(0, int(np.floor(box.x0)))
        outside[y0:int(np.ceil(box.y1)), x0:int(np.ceil(box.x1))] = False
        np.testing.assert_array_equal(out[outside], frame[outside])
    # the model-sized crop comes back blurrier but aligned
    small = crop(frame, box, 256)
    ys, xs = inside(box, frame.shape[:2])
    assert psnr(paste_back(frame, small, box)[ys, xs], frame[ys, xs]) > 28
