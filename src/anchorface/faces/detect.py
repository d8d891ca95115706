"""Face detection, paper-matched square crops, temporal box smoothing and paste-back (App. B).

The model sees square crops framed like its training data. App. B gives the framing of the curated clips: the face
box spans 0.45 ± 0.05 of the crop's width and 0.53 ± 0.07 of its height. ``crop_box`` reproduces that framing from
a MediaPipe face-detection box; ``track_crop_boxes`` does it for every frame of a video and smooths the result so
the crop does not jitter; ``paste_back`` puts a generated crop back into the full frame.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import mediapipe as mp
import numpy as np
from scipy.ndimage import gaussian_filter1d
from tqdm.auto import tqdm

from anchorface.errors import AnchorfaceError, NoFaceError, VideoError
from anchorface.io.images import resize
from anchorface.io.shots import CutDetector, shot_ranges
from anchorface.faces.landmarks import LandmarkDetector, check_frame, landmark_crop_size, track_landmarks
from anchorface.faces.native_logs import native_stderr_silenced, run_quietly

log = logging.getLogger(__name__)

# App. B: face box / crop size of the training clips (mean, std).
FACE_WIDTH_RATIO, FACE_WIDTH_STD = 0.45, 0.05
FACE_HEIGHT_RATIO, FACE_HEIGHT_STD = 0.53, 0.07
# Crop centre above the face-box centre, in face-box heights. Not in the paper (ours): MediaPipe's box runs from
# the brows to the chin and leaves out forehead and hair, and talking-head framing (e.g. the example driving clips
# of LivePortrait, where MediaPipe's box centre sits a median 0.135 box heights below the frame centre) keeps room
# above the face. With `crop_side`'s ratio (~0.477) this puts the box centre at ~0.56 of the crop height.
CROP_SHIFT_UP = 0.13
# When the crop leaves the frame, slide it back inside by at most this fraction of its side (less edge padding,
# framing still within a few percent of App. B's).
MAX_INSIDE_SHIFT = 0.05

MIN_DETECTION_CONFIDENCE = 0.5
SAME_FACE_OVERLAP = 0.5  # detections of the two BlazeFace models sharing this much of the smaller box are one face
# Human-face check for photos (ours; see `source_crop_box`): the short-range BlazeFace's confidence on the
# VERIFY_SIZE crop framed as the model sees it. On the project's test corpus human faces (photos, paintings, statues,
# a cartoon) score 0.89-0.96 there and the animal faces BlazeFace fires on (dogs, a monkey) 0.58-0.84.
VERIFY_SIZE = 256
FACE_SCORE_ON_CROP = 0.86

# Resampling when a warp gives the final pixels (crop at <= 1.5x shrink, paste-back), the same both ways. Bicubic
# keeps a native-scale round trip above 40 dB PSNR where bilinear blurs it to ~34 dB (two sub-pixel interpolations);
# Lanczos is ~1 dB better still but 3x slower.
RESAMPLE = cv2.INTER_CUBIC
SHRINK_AREA = 1.5  # shrinking by more than this: cut at native scale, then area-average (no aliasing)

# Video crops: zero-phase Gaussian smoothing of the crop centre over time (frames), constant (median) side.
CENTER_SIGMA = 5.0


@dataclass
class Box:
    """Axis-aligned box in float pixel coordinates (x0, y0) top-left, (x1, y1) bottom-right."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def as_array(self) -> np.ndarray:
        return np.array([self.x0, self.y0, self.x1, self.y1], dtype=np.float64)

    @classmethod
    def from_array(cls, a) -> "Box":
        x0, y0, x1, y1 = (float(v) for v in a)
        return cls(x0, y0, x1, y1)

    @classmethod
    def square(cls, cx: float, cy: float, side: float) -> "Box":
        return cls(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def iou(a: Box, b: Box) -> float:
    inter = Box(max(a.x0, b.x0), max(a.y0, b.y0), min(a.x1, b.x1), min(a.y1, b.y1)).area
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def overlap(a: Box, b: Box) -> float:
    """Intersection over the smaller box's area (1 when one box contains the other)."""
    inter = Box(max(a.x0, b.x0), max(a.y0, b.y0), min(a.x1, b.x1), min(a.y1, b.y1)).area
    small = min(a.area, b.area)
    return inter / small if small > 0 else 0.0


# --------------------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------------------

class FaceDetector:
    """MediaPipe face detection (BlazeFace): the full-range model (faces of any size in a photo) and the short-range
    one (close-ups, which the full-range model can miss).

    ``exhaustive=True`` runs both and adds the short-range detections that overlap no full-range one (every face of
    a photo); ``False`` runs the short-range model only when the full-range one finds nothing (fast, for video).
    """

    def __init__(self, min_confidence: float = MIN_DETECTION_CONFIDENCE, exhaustive: bool = True):
        self.exhaustive = exhaustive
        with native_stderr_silenced():  # TFLite announces its CPU delegate on fd 2
            self._full, self._short = (
                mp.solutions.face_detection.FaceDetection(model_selection=sel,
                                                          min_detection_confidence=min_confidence)
                for sel in (1, 0)
            )

    @staticmethod
    def _run(model, frame: np.ndarray) -> list[tuple[Box, float]]:
        h, w = frame.shape[:2]
        out = []
        for d in run_quietly(model, frame).detections or []:
            r = d.location_data.relative_bounding_box
            box = Box(r.xmin * w, r.ymin * h, (r.xmin + r.width) * w, (r.ymin + r.height) * h)
            out.append((box, float(d.score[0])))
        return out

    def detect(self, frame_rgb: np.ndarray) -> list[Box]:
        """Face boxes in pixel coordinates, largest first (empty when there is no face)."""
        frame = check_frame(frame_rgb)
        boxes = [b for b, _ in self._run(self._full, frame)]
        if self.exhaustive or not boxes:
            boxes += [b for b, _ in self._run(self._short, frame)
                      if all(overlap(b, other) < SAME_FACE_OVERLAP for other in boxes)]
        return sorted(boxes, key=lambda b: b.area, reverse=True)

    def crop_score(self, image: np.ndarray, face: Box) -> float:
        """Short-range BlazeFace's confidence on the ``VERIFY_SIZE`` crop of ``face`` framed by ``crop_box``
        (0 when it finds nothing there)."""
        img = crop(image, crop_box(face, image.shape[:2]), VERIFY_SIZE)
        return max((score for _, score in self._run(self._short, img)), default=0.0)

    def close(self) -> None:
        self._full.close()
        self._short.close()

    def __enter__(self) -> "FaceDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------------------
# Crop geometry (App. B)
# --------------------------------------------------------------------------------------------------------------

def crop_side(face: Box) -> float:
    """Side of the square crop whose face ratios best match App. B.

    MediaPipe's box is square, so the width ratio 0.45 and the height ratio 0.53 cannot both hold; the side is the
    maximum-likelihood one under App. B's Gaussians: with u = 1/side, minimise
    ((w u - 0.45) / 0.05)^2 + ((h u - 0.53) / 0.07)^2, which gives a ratio of ~0.477 for a square box.
    """
    a, b = 1 / FACE_WIDTH_STD**2, 1 / FACE_HEIGHT_STD**2
    w, h = face.width, face.height
    u = (a * w * FACE_WIDTH_RATIO + b * h * FACE_HEIGHT_RATIO) / (a * w * w + b * h * h)
    return 1 / u


def crop_box(face: Box, frame_hw: tuple[int, int]) -> Box:
    """Square crop around a detected face, framed as the paper's training data (App. B).

    Side from ``crop_side``; centred on the face box, raised by ``CROP_SHIFT_UP`` box heights; slid back towards
    the inside of the frame by at most ``MAX_INSIDE_SHIFT`` of the side where it sticks out.
    """
    if face.width <= 0 or face.height <= 0:
        raise ValueError(f"empty face box {face}")
    fh, fw = frame_hw
    side = crop_side(face)
    cx, cy = face.center
    cy -= CROP_SHIFT_UP * face.height
    limit = MAX_INSIDE_SHIFT * side
    if side <= fw:
        cx += np.clip(np.clip(cx, side / 2, fw - side / 2) - cx, -limit, limit)
    if side <= fh:
        cy += np.clip(np.clip(cy, side / 2, fh - side / 2) - cy, -limit, limit)
    return Box.square(float(cx), float(cy), side)


def source_crop_box(image: np.ndarray, what: str = "the source image") -> Box:
    """Crop box of the face in a photo. Raises NoFaceError when there is none; with several, takes the largest
    and warns.

    A detection counts as a face only when, framed as the model sees it, the short-range detector is confident
    (``FACE_SCORE_ON_CROP``): BlazeFace alone also fires on animal faces.
    """
    image = check_frame(image)
    with FaceDetector(exhaustive=True) as det:
        faces = [b for b in det.detect(image) if det.crop_score(image, b) >= FACE_SCORE_ON_CROP]
    if not faces:
        raise NoFaceError(f"no face found in {what}")
    if len(faces) > 1:
        msg = f"found {len(faces)} faces in {what}, using the largest"
        log.warning(msg)
        warnings.warn(msg, stacklevel=2)
    return crop_box(faces[0], image.shape[:2])


# --------------------------------------------------------------------------------------------------------------
# Video: per-frame boxes, gap filling, smoothing
# --------------------------------------------------------------------------------------------------------------

def _interpolate_missing(boxes: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Fill rows of ``boxes`` [N, 4] where ``found`` is False: linear between detections, constant at the ends."""
    idx = np.flatnonzero(found)
    t = np.arange(len(boxes))
    return np.stack([np.interp(t, idx, boxes[idx, k]) for k in range(boxes.shape[1])], axis=1)


def _interpolate_per_shot(boxes: np.ndarray, found: np.ndarray, cuts=()) -> np.ndarray:
    """`_interpolate_missing` within each shot (never across a cut); a shot without a detection takes the
    interpolation over the whole video."""
    out = _interpolate_missing(boxes, found)
    for a, b in shot_ranges(cuts, len(boxes)):
        if found[a:b].any():
            out[a:b] = _interpolate_missing(boxes[a:b], found[a:b])
    return out


def smooth_boxes(boxes: np.ndarray, center_sigma: float = CENTER_SIGMA, cuts=()) -> np.ndarray:
    """Temporally smoothed crop boxes ``[N, 4]`` (x0, y0, x1, y1), so the crop does not jitter.

    Centre: zero-phase Gaussian filter over time (``center_sigma`` frames; no lag, edges held). Size: the median
    over the clip, constant, so head scale changes stay in the landmarks as motion (docs/design.md). With `cuts`
    (frames that start a shot) each shot is smoothed on its own: the crop jumps at a cut instead of sliding.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
        raise ValueError(f"expected boxes [N, 4], got {boxes.shape}")
    if len(cuts):
        return np.concatenate([smooth_boxes(boxes[a:b], center_sigma) for a, b in shot_ranges(cuts, len(boxes))])
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    if center_sigma > 0:
        centers = gaussian_filter1d(centers, center_sigma, axis=0, mode="nearest")
    half = np.median(boxes[:, 2:] - boxes[:, :2], axis=0) / 2
    return np.concatenate([centers - half, centers + half], axis=1)


def detect_face_boxes(frames: Iterable[np.ndarray], progress: bool = True, every: int = 1,
                      shots: CutDetector | None = None) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Face boxes of a video, streamed: ``(boxes [N, 4], found [N] bool, frame_hw)``.

    Detects on every ``every``-th frame; the face followed is the largest one in the first frame with a face, then
    the detection overlapping the previous one most. Frames without a detection are filled by linear interpolation
    between their neighbours (held at the ends). With `shots` (fed every frame, `shots.cuts` then lists the cuts)
    the face is chosen afresh at each cut and gaps are filled within their shot. Raises NoFaceError when no frame
    has a face.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    faces, found, frame_hw = [], [], None
    prev: Box | None = None
    with FaceDetector(exhaustive=False) as det:
        for i, frame in enumerate(tqdm(frames, desc="face boxes", unit="frame", disable=not progress)):
            frame_hw = frame_hw or tuple(frame.shape[:2])
            if shots is not None and shots.feed(frame):
                prev = None  # a new shot: follow its largest face, not the previous shot's position
            boxes = det.detect(frame) if i % every == 0 else []
            if boxes:
                if prev is not None:
                    best = max(boxes, key=lambda b: iou(b, prev))
                    boxes = [best] if iou(best, prev) > 0 else boxes
                prev = boxes[0]
            faces.append(prev.as_array() if boxes else np.zeros(4))
            found.append(bool(boxes))
    if not faces:
        raise AnchorfaceError("the video has no frames")
    found_arr = np.array(found)
    if not found_arr.any():
        raise NoFaceError(f"no face found in any of the {len(faces)} video frames")
    cuts = shots.cuts if shots is not None else ()
    return _interpolate_per_shot(np.stack(faces), found_arr, cuts), found_arr, frame_hw


def track_crop_boxes(frames: Iterable[np.ndarray], progress: bool = True, every: int = 1,
                     center_sigma: float = CENTER_SIGMA, shots: CutDetector | None = None) -> np.ndarray:
    """Crop boxes ``[N, 4]`` for every frame of a video: detected (``detect_face_boxes``), framed (``crop_box``),
    smoothed over time (``smooth_boxes``), each shot on its own with `shots` (a fresh `CutDetector`)."""
    faces, _, frame_hw = detect_face_boxes(frames, progress, every, shots)
    crops = np.stack([crop_box(Box.from_array(b), frame_hw).as_array() for b in faces])
    return smooth_boxes(crops, center_sigma, shots.cuts if shots is not None else ())


@dataclass
class FaceTrack:
    """What `track_video` finds in a video of N frames."""

    boxes: np.ndarray  # [N, 4] crop boxes (App. B), smoothed over time
    landmarks: np.ndarray  # [N, 478, 3] MediaPipe landmarks of the crops, missing faces filled from the nearest
    found: np.ndarray  # [N] bool: a face was found in this frame's crop
    crops: np.ndarray | None = None  # [N, res, res, 3] uint8 crops at the model resolution (`keep_crops`)
    cuts: tuple[int, ...] = ()  # frames that start a new shot (`shots=True`), ascending


def track_video(video, resolution: int, fixed_box: Box | None = None, keep_crops: bool = False,
                progress: bool = True, shots: bool = False, fps: float = 25.0) -> FaceTrack:
    """The face of a video, as every consumer of a driving video needs it (§3.1, App. B): crop boxes
    (`track_crop_boxes`, or `fixed_box` for every frame), then MediaPipe landmarks in tracking mode
    (`landmarks.track_landmarks`) on the crops at `landmark_crop_size(resolution)` pixels. With `shots`, shot cuts
    are detected in the first pass (`io.shots.CutDetector` at `fps`) and the crop track, its smoothing and the
    landmark tracker restart at each cut (§5, multi-shot video).

    `video`: a path (decoded twice, streamed: only the boxes, landmarks and `keep_crops` crops stay in memory) or a
    sequence of uint8 RGB frames. NoFaceError when no frame has a face."""
    from anchorface.io.video import iter_frames

    def frames():
        return iter_frames(video) if isinstance(video, (str, Path)) else iter(video)

    detector = CutDetector(fps) if shots else None
    boxes = None if fixed_box is not None else track_crop_boxes(frames(), progress=progress, shots=detector)
    size, kept, used = landmark_crop_size(resolution), [], []

    def landmark_crops():
        for i, frame in enumerate(frames()):
            if boxes is not None and i >= len(boxes):
                break
            if boxes is None and detector is not None:
                detector.feed(frame)  # whole frames: the cuts are found in this pass
            box = fixed_box if boxes is None else Box.from_array(boxes[i])
            used.append(box.as_array())
            if keep_crops:
                kept.append(crop(frame, box, resolution))
            yield crop(frame, box, size)

    cut_set = detector.cuts if detector is not None else ()
    lmk, found = track_landmarks(landmark_crops(), progress=progress,
                                 new_shot=(lambda i: i in cut_set) if detector is not None else None)
    if boxes is not None and len(lmk) != len(boxes):
        raise VideoError(f"{video if isinstance(video, (str, Path)) else 'the video'}: the second decoding gave "
                         f"{len(lmk)} frames, the first {len(boxes)}")
    return FaceTrack(np.stack(used), lmk, found, np.stack(kept) if keep_crops else None, tuple(cut_set))


def source_landmarks(image: np.ndarray, box: Box, resolution: int | None = None) -> np.ndarray | None:
    """MediaPipe landmarks ``[478, 3]`` (static-image mode) of the face of a photo, on its crop `box` at
    `landmark_crop_size(resolution)` pixels, as `track_video` does for video frames; None when there is none."""
    with LandmarkDetector(static_image_mode=True) as det:
        return det.detect(crop(image, box, landmark_crop_size(resolution)))


# --------------------------------------------------------------------------------------------------------------
# Cropping and pasting back
# --------------------------------------------------------------------------------------------------------------

def _box_to_pixels(box: Box, out_w: int, out_h: int) -> np.ndarray:
    """2x3 affine taking output pixel indices of an ``out_w x out_h`` image to frame pixel indices, box <-> image
    (pixel centres at integer indices; the box's edges are the image's outer edges)."""
    sx, sy = box.width / out_w, box.height / out_h
    return np.array([[sx, 0, box.x0 + 0.5 * sx - 0.5], [0, sy, box.y0 + 0.5 * sy - 0.5]], dtype=np.float64)


def crop(frame: np.ndarray, box: Box, size: int) -> np.ndarray:
    """``uint8 [size, size, 3]`` crop of ``box`` (which may stick out of the frame: edge pixels are repeated).

    Shrinking by more than ``SHRINK_AREA``: the box is cut out at its native scale (bilinear; the area average that
    follows dominates) and area-averaged, so fine detail does not alias. Otherwise one ``RESAMPLE`` warp.
    """
    frame = check_frame(frame)
    if isinstance(box, np.ndarray):
        box = Box.from_array(box)
    if box.width <= 0 or box.height <= 0 or size < 1:
        raise ValueError(f"cannot crop box {box} to {size} px")
    native = int(np.ceil(max(box.width, box.height)))
    shrink = native > SHRINK_AREA * size
    work, interp = (native, cv2.INTER_LINEAR) if shrink else (size, RESAMPLE)
    out = cv2.warpAffine(frame, _box_to_pixels(box, work, work), (work, work), flags=interp | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    if shrink:
        out = resize(out, size)
    return out


def feather_mask(h: int, w: int, box: Box, x0: int, y0: int, feather: float) -> np.ndarray:
    """Alpha ``float32 [h, w]`` over frame pixels ``[y0:y0+h, x0:x0+w]``: 1 inside ``box``, ramping linearly to 0 at
    its border over ``feather`` x its side, 0 outside."""
    xs = np.arange(x0, x0 + w) + 0.5  # pixel centres in continuous coordinates
    ys = np.arange(y0, y0 + h) + 0.5
    dx = np.minimum(xs - box.x0, box.x1 - xs)
    dy = np.minimum(ys - box.y0, box.y1 - ys)
    ramp = feather * min(box.width, box.height)
    if ramp <= 0:
        ax, ay = (dx > 0).astype(np.float32), (dy > 0).astype(np.float32)
    else:
        ax, ay = np.clip(dx / ramp, 0, 1), np.clip(dy / ramp, 0, 1)
    return np.minimum(ay[:, None], ax[None, :]).astype(np.float32)


def paste_back(frame: np.ndarray, crop_img: np.ndarray, box: Box, feather: float = 0.1) -> np.ndarray:
    """The frame with ``crop_img`` resized into ``box`` and blended through a feathered mask (clipped to the frame).

    The inverse of ``crop``: an unmodified crop pasted back reproduces the frame inside the box up to resampling.
    """
    frame = check_frame(frame)
    crop_img = check_frame(crop_img)
    if isinstance(box, np.ndarray):
        box = Box.from_array(box)
    fh, fw = frame.shape[:2]
    ix0, iy0 = max(int(np.floor(box.x0)), 0), max(int(np.floor(box.y0)), 0)
    ix1, iy1 = min(int(np.ceil(box.x1)), fw), min(int(np.ceil(box.y1)), fh)
    if ix1 <= ix0 or iy1 <= iy0:
        return frame.copy()
    if box.width * SHRINK_AREA < crop_img.shape[1]:  # a crop much larger than the box: area-average it down first
        size = (max(1, int(round(box.width))), max(1, int(round(box.height))))
        crop_img = resize(crop_img, size)
    # Region pixel -> crop pixel: the inverse of crop's map, moved to the region's origin.
    m = cv2.invertAffineTransform(_box_to_pixels(box, crop_img.shape[1], crop_img.shape[0]))
    m[:, 2] += m[:, :2] @ np.array([ix0, iy0], dtype=np.float64)
    region = cv2.warpAffine(crop_img, m, (ix1 - ix0, iy1 - iy0), flags=RESAMPLE | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_REPLICATE)
    alpha = feather_mask(iy1 - iy0, ix1 - ix0, box, ix0, iy0, feather)[..., None]
    out = frame.copy()
    old = out[iy0:iy1, ix0:ix1].astype(np.float32)
    out[iy0:iy1, ix0:ix1] = np.clip(np.rint(alpha * region + (1 - alpha) * old), 0, 255).astype(np.uint8)
    return out
