"""Per-frame landmark signal L_t (§3.1), expressive-region loss weights (§4.1) and relative motion (supp. §1).

The paper conditions every frame on MediaPipe face-mesh landmarks of the driving frame (§3.1) and weights the
training loss by ``1 + λ_ex`` on "expressive landmark pixels" around the mouth and eyes (§4.1, App. D). Which
landmarks are expressive, and how they become a pixel mask, is not stated; here the sets come from MediaPipe's own
connection sets (eyes, irises, eyebrows, lips) and the mask is their rasterised outline at latent resolution.

Landmarks follow the project convention (docs/design.md): ``float32 [478, 3]``, MediaPipe's normalised
coordinates of the face crop (x, y in [0, 1] of its width/height; z in about the same units as x).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import cv2
import mediapipe as mp
import numpy as np
from mediapipe.python.solutions import face_mesh_connections as _conn
from skimage.transform import SimilarityTransform
from tqdm.auto import tqdm

from anchorface.errors import AnchorfaceError, NoFaceError
from anchorface.faces.native_logs import native_stderr_silenced, run_quietly

NUM_LANDMARKS = 478  # face mesh with refine_landmarks=True (468 mesh points + 2 x 5 iris points)
LANDMARK_DIM = NUM_LANDMARKS * 3

# Landmarks are always computed on face crops of at least this many pixels, so they do not depend on the model
# resolution (docs/design.md); `landmark_crop_size` is the one rule every caller uses.
LANDMARK_CROP = 256

# Face-mesh thresholds (MediaPipe's defaults, named here so they are visible).
MIN_DETECTION_CONFIDENCE = 0.5
MIN_TRACKING_CONFIDENCE = 0.5

# Weight-map rasterisation: draw at RASTER_UPSAMPLE x the latent size, then max-pool down, so that an iris or a
# closed eye (a few pixels at 256 px) still marks its latent pixel at 8x8 or 16x16.
RASTER_UPSAMPLE = 4
EYEBROW_THICKNESS = 0.01  # eyebrow polyline thickness, fraction of the crop side (~2.5 px at 256 px)


# --------------------------------------------------------------------------------------------------------------
# Expressive regions, derived from MediaPipe's connection sets
# --------------------------------------------------------------------------------------------------------------

def _chains(edges: Iterable[tuple[int, int]]) -> list[tuple[list[int], bool]]:
    """Split an edge set into ordered vertex chains: [(vertices in order, closed)], one per connected component.

    MediaPipe's region sets are unions of simple paths (eyebrows: upper and lower edge) and simple cycles (eye,
    iris, outer and inner lip contours), which is all this handles.
    """
    adj: dict[int, list[int]] = {}
    for a, b in edges:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    if any(len(n) > 2 for n in adj.values()):
        raise ValueError("connection set is not a union of simple paths and cycles")
    seen: set[int] = set()
    chains = []
    # Start paths at an end point (degree 1) so they are walked end to end; cycles anywhere.
    for start in sorted(adj, key=lambda v: (len(adj[v]), v)):
        if start in seen:
            continue
        chain, prev, cur = [start], None, start
        seen.add(start)
        while True:
            nxt = [v for v in adj[cur] if v != prev and v not in seen]
            if not nxt:
                break
            prev, cur = cur, nxt[0]
            chain.append(cur)
            seen.add(cur)
        closed = len(adj[start]) == 2 and start in adj[cur] and len(chain) > 2
        chains.append((chain, closed))
    return chains


_CONNECTION_SETS = {
    "left_eye": _conn.FACEMESH_LEFT_EYE,
    "right_eye": _conn.FACEMESH_RIGHT_EYE,
    "left_iris": _conn.FACEMESH_LEFT_IRIS,
    "right_iris": _conn.FACEMESH_RIGHT_IRIS,
    "left_eyebrow": _conn.FACEMESH_LEFT_EYEBROW,
    "right_eyebrow": _conn.FACEMESH_RIGHT_EYEBROW,
    "lips": _conn.FACEMESH_LIPS,
}
_REGION_CHAINS = {name: _chains(edges) for name, edges in _CONNECTION_SETS.items()}

EXPRESSIVE_REGIONS: dict[str, np.ndarray] = {
    name: np.unique(np.fromiter((v for e in edges for v in e), dtype=np.int64))
    for name, edges in _CONNECTION_SETS.items()
}
EXPRESSIVE_INDICES: np.ndarray = np.unique(np.concatenate(list(EXPRESSIVE_REGIONS.values())))

# Landmark 0 is the upper-lip midpoint of the outer contour, 13 that of the inner one (MediaPipe's canonical mesh).
_OUTER_LIP = next(chain for chain, closed in _REGION_CHAINS["lips"] if closed and 0 in chain)


# --------------------------------------------------------------------------------------------------------------
# Detection and tracking
# --------------------------------------------------------------------------------------------------------------

def landmark_crop_size(resolution: int | None = None) -> int:
    """Side in pixels of the face crop MediaPipe sees: the model resolution, but at least ``LANDMARK_CROP``."""
    return max(LANDMARK_CROP, int(resolution or 0))


def check_frame(frame: np.ndarray) -> np.ndarray:
    """`frame` as a contiguous RGB uint8 [H, W, 3] array; AnchorfaceError for anything else."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise AnchorfaceError(f"expected an RGB uint8 frame [H, W, 3], got {desc}")
    return np.ascontiguousarray(frame)


class LandmarkDetector:
    """MediaPipe face mesh, one face, 478 XYZ points (§3.1, §4.2).

    ``static_image_mode=True`` runs the face detector on every call (photos); ``False`` tracks the face from the
    previous frame's mesh and re-detects only when tracking is lost (videos; faster and temporally steadier).
    """

    def __init__(self, static_image_mode: bool = False):
        self.static_image_mode = static_image_mode
        with native_stderr_silenced():  # TFLite announces its CPU delegate on fd 2
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=static_image_mode,
                max_num_faces=1,
                refine_landmarks=True,
                min_detection_confidence=MIN_DETECTION_CONFIDENCE,
                min_tracking_confidence=MIN_TRACKING_CONFIDENCE,
            )

    def detect(self, frame_rgb: np.ndarray) -> np.ndarray | None:
        """Landmarks ``float32 [478, 3]`` of the face in an RGB uint8 frame, or None when there is none."""
        result = run_quietly(self._mesh, check_frame(frame_rgb))
        if not result.multi_face_landmarks:
            return None
        points = result.multi_face_landmarks[0].landmark
        return np.array([(p.x, p.y, p.z) for p in points], dtype=np.float32)

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> "LandmarkDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def fill_from_nearest(values: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Replace ``values[i]`` where ``found[i]`` is False by the value at the nearest index where it is True
    (ties go to the earlier frame). ``values`` [N, ...]; at least one entry must be found."""
    found = np.asarray(found, dtype=bool)
    idx = np.flatnonzero(found)
    if idx.size == 0:
        raise ValueError("no entry to fill from")
    # For each position, the nearest found index: compare the found neighbours on the left and the right.
    pos = np.arange(len(found))
    right = np.clip(np.searchsorted(idx, pos), 0, idx.size - 1)
    left = np.clip(right - 1, 0, idx.size - 1)
    nearest = np.where(np.abs(idx[left] - pos) <= np.abs(idx[right] - pos), idx[left], idx[right])
    return values[nearest]


def fill_per_shot(values: np.ndarray, found: np.ndarray, cuts=()) -> np.ndarray:
    """`fill_from_nearest` within each shot (shots start at `cuts`), so a frame without a face is never filled from
    another shot; a shot without any found frame is filled from the whole video."""
    out = fill_from_nearest(values, found)
    edges = [0, *sorted(int(c) for c in cuts), len(found)]
    for a, b in zip(edges[:-1], edges[1:]):
        if b > a and found[a:b].any() and not found[a:b].all():
            out[a:b] = fill_from_nearest(values[a:b], found[a:b])
    return out


def track_landmarks(frames: Iterable[np.ndarray], progress: bool = True,
                    new_shot: Callable[[int], bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks of every frame of a video (§3.1: L_t for each driving frame), streamed in tracking mode.

    Returns ``(lmk [N, 478, 3] float32, found [N] bool)``; frames without a face are filled from the nearest frame
    with one (in the same shot). `new_shot(i)`, asked before frame i is tracked: True restarts the tracker there
    (a shot cut: the face is found afresh instead of being followed from the previous shot). Raises NoFaceError
    when no frame has a face.
    """
    out, found, cuts = [], [], []
    det = LandmarkDetector(static_image_mode=False)
    try:
        for i, frame in enumerate(tqdm(frames, desc="landmarks", unit="frame", disable=not progress)):
            if i and new_shot is not None and new_shot(i):
                det.close()
                det = LandmarkDetector(static_image_mode=False)
                cuts.append(i)
            lmk = det.detect(frame)
            found.append(lmk is not None)
            out.append(lmk if lmk is not None else np.zeros((NUM_LANDMARKS, 3), np.float32))
    finally:
        det.close()
    if not out:
        raise AnchorfaceError("the video has no frames")
    found_arr = np.array(found, dtype=bool)
    if not found_arr.any():
        raise NoFaceError(f"no face found in any of the {len(out)} video frames")
    return fill_per_shot(np.stack(out), found_arr, cuts), found_arr


# --------------------------------------------------------------------------------------------------------------
# The conditioning vector L_t
# --------------------------------------------------------------------------------------------------------------

def landmark_vector(lmk):
    """``[..., 478, 3] -> [..., 1434]``: (x, y) -> 2(x, y) - 1 and z -> 2z, flattened (docs/design.md).

    Accepts numpy arrays or torch tensors and returns the same kind. Absolute crop coordinates are kept: head
    translation and scale inside the fixed crop are part of the motion the model reproduces.
    """
    if tuple(lmk.shape[-2:]) != (NUM_LANDMARKS, 3):
        raise ValueError(f"expected landmarks [..., {NUM_LANDMARKS}, 3], got {tuple(lmk.shape)}")
    if isinstance(lmk, np.ndarray):
        offset = np.array([1.0, 1.0, 0.0], dtype=lmk.dtype if lmk.dtype.kind == "f" else np.float32)
    else:  # torch.Tensor
        offset = lmk.new_tensor([1.0, 1.0, 0.0])
    v = 2 * lmk - offset
    return v.reshape(*lmk.shape[:-2], LANDMARK_DIM)


# --------------------------------------------------------------------------------------------------------------
# Expressive weight maps (§4.1)
# --------------------------------------------------------------------------------------------------------------

_SHIFT = 4  # cv2 fixed-point fractional bits: sub-pixel vertex positions


def _to_fixed(lmk_xy: np.ndarray, res: int, idx: list[int]) -> np.ndarray:
    # Normalised coordinate u covers [0, 1] = [0, res) pixels; pixel i has its centre at i + 0.5 -> cv2 coord i.
    pts = lmk_xy[idx] * res - 0.5
    return np.round(pts * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def expressive_mask(lmk: np.ndarray, size: int) -> np.ndarray:
    """Boolean ``[size, size]`` mask of the expressive regions (eyes, irises, eyebrows, outer lips) of one face.

    Drawn at ``RASTER_UPSAMPLE * size`` and max-pooled, so a region touching a latent pixel marks it.
    """
    lmk = np.asarray(lmk, dtype=np.float64)
    if lmk.shape != (NUM_LANDMARKS, 3):
        raise ValueError(f"expected landmarks [{NUM_LANDMARKS}, 3], got {lmk.shape}")
    res = size * RASTER_UPSAMPLE
    canvas = np.zeros((res, res), np.uint8)
    xy = lmk[:, :2]
    polygons = [_to_fixed(xy, res, chain) for name in ("left_eye", "right_eye", "left_iris", "right_iris")
                for chain, _ in _REGION_CHAINS[name]]
    polygons.append(_to_fixed(xy, res, _OUTER_LIP))
    for poly in polygons:  # one call each: a single call uses the even-odd rule, so the iris would cut the eye
        cv2.fillPoly(canvas, [poly], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    # The outline too: fillPoly alone drops polygons thinner than a pixel (a closed eye).
    cv2.polylines(canvas, polygons, True, 1, thickness=1, lineType=cv2.LINE_8, shift=_SHIFT)
    # Eyebrows: MediaPipe gives each as two paths (upper and lower edge); fill the band between them and draw
    # both edges as thick polylines so a thin brow still shows.
    thickness = max(1, int(round(EYEBROW_THICKNESS * res)))
    for name in ("left_eyebrow", "right_eyebrow"):
        (a, _), (b, _) = _REGION_CHAINS[name]
        pa, pb = _to_fixed(xy, res, a), _to_fixed(xy, res, b)
        if np.abs(pa[0] - pb[0]).sum() > np.abs(pa[0] - pb[-1]).sum():
            pb = pb[::-1]  # walk both edges in the same direction
        cv2.fillPoly(canvas, [np.concatenate([pa, pb[::-1]])], 1, lineType=cv2.LINE_8, shift=_SHIFT)
        cv2.polylines(canvas, [pa, pb], False, 1, thickness=thickness, lineType=cv2.LINE_8, shift=_SHIFT)
    f = RASTER_UPSAMPLE
    return canvas.reshape(size, f, size, f).max(axis=(1, 3)).astype(bool)


def expressive_weight_map(lmk: np.ndarray, size: int, lambda_ex: float = 1.0) -> np.ndarray:
    """Loss weights ``float32 [size, size]`` at latent resolution: ``1 + λ_ex`` on expressive pixels, 1 elsewhere
    (§4.1, App. D: λ_ex = 1)."""
    return np.where(expressive_mask(lmk, size), 1.0 + lambda_ex, 1.0).astype(np.float32)


def expressive_weight_maps(lmk: np.ndarray, size: int, lambda_ex: float = 1.0) -> np.ndarray:
    """Batched ``expressive_weight_map``: ``[N, 478, 3] -> float32 [N, size, size]``."""
    lmk = np.asarray(lmk)
    if lmk.ndim != 3:
        raise ValueError(f"expected landmarks [N, {NUM_LANDMARKS}, 3], got {lmk.shape}")
    out = np.empty((len(lmk), size, size), np.float32)
    for i, l in enumerate(lmk):
        out[i] = expressive_weight_map(l, size, lambda_ex)
    return out


# --------------------------------------------------------------------------------------------------------------
# Relative motion (supplement §1, limitation: head shape leaks from the driving face)
# --------------------------------------------------------------------------------------------------------------

def similarity_to(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama) on x, y taking ``src`` [K, 3] onto ``dst`` [K, 3]:
    returns (scale s, rotation R [2, 2], translation t [2]) with dst_xy ≈ s R src_xy + t."""
    tf = SimilarityTransform.from_estimate(np.asarray(src[:, :2], np.float64), np.asarray(dst[:, :2], np.float64))
    if not tf:
        raise AnchorfaceError(f"cannot align landmarks: {tf}")
    linear = tf.params[:2, :2]
    s = float(np.sqrt(abs(np.linalg.det(linear))))
    return s, linear / s, tf.params[:2, 2].copy()


def relative_motion(driving: np.ndarray, source: np.ndarray, reference: int = 0) -> np.ndarray:
    """Driving motion re-targeted onto the source face: ``source + A (driving_t - driving_ref)``.

    The supplement (§1) names the driving face's head shape leaking into the result as a limitation and proposes
    adjusting landmarks by their differences to the source's; this is the "relative" mode of FOMM / LivePortrait.
    ``A`` is the similarity (Umeyama on x, y; z scaled by the same scale) that aligns the driving reference frame
    to the source, so displacements are expressed in the source face's frame. At ``t = reference`` the output is
    exactly ``source``. Shapes: driving [N, 478, 3], source [478, 3] -> [N, 478, 3] float32.
    """
    driving = np.asarray(driving, np.float64)
    source = np.asarray(source, np.float64)
    if driving.ndim != 3 or driving.shape[1:] != (NUM_LANDMARKS, 3) or source.shape != (NUM_LANDMARKS, 3):
        raise ValueError(f"expected driving [N, {NUM_LANDMARKS}, 3] and source [{NUM_LANDMARKS}, 3], "
                         f"got {driving.shape} and {source.shape}")
    if not -len(driving) <= reference < len(driving):
        raise ValueError(f"reference frame {reference} is outside the {len(driving)} driving frames")
    ref = driving[reference]
    s, rot, _ = similarity_to(ref, source)
    linear = np.zeros((3, 3))
    linear[:2, :2] = s * rot
    linear[2, 2] = s
    return (source + (driving - ref) @ linear.T).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# Landmark images and face masks (DiffusionAct, paper 003: the landmark condition y_t and the background loss)
# --------------------------------------------------------------------------------------------------------------

# Channels of `landmark_image`: the face outline with brows and nose | eyes and lips | the irises (where the paper
# adds a gaze point from a gaze network, supp. B, MediaPipe's iris points carry the gaze).
LANDMARK_IMAGE_SETS = (
    (_conn.FACEMESH_FACE_OVAL, _conn.FACEMESH_LEFT_EYEBROW, _conn.FACEMESH_RIGHT_EYEBROW, _conn.FACEMESH_NOSE),
    (_conn.FACEMESH_LEFT_EYE, _conn.FACEMESH_RIGHT_EYE, _conn.FACEMESH_LIPS),
    (_conn.FACEMESH_LEFT_IRIS, _conn.FACEMESH_RIGHT_IRIS),
)
_FACE_OVAL = next(chain for chain, closed in _chains(_conn.FACEMESH_FACE_OVAL) if closed)


def landmark_image(lmk: np.ndarray, size: int) -> np.ndarray:
    """float32 ``[3, size, size]`` in [0, 1]: the face mesh's connection sets drawn as lines, one channel per group
    of `LANDMARK_IMAGE_SETS` (irises filled). Drawn at ``RASTER_UPSAMPLE * size`` and area-averaged down."""
    lmk = np.asarray(lmk, dtype=np.float64)
    if lmk.shape != (NUM_LANDMARKS, 3):
        raise ValueError(f"expected landmarks [{NUM_LANDMARKS}, 3], got {lmk.shape}")
    res = size * RASTER_UPSAMPLE
    out = np.zeros((len(LANDMARK_IMAGE_SETS), size, size), np.float32)
    xy = lmk[:, :2]
    thickness = max(1, RASTER_UPSAMPLE // 2)
    for c, sets in enumerate(LANDMARK_IMAGE_SETS):
        canvas = np.zeros((res, res), np.uint8)
        for edges in sets:
            for a, b in edges:
                pa, pb = _to_fixed(xy, res, [a, b]).reshape(2, 2)
                cv2.line(canvas, tuple(int(v) for v in pa), tuple(int(v) for v in pb), 255, thickness,
                         cv2.LINE_AA, shift=_SHIFT)
            if sets is LANDMARK_IMAGE_SETS[2]:
                for chain, _ in _chains(edges):
                    cv2.fillPoly(canvas, [_to_fixed(xy, res, chain)], 255, cv2.LINE_AA, shift=_SHIFT)
        out[c] = canvas.reshape(size, RASTER_UPSAMPLE, size, RASTER_UPSAMPLE).mean(axis=(1, 3)) / 255.0
    return out


def face_mask(lmk: np.ndarray, size: int) -> np.ndarray:
    """float32 ``[size, size]``: 1 inside the face oval of MediaPipe's mesh (the face area), 0 outside (the
    background and hair that DiffusionAct's background loss keeps; the paper uses a face-parsing network)."""
    lmk = np.asarray(lmk, dtype=np.float64)
    if lmk.shape != (NUM_LANDMARKS, 3):
        raise ValueError(f"expected landmarks [{NUM_LANDMARKS}, 3], got {lmk.shape}")
    res = size * RASTER_UPSAMPLE
    canvas = np.zeros((res, res), np.uint8)
    cv2.fillPoly(canvas, [_to_fixed(lmk[:, :2], res, _FACE_OVAL)], 255, cv2.LINE_AA, shift=_SHIFT)
    return canvas.reshape(size, RASTER_UPSAMPLE, size, RASTER_UPSAMPLE).mean(axis=(1, 3)).astype(np.float32) / 255.0
