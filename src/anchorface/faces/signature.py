"""Photo signatures: does a source photo show the face a checkpoint was trained on?

A checkpoint made from stills (the demo's astronaut, `anchorface personalize`) records the signature of each still
it was trained on; `anchorface reenact` compares the source photo's with them and, when none matches, suggests
personalising (issue 14). The signature needs nothing beyond the core install (no face-recognition model): the
face cut out square around its MediaPipe landmarks (so the detector's box jitter and the framing of the photo do
not matter), 24 x 24 gray levels, zero-mean and unit-norm. Two signatures match when their dot product (a
correlation) is at least `SAME_PHOTO`.

It recognises a photo and its copies (resized, re-compressed, re-framed: correlation > 0.99), not a person: another
photo of the same face does not match. On the project's portraits, different photos correlate at most ~0.8.
"""

from __future__ import annotations

import cv2
import numpy as np

from anchorface.faces.detect import Box, crop

SIZE = 24  # the signature is SIZE x SIZE gray levels
SAME_PHOTO = 0.95  # correlation from which two signatures are the same photo
FACE_MARGIN = 1.1  # side of the square cut around the landmarks, in face heights


def photo_signature(image: np.ndarray, box: Box, lmk: np.ndarray) -> np.ndarray:
    """float32 [SIZE * SIZE] signature of the face in `image`, from its crop `box` and the MediaPipe landmarks
    `lmk` [478, 3] on that crop (normalised coordinates, as `detect.source_landmarks` returns them)."""
    xy = np.asarray(lmk, np.float64)[:, :2] * np.array([box.x1 - box.x0, box.y1 - box.y0]) + [box.x0, box.y0]
    cx, cy = xy.mean(0)
    side = FACE_MARGIN * max(float(np.ptp(xy[:, 1])), 1.0)
    face = crop(image, Box.square(cx, cy, side), 4 * SIZE)
    gray = cv2.resize(cv2.cvtColor(face, cv2.COLOR_RGB2GRAY).astype(np.float32), (SIZE, SIZE),
                      interpolation=cv2.INTER_AREA)
    gray -= gray.mean()
    return (gray / max(float(np.linalg.norm(gray)), 1e-6)).ravel()


def image_signature(image: np.ndarray, what: str = "the photo") -> np.ndarray:
    """`photo_signature` of a whole photo: its face box and landmarks found as `reenact` finds them (NoFaceError
    naming `what` without a face)."""
    from anchorface.errors import NoFaceError
    from anchorface.faces.detect import source_crop_box, source_landmarks

    box = source_crop_box(image, what)
    lmk = source_landmarks(image, box)
    if lmk is None:
        raise NoFaceError(f"no face landmarks found in {what}")
    return photo_signature(image, box, lmk)


def best_match(signature: np.ndarray, signatures) -> float:
    """The highest correlation of `signature` with any of `signatures` (arrays, or `encode`d strings); -1 for none."""
    sigs = [decode(x) if isinstance(x, str) else np.asarray(x, np.float32) for x in signatures]
    if not sigs:
        return -1.0
    return float((np.stack(sigs).reshape(len(sigs), SIZE * SIZE) @ np.asarray(signature, np.float32)).max())


def encode(signature: np.ndarray) -> str:
    """A signature as text for a JSON manifest: its float16 bytes (little-endian) in base64 (768 characters)."""
    import base64

    return base64.b64encode(np.asarray(signature, "<f2").tobytes()).decode("ascii")


def decode(text: str) -> np.ndarray:
    """`encode`'s inverse (ValueError for text that is not a signature)."""
    import base64
    import binascii

    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("not a photo signature") from None
    if len(raw) != 2 * SIZE * SIZE:
        raise ValueError(f"a photo signature has {SIZE * SIZE} values, got {len(raw) / 2:g}")
    return np.frombuffer(raw, "<f2").astype(np.float32)
