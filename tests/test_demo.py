"""The pseudo-clip generator (supp. §3 recipe) and the out-of-the-box demo."""

import numpy as np
import pytest

from anchorface.apps import demo as demo_app
from anchorface.data import synthetic as demo
from anchorface.faces.landmarks import EXPRESSIVE_REGIONS, LandmarkDetector


@pytest.fixture(scope="module")
def portrait():
    return demo.head_and_shoulders(demo.astronaut())


NEUTRAL = dict(angle=0.0, scale=1.0, tx=0.0, ty=0.0, mouth=0.0, blink=0.0, brow=0.0)


def test_neutral_warp_is_the_identity(portrait):
    image, geo = portrait
    out = demo.warp_frame(image, geo, NEUTRAL)
    assert np.abs(out.astype(int) - image.astype(int)).max() <= 1


def test_similarity_part_matches_opencv_closed_form(portrait):
    import cv2

    image, geo = portrait
    params = dict(NEUTRAL, angle=7.0, scale=1.05, tx=0.03, ty=-0.02)
    expected = cv2.warpAffine(image, demo._similarity(geo, 7.0, 1.05, 0.03, -0.02), image.shape[1::-1],
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    diff = np.abs(demo.warp_frame(image, geo, params).astype(int) - expected.astype(int))
    assert np.median(diff) <= 1 and diff.mean() < 2.0


def test_expression_warps_move_the_landmarks_they_name(portrait):
    image, geo = portrait
    lips, left_eye = EXPRESSIVE_REGIONS["lips"], EXPRESSIVE_REGIONS["left_eye"]
    with LandmarkDetector(static_image_mode=True) as det:
        rest = det.detect(image)
        opened = det.detect(demo.warp_frame(image, geo, dict(NEUTRAL, mouth=1.0)))
        blinked = det.detect(demo.warp_frame(image, geo, dict(NEUTRAL, blink=1.0)))
    assert rest is not None and opened is not None and blinked is not None

    def height(lmk, idx):
        return np.ptp(lmk[idx, 1])

    assert height(opened, lips) > 1.1 * height(rest, lips)  # the jaw drops: the lips' extent grows
    assert height(blinked, left_eye) < 0.9 * height(rest, left_eye)  # the lids close


def test_motion_is_smooth_and_bounded():
    m = demo.random_motion(200, seed=3)
    assert len(m) == 200
    for name in ("mouth", "blink", "brow"):
        v = getattr(m, name)
        assert v.min() >= 0 and v.max() <= 1 and v.std() > 0.01
    assert np.abs(np.diff(m.angle)).max() < 2.0  # degrees per frame at 25 fps: no jumps
    assert not np.allclose(demo.random_motion(50, seed=4).angle, m.angle[:50])


@pytest.mark.skipif(not (demo_app.DEMO_CHECKPOINT / "anchorface.json").exists(), reason="no demo checkpoint installed")
def test_demo_runs_end_to_end(tmp_path):
    from anchorface.apps.cli import main
    from anchorface.io.video import probe_video

    assert main(["demo", "-o", str(tmp_path), "--frames", "10", "--steps", "2", "--quiet"]) == 0
    video, compare = probe_video(tmp_path / "reenacted.mp4"), probe_video(tmp_path / "compare.mp4")
    assert video.num_frames == compare.num_frames == 10 and video.fps == demo.FPS
    assert compare.width > 2 * compare.height  # driving | anchored | multidiffusion
