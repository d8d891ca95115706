"""Shot boundaries (§3.3: segments never cross a cut) with PySceneDetect's content detector, fed frame by frame.

The frames come from the project's own streaming PyAV decoder (`io.video.iter_frames`), the same pass that finds the
faces, so a video is decoded once and memory stays flat in its length. PySceneDetect's `ContentDetector` scores each
frame against the previous one (HSV + edge change) on a downscaled copy; in its SUPPRESS filter mode a cut is
reported on the very frame that starts the new shot, with no look-ahead, so tracks can be closed online. `reenact`
does not need this extra: it uses the core detector `io.shots.CutDetector`, whose shot ranges and thumbnails this
module shares.

OpenCV: PySceneDetect's wheel depends on `opencv-python`, mediapipe on `opencv-contrib-python`. Both install the
same `cv2` package, and whichever is installed last overwrites the other (pip does not notice; `opencv-python` 5
also pulls numpy 2, which breaks mediapipe 0.10.21). The contrib build is a superset of what PySceneDetect uses, so
install PySceneDetect without its dependencies: `pip install --no-deps scenedetect click platformdirs`
(`pip install .[curate]` brings the rest). `check_opencv` refuses to run with two OpenCV distributions installed.
"""

from __future__ import annotations

from importlib import metadata

import numpy as np

from anchorface.errors import AnchorfaceError
from anchorface.io.shots import MIN_SHOT_SECONDS, shot_ranges, thumbnail

OPENCV_DISTRIBUTIONS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python",
                        "opencv-contrib-python-headless")
DETECT_WIDTH = 256  # px: frames are shrunk to this width for the content score (PySceneDetect's own default idea)
CONTENT_THRESHOLD = 27.0  # PySceneDetect's default


def installed_opencv() -> list[str]:
    """The OpenCV distributions pip has installed (all of them provide the one `cv2` package)."""
    found = []
    for name in OPENCV_DISTRIBUTIONS:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def check_opencv() -> None:
    """AnchorfaceError when more than one OpenCV distribution is installed (they overwrite each other's cv2)."""
    found = installed_opencv()
    if len(found) > 1:
        raise AnchorfaceError(f"two OpenCV packages are installed ({', '.join(found)}) and overwrite each other's "
                              "cv2: keep opencv-contrib-python (mediapipe's), e.g. `pip uninstall -y "
                              f"{' '.join(f for f in found if f != 'opencv-contrib-python')}` then "
                              "`pip install --force-reinstall --no-deps opencv-contrib-python==4.10.0.84`")


def _scenedetect():
    try:
        import scenedetect
        from scenedetect.detectors import ContentDetector
    except ImportError:
        raise AnchorfaceError("shot detection needs PySceneDetect: pip install --no-deps scenedetect click "
                              "platformdirs (its opencv-python dependency would collide with mediapipe's "
                              "opencv-contrib-python)") from None
    return scenedetect, ContentDetector


class ShotDetector:
    """Online shot-cut detection: `feed(frame)` for every frame in order; True when that frame starts a new shot
    (frame 0 is never a cut)."""

    def __init__(self, fps: float, threshold: float = CONTENT_THRESHOLD, min_shot_seconds: float = MIN_SHOT_SECONDS):
        check_opencv()
        scenedetect, ContentDetector = _scenedetect()
        from scenedetect.detector import FlashFilter

        self._tc = scenedetect.FrameTimecode
        self.fps = float(fps)
        self._det = ContentDetector(threshold=threshold, min_scene_len=max(1, int(round(min_shot_seconds * fps))),
                                    filter_mode=FlashFilter.Mode.SUPPRESS)
        self._i = 0
        self.cuts: list[int] = []

    def feed(self, frame_rgb: np.ndarray) -> bool:
        small = thumbnail(frame_rgb, DETECT_WIDTH) if frame_rgb.shape[1] > DETECT_WIDTH else frame_rgb
        bgr = np.ascontiguousarray(small[..., ::-1])  # PySceneDetect works on OpenCV's BGR frames
        cuts = self._det.process_frame(self._tc(self._i, fps=self.fps), bgr)
        cut = any(int(c.frame_num) == self._i for c in cuts) and self._i > 0
        if cut:
            self.cuts.append(self._i)
        self._i += 1
        return cut


def shot_boundaries(path, threshold: float = CONTENT_THRESHOLD) -> tuple[list[tuple[int, int]], int]:
    """Shots of a video file as [start, end) frame ranges, and the frame count (decodes the whole file)."""
    from anchorface.io.video import iter_frames, probe_video

    fps = float(probe_video(path).fps)
    det = ShotDetector(fps, threshold)
    n = 0
    for frame in iter_frames(path):
        det.feed(frame)
        n += 1
    return shot_ranges(det.cuts, n), n
