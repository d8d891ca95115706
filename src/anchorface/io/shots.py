"""Shot cuts of a frame stream, in the core install (numpy + OpenCV only): what `reenact --shots auto` uses so that
no anchored sequence, crop track or smoothing window spans a cut (§5: "multiple or moving anchors" for multi-shot
video; §3.3 cuts the training clips at shot boundaries for the same reason).

A cut is scored between consecutive frames on a 64 x 64 HSV thumbnail by two measures:

- the colour-histogram distance, 1 - intersection of the normalised H-S (16 x 8) and V (16) histograms: on the
  project's real clips (LivePortrait's examples, 10 talking-head videos) it stays <= 0.08 between frames of one shot,
  even with fast head motion, and is >= 0.30 at every cut between two of them (all 90 ordered pairs);
- the mean absolute HSV change per pixel (0-255, hue circular), which catches a cut between two shots of the same
  colours: <= 17 inside those shots, median 60 at the cuts (min 15, so it is the secondary test).

A frame starts a new shot when either measure passes its threshold (set at about twice the within-shot maxima) and
the previous cut is at least `MIN_SHOT_SECONDS` back (a flash or a fade is one shot, not several). The detector is
online: `feed` says whether the frame just given starts a new shot, so a streaming pass (face boxes, landmarks)
can restart its state right there. `curation.scenes` (PySceneDetect, the `curate` extra) shares `shot_ranges` and
`thumbnail`.
"""

from __future__ import annotations

import cv2
import numpy as np

THUMB = 64  # px: frames are compared as THUMB x THUMB thumbnails (area-averaged; cuts are coarse events)
HIST_CUT = 0.18  # histogram distance at or above which a frame starts a new shot
CONTENT_CUT = 35.0  # mean absolute HSV change (0-255) at or above which a frame starts a new shot
MIN_SHOT_SECONDS = 0.5  # no second cut within this time of the previous one (flash suppression)


def thumbnail(frame_rgb: np.ndarray, width: int, height: int | None = None) -> np.ndarray:
    """The frame shrunk (area average) to `width` px wide, keeping its aspect unless `height` is given."""
    h, w = frame_rgb.shape[:2]
    size = (width, height if height is not None else max(1, round(h * width / w)))
    if (w, h) == size:
        return frame_rgb
    return cv2.resize(frame_rgb, size, interpolation=cv2.INTER_AREA)


def shot_ranges(cuts, num_frames: int) -> list[tuple[int, int]]:
    """[start, end) frame ranges of the shots of a video of `num_frames` frames whose shots start at `cuts`."""
    edges = [0, *sorted(int(c) for c in cuts if 0 < int(c) < num_frames), num_frames]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _histogram(hsv: np.ndarray) -> np.ndarray:
    hs = cv2.calcHist([hsv], [0, 1], None, [16, 8], [0, 180, 0, 256]).ravel()
    v = cv2.calcHist([hsv], [2], None, [16], [0, 256]).ravel()
    return np.concatenate([hs / max(hs.sum(), 1.0), v / max(v.sum(), 1.0)]) / 2


def cut_scores(prev_hsv: np.ndarray, hsv: np.ndarray) -> tuple[float, float]:
    """(histogram distance in [0, 1], mean absolute HSV change in [0, 255]) between two uint8 HSV thumbnails."""
    hist = 1.0 - float(np.minimum(_histogram(prev_hsv), _histogram(hsv)).sum())
    d = np.abs(prev_hsv.astype(np.float32) - hsv.astype(np.float32))
    hue = np.minimum(d[..., 0], 180 - d[..., 0]) * (255 / 180)
    return hist, float((hue.mean() + d[..., 1].mean() + d[..., 2].mean()) / 3)


class CutDetector:
    """Online shot-cut detection: `feed(frame)` for every uint8 RGB frame in order; True when that frame starts a
    new shot (frame 0 never does). `cuts` lists the frames that start a shot after the first."""

    def __init__(self, fps: float = 25.0, hist_cut: float = HIST_CUT, content_cut: float = CONTENT_CUT,
                 min_shot_seconds: float = MIN_SHOT_SECONDS):
        self.hist_cut, self.content_cut = hist_cut, content_cut
        self.min_gap = max(1, int(round(min_shot_seconds * float(fps))))
        self.cuts: list[int] = []
        self._i, self._last, self._prev = 0, 0, None

    def feed(self, frame_rgb: np.ndarray) -> bool:
        hsv = cv2.cvtColor(np.ascontiguousarray(thumbnail(frame_rgb, THUMB, THUMB)), cv2.COLOR_RGB2HSV)
        cut = False
        if self._prev is not None and self._i - self._last >= self.min_gap:
            hist, content = cut_scores(self._prev, hsv)
            cut = hist >= self.hist_cut or content >= self.content_cut
        if cut:
            self.cuts.append(self._i)
            self._last = self._i
        self._prev, self._i = hsv, self._i + 1
        return cut


def detect_cuts(frames, fps: float = 25.0) -> tuple[list[int], int]:
    """The cuts of a frame stream (`CutDetector`) and its number of frames."""
    det, n = CutDetector(fps), 0
    for frame in frames:
        det.feed(frame)
        n += 1
    return det.cuts, n
