"""Face-recognition embedding: dlib's ResNet face-recognition model (128-d), for the identity distance of §3.3.

The paper measures the largest ArcFace distance from a segment's first frame to the rest (§3.3, step 4). ArcFace
weights cannot be fetched here; dlib's ResNet model (a 29-layer ResNet trained with a metric loss, 99.38% on LFW)
ships inside the `face-recognition-models` package and needs no download, so this is the project's identity
embedding. Its metric is the Euclidean distance; dlib's own same-person threshold is 0.6.

    emb = IdentityEmbedder()
    v = emb.embed([img_a, img_b])          # [2, 128] float32
    distance(v[0], v[1])                    # < 0.6: probably the same person

Each image is one face: a face crop, or a photo/frame with a `boxes` entry giving the face's box. dlib's frontal
HOG detector looks for the face first (small faces are upsampled to `TARGET_FACE` px first); where it finds
nothing the known box (or, with no box, the whole image) is used. `measure` says which frames had a dlib detection.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anchorface.errors import AnchorfaceError

EMBEDDING_DIM = 128
SAME_PERSON = 0.6  # dlib's threshold on the Euclidean distance between two embeddings
TARGET_FACE = 160  # px: a face (known box, or the whole image without one) is rescaled to about this width
WHOLE_MIN, WHOLE_MAX = 320, 800  # px: the longer side of a whole image (no box) is brought into this range
CONTEXT = 0.6  # the region around a known box cut out for detection, in box widths on each side
CHIP_SIZE, CHIP_PADDING = 150, 0.25  # dlib's aligned chip, as the model was trained
_MODELS = ("shape_predictor_5_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat")


def _models_dir() -> Path:
    # find_spec does not run the package's __init__ (which needs pkg_resources); only the data files are used
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise AnchorfaceError("the face-recognition embedding needs the package face-recognition-models "
                              "(pip install face-recognition-models)")
    d = Path(list(spec.submodule_search_locations)[0]) / "models"
    missing = [m for m in _MODELS if not (d / m).is_file()]
    if missing:
        raise AnchorfaceError(f"face-recognition-models is incomplete: {d / missing[0]} is missing")
    return d


def _dlib():
    try:
        import dlib
    except ImportError:
        raise AnchorfaceError("the face-recognition embedding needs the package dlib-bin (pip install dlib-bin)"
                              ) from None
    return dlib


@dataclass
class IdentityMeasurement:
    vectors: np.ndarray  # [N, 128] float32
    detected: np.ndarray  # [N] bool: dlib's detector found the face (else the known box / whole image was used)

    @property
    def measured(self) -> int:
        return len(self.vectors)


def distance(a, b) -> np.ndarray | float:
    """Euclidean distance between embeddings `[..., 128]` (broadcast); a float for two single vectors."""
    d = np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1)
    return float(d) if np.ndim(d) == 0 else d


class IdentityEmbedder:
    """dlib's 128-d face-recognition embedding of face images (module doc). Thread-compatible, not thread-safe:
    one per worker."""

    dim = EMBEDDING_DIM
    name = "dlib ResNet face recognition (128-d)"

    def __init__(self, jitters: int = 0):
        dlib = _dlib()
        d = _models_dir()
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(d / _MODELS[0]))
        self._net = dlib.face_recognition_model_v1(str(d / _MODELS[1]))
        self.jitters = int(jitters)

    def _region(self, image: np.ndarray, box) -> tuple[np.ndarray, tuple[float, float, float, float]]:
        """The image region to search and the face's box in it: around a known box, rescaled so the face is
        ~TARGET_FACE px wide; without one, the whole image with its longer side brought into
        [WHOLE_MIN, WHOLE_MAX] px."""
        import cv2

        h, w = image.shape[:2]
        if box is None:
            x0, y0, x1, y1 = 0.0, 0.0, float(w), float(h)
            rx0, ry0, rx1, ry1 = 0, 0, w, h
            scale = min(max(WHOLE_MIN / max(h, w), 1.0), WHOLE_MAX / max(h, w))
        else:
            x0, y0, x1, y1 = (float(v) for v in box)
            if not (x1 > x0 and y1 > y0):
                raise ValueError(f"empty face box {box}")
            m = CONTEXT * (x1 - x0)
            rx0, ry0 = max(int(np.floor(x0 - m)), 0), max(int(np.floor(y0 - m)), 0)
            rx1, ry1 = min(int(np.ceil(x1 + m)), w), min(int(np.ceil(y1 + m)), h)
            if rx1 <= rx0 or ry1 <= ry0:
                raise ValueError(f"face box {box} lies outside the {w}x{h} image")
            scale = TARGET_FACE / (x1 - x0)
        region = image[ry0:ry1, rx0:rx1]
        size = (max(1, round(region.shape[1] * scale)), max(1, round(region.shape[0] * scale)))
        if size != (region.shape[1], region.shape[0]):
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
            region = cv2.resize(region, size, interpolation=interp)
        sx, sy = size[0] / (rx1 - rx0), size[1] / (ry1 - ry0)
        return np.ascontiguousarray(region), ((x0 - rx0) * sx, (y0 - ry0) * sy, (x1 - rx0) * sx, (y1 - ry0) * sy)

    def _chip(self, image: np.ndarray, box) -> tuple[np.ndarray, bool]:
        dlib = self._dlib
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise AnchorfaceError(f"expected RGB uint8 images [H, W, 3], got {desc}")
        region, (x0, y0, x1, y1) = self._region(image, box)
        dets = list(self._detector(region, 0))
        if not dets and max(region.shape[:2]) <= WHOLE_MAX:  # small faces: upsample once (boxes come back in
            dets = list(self._detector(region, 1))  # the region's coordinates)

        def overlap(r) -> float:  # intersection over the smaller of the detection and the known box
            ix = max(0.0, min(r.right(), x1) - max(r.left(), x0))
            iy = max(0.0, min(r.bottom(), y1) - max(r.top(), y0))
            return ix * iy / max(min(r.area(), (x1 - x0) * (y1 - y0)), 1.0)

        dets = [r for r in dets if overlap(r) > 0.3]  # the known face, not another one in its context
        if dets:  # the detection on the known face (the largest one in a whole image)
            rect, found = max(dets, key=lambda r: (round(overlap(r), 1), r.area())), True
        else:
            rect, found = dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1))), False
        shape = self._shape(region, rect)
        return dlib.get_face_chip(region, shape, size=CHIP_SIZE, padding=CHIP_PADDING), found

    def measure(self, images, boxes=None) -> IdentityMeasurement:
        """Embeddings of `images` (uint8 RGB [H, W, 3] each, or a [N, H, W, 3] array), each a face crop, or with
        `boxes[i]` = (x0, y0, x1, y1) the face's box in image i (None entries allowed)."""
        images = list(images)
        boxes = [None] * len(images) if boxes is None else list(boxes)
        if len(boxes) != len(images):
            raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
        if not images:
            return IdentityMeasurement(np.zeros((0, self.dim), np.float32), np.zeros(0, bool))
        chips, found = zip(*(self._chip(im, b) for im, b in zip(images, boxes)))
        vecs = self._net.compute_face_descriptor(list(chips), num_jitters=self.jitters) if self.jitters else \
            self._net.compute_face_descriptor(list(chips))
        return IdentityMeasurement(np.array([np.array(v) for v in vecs], np.float32), np.array(found, bool))

    def embed(self, images, boxes=None) -> np.ndarray:
        """`[N, 128]` float32 embeddings (see `measure`)."""
        return self.measure(images, boxes).vectors
