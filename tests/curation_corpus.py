"""A small raw-video folder with known cuts, built from ../shared/data/faces for the curation tests and benchmark."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

FACES = Path(__file__).resolve().parents[2] / "shared/data/faces"
SIZE = 256  # px: every clip is downscaled to SIZE x SIZE (faces ~100 px wide)
FPS = 25
# cuts.mp4: (source clip, frames taken); the shots start at frames 0, 40, 85, 125 and the last one is too short
SHOTS = [("d12", 40), ("d3", 45), ("d19", 40), ("d20", 15)]
CUTS = [40, 85, 125]
NUM_FRAMES = sum(n for _, n in SHOTS)


def _frames(name: str, n: int, size: int = SIZE) -> list[np.ndarray]:
    from anchorface.io.video import iter_frames

    return [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
            for f in iter_frames(FACES / "driving" / f"{name}.mp4", max_frames=n)]


def _write(path: Path, frames) -> None:
    from anchorface.io.video import VideoWriter

    with VideoWriter(path, FPS, preset="veryfast") as w:
        for f in frames:
            w.write(f)


def build_raw(raw: Path) -> Path:
    """RAW folder: cuts.mp4 (4 shots), two_faces.mp4 (two clips side by side), animal.mp4 (a still of an animal
    photo, no human face), lowres.mp4 (128 px), corrupt.mp4 (a real header, garbage after), notes.mp4 (text)."""
    from anchorface.io.images import load_image

    raw.mkdir(parents=True, exist_ok=True)
    _write(raw / "cuts.mp4", [f for name, n in SHOTS for f in _frames(name, n)])
    left, right = _frames("d11", 40), _frames("d18", 40)
    _write(raw / "sub" / "two_faces.mp4", [np.concatenate([a, b], axis=1) for a, b in zip(left, right)])
    animal = cv2.resize(load_image(FACES / "source" / "s22.jpg"), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    _write(raw / "animal.mp4", [animal] * 30)
    _write(raw / "lowres.mp4", _frames("d0", 30, size=128))
    data = (FACES / "driving" / "d0.mp4").read_bytes()
    rng = np.random.default_rng(0)
    (raw / "corrupt.mp4").write_bytes(data[:4096] + rng.integers(0, 256, 60_000, dtype=np.uint8).tobytes())
    (raw / "notes.mp4").write_text("these are notes, not a video\n")
    return raw
