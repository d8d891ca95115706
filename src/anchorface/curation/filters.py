"""Segment validation (§3.3, step 4) and the per-segment quality score (App. B, Fig. 11).

- Identity distance: the largest distance, in the face-recognition embedding (`faces.identity`, dlib's ResNet; the
  paper uses ArcFace), from the segment's first frame to its other sampled frames.
- CLIP distance (only when CLIP weights are given): the largest cosine distance (1 - cos) between the CLIP image
  embeddings of the first frame's face crop and those of the sampled frames.
- Quality: the paper scores clips with HyperIQA, whose weights and ResNet-50 backbone (torchvision) are not available
  here, so the score is a classical no-reference measure, named for what it is: `laplacian_sharpness`, the variance
  of the Laplacian of the face crop's luma at a fixed size (higher = sharper; blur, heavy compression and upscaling
  lower it). The segment's score is the median over its sampled frames.

`SegmentScorer` accumulates these online, one sampled frame at a time, so a segment's frames are never held in
memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

QUALITY_NAME = "laplacian_sharpness"
QUALITY_SIZE = 256  # px: the face crop is resampled to this square size before the Laplacian


def face_crop(frame: np.ndarray, box, size: int) -> np.ndarray:
    """The paper-framed square crop (`faces.detect.crop_box`, App. B) of the face `box` at `size` px."""
    from anchorface.faces.detect import Box, crop, crop_box

    b = Box.from_array(box)
    return crop(frame, crop_box(b, frame.shape[:2]), size)


def laplacian_sharpness(crop_rgb: np.ndarray) -> float:
    """Variance of the Laplacian (3x3 kernel) of the luma of `crop_rgb` resampled to QUALITY_SIZE px."""
    import cv2

    img = crop_rgb
    if img.shape[:2] != (QUALITY_SIZE, QUALITY_SIZE):
        interp = cv2.INTER_AREA if img.shape[0] > QUALITY_SIZE else cv2.INTER_CUBIC
        img = cv2.resize(img, (QUALITY_SIZE, QUALITY_SIZE), interpolation=interp)
    gray = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


class ClipScorer:
    """CLIP image embeddings of face crops (`frozen.encoders.CLIPGlobalEncoder`, the paper's G), for the CLIP
    distance of §3.3."""

    def __init__(self, path: str, device: str = "cpu"):
        from anchorface.frozen.encoders import CLIPGlobalEncoder

        self.encoder = CLIPGlobalEncoder(path).to(device).eval()
        self.device = device
        self.size = 224

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        import torch

        from anchorface.frozen.codecs import to_pixels

        with torch.no_grad():
            e = self.encoder.encode_images(to_pixels(np.stack(crops)).to(self.device)).float().cpu().numpy()
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


@dataclass
class _Acc:
    first_id: np.ndarray | None = None
    first_clip: np.ndarray | None = None
    id_max: float = 0.0
    clip_max: float = 0.0
    frames: int = 0
    detected: int = 0
    quality: list = field(default_factory=list)


class SegmentScorer:
    """Online scores of one track: `add(frame, box)` on its sampled frames, the first one first; `result()`."""

    def __init__(self, identity, clip: ClipScorer | None = None):
        self.identity, self.clip = identity, clip
        self._a = _Acc()

    def add(self, frame: np.ndarray, box) -> None:
        a = self._a
        m = self.identity.measure([frame], [np.asarray(box, dtype=np.float64)])
        v = m.vectors[0]
        crop = face_crop(frame, box, QUALITY_SIZE)
        a.quality.append(laplacian_sharpness(crop))
        c = self.clip.embed([crop])[0] if self.clip is not None else None
        if a.first_id is None:
            a.first_id, a.first_clip = v, c
        else:
            a.id_max = max(a.id_max, float(np.linalg.norm(v.astype(np.float64) - a.first_id)))
            if c is not None:
                a.clip_max = max(a.clip_max, float(1.0 - np.dot(c, a.first_clip)))
        a.frames += 1
        a.detected += int(m.detected[0])

    def result(self) -> dict:
        a = self._a
        return {
            "identity_max_distance": round(a.id_max, 6),
            "identity_frames": a.frames,  # sampled frames measured (first frame included)
            "identity_detected": a.detected,  # of those, where dlib's detector found the face itself
            "clip_max_distance": round(a.clip_max, 6) if self.clip is not None else None,
            QUALITY_NAME: round(float(np.median(a.quality)), 4) if a.quality else None,
            "identity_embedding": [round(float(x), 6) for x in a.first_id] if a.first_id is not None else None,
        }
