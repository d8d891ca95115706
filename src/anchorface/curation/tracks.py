"""Stable single-face tracks (§3.3, step 3): "stable detections larger than 400 pixels in segments longer than
2 seconds".

`Tracker` is fed, frame by frame, the face boxes MediaPipe found (`faces.detect.FaceDetector`) and whether the frame
starts a new shot (`curation.scenes`). It follows one face and closes the track

- at a shot cut (the track ends on the last frame of the old shot),
- when the face is lost (no face at least `min_face` px wide for more than `max_gap` frames; shorter gaps are
  filled by linear interpolation),
- at a jump of the box (centre moving more than `jump` box widths, or width changing by more than the factor
  `scale_jump`, from one detection to the next): a new track starts on the frame of the jump,
- with `multiple="reject"`, on any frame with more than one face (see `significant_faces`); with
  `multiple="largest"` the largest face is taken and followed.

Each closed track has its frames [start, end), one box per frame, and why it ended. Whether it is long enough is
decided later, with the other checks (`curation.pipeline`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MULTIPLE = ("largest", "reject")
OTHER_FACE_RATIO = 0.5  # a second face counts when it is at least this fraction of the tracked size threshold
END_CUT, END_LOST, END_JUMP, END_MULTIPLE, END_VIDEO = "shot cut", "face lost", "box jump", "several faces", \
    "end of video"


@dataclass
class Track:
    start: int  # first frame
    end: int  # one past the last frame
    boxes: np.ndarray  # [end - start, 4] (x0, y0, x1, y1), detections with gaps interpolated
    detected: np.ndarray  # [end - start] bool: a detection (not interpolated) on this frame
    end_reason: str

    @property
    def num_frames(self) -> int:
        return self.end - self.start


@dataclass
class _Open:
    start: int
    frames: list = field(default_factory=list)  # frame indices with a detection
    boxes: list = field(default_factory=list)


def _width(b) -> float:
    return float(b[2] - b[0])


def _center(b) -> np.ndarray:
    return np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2], dtype=np.float64)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class Tracker:
    """Online single-face tracker (module doc). `update(i, boxes, cut)` for frames 0, 1, ... in order returns the
    tracks closed by that frame; `finish()` closes the last. `started` is True after an `update` that opened a new
    track on frame i (its first box is `current_box`)."""

    def __init__(self, min_face: float, multiple: str = "largest", max_gap: int = 2, jump: float = 0.3,
                 scale_jump: float = 1.3):
        if multiple not in MULTIPLE:
            raise ValueError(f"multiple must be one of {MULTIPLE}, got {multiple!r}")
        self.min_face, self.multiple, self.max_gap = float(min_face), multiple, int(max_gap)
        self.jump, self.scale_jump = float(jump), float(scale_jump)
        self._open: _Open | None = None
        self._last = -1
        self.started = False

    @property
    def current_box(self) -> np.ndarray | None:
        return None if self._open is None else np.asarray(self._open.boxes[-1])

    @property
    def current_frame(self) -> int | None:
        """The last frame with a detection of the open track (None when no track is open)."""
        return None if self._open is None else int(self._open.frames[-1])

    @property
    def open_start(self) -> int | None:
        return None if self._open is None else self._open.start

    def significant_faces(self, boxes) -> list:
        """Faces that count for the several-faces rule: at least OTHER_FACE_RATIO x min_face wide (background
        faces far below the size threshold do not)."""
        return [b for b in boxes if _width(b) >= OTHER_FACE_RATIO * self.min_face]

    def _close(self, reason: str) -> Track:
        o = self._open
        self._open = None
        frames = np.asarray(o.frames)
        boxes = np.asarray(o.boxes, dtype=np.float64)
        t = np.arange(o.start, frames[-1] + 1)
        filled = np.stack([np.interp(t, frames, boxes[:, k]) for k in range(4)], axis=1)
        detected = np.isin(t, frames)
        return Track(int(o.start), int(frames[-1] + 1), filled, detected, reason)

    def update(self, i: int, boxes, cut: bool = False) -> list[Track]:
        """Feed frame i's face boxes (any order; x0, y0, x1, y1 in pixels) and whether it starts a new shot."""
        if i != self._last + 1:
            raise ValueError(f"frames must be fed in order: got {i} after {self._last}")
        self._last = i
        self.started = False
        closed: list[Track] = []
        boxes = [np.asarray(b, dtype=np.float64) for b in boxes]
        if cut and self._open is not None:
            closed.append(self._close(END_CUT))
        big = [b for b in boxes if _width(b) >= self.min_face]
        several = len(self.significant_faces(boxes)) > 1
        if several and self.multiple == "reject":
            if self._open is not None:
                closed.append(self._close(END_MULTIPLE))
            return closed
        if self._open is not None:
            prev = np.asarray(self._open.boxes[-1])
            match = max(big, key=lambda b: _iou(b, prev), default=None)
            if match is None:
                if i - self._open.frames[-1] > self.max_gap:
                    closed.append(self._close(END_LOST))
                else:
                    return closed  # a short gap: interpolated when the face comes back
            elif _iou(match, prev) == 0:  # a face, but elsewhere
                closed.append(self._close(END_JUMP))
            else:
                step = np.linalg.norm(_center(match) - _center(prev)) / _width(prev)
                ratio = _width(match) / _width(prev)
                if step > self.jump or not (1 / self.scale_jump <= ratio <= self.scale_jump):
                    closed.append(self._close(END_JUMP))
                else:
                    self._open.frames.append(i)
                    self._open.boxes.append(match)
                    return closed
        if self._open is None and big:
            largest = max(big, key=_width)
            self._open = _Open(start=i, frames=[i], boxes=[largest])
            self.started = True
        return closed

    def finish(self) -> list[Track]:
        return [self._close(END_VIDEO)] if self._open is not None else []
