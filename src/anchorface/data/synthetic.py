"""Synthetic pseudo-clips from still images (supplement §3): the data of the committed demo checkpoint.

The committed demo checkpoint is trained only on data this module generates: pseudo-clips made from
scikit-image's public-domain astronaut portrait by landmark-driven geometric warps; `anchorface personalize` makes
them the same way from any photo or folder of stills (`load_portraits`), as supplement §3 does for artworks. This is the paper's own recipe
for still images (supplement §3, "geometric transformations are applied to each sample to conceptualize a series
of video clips"), extended with local expression warps (jaw opening, blinks, brow raises) placed on the portrait's
MediaPipe landmarks so that the driving landmarks carry expression, not only head pose.

`anchorface demo`, `anchorface personalize` and `scripts/train_demo_checkpoint.py` use it.
"""

from __future__ import annotations

import argparse

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from anchorface.errors import AnchorfaceError, NoFaceError

FPS = 25
ASTRONAUT = "astronaut"  # the demo portrait's name (its pseudo-clips are astronaut-SEED-K.mp4)


def astronaut() -> np.ndarray:
    """scikit-image's astronaut portrait (Eileen Collins, NASA; public domain), uint8 [512, 512, 3]."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


# --------------------------------------------------------------------------------------------------------------
# Motion: smooth random curves for head pose and expression
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Motion:
    """Per-frame warp parameters. Angles in degrees, translations as a fraction of the face size, expression
    amounts in [0, 1]."""

    angle: np.ndarray
    scale: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    mouth: np.ndarray
    blink: np.ndarray
    brow: np.ndarray

    def __len__(self) -> int:
        return len(self.angle)

    def frame(self, i: int) -> dict[str, float]:
        return {k: float(getattr(self, k)[i]) for k in self.__dataclass_fields__}


def _smooth_curve(n: int, rng: np.random.Generator, amplitude: float, max_hz: float, fps: float) -> np.ndarray:
    """A sum of three random sinusoids, zero-mean, peak about `amplitude`."""
    t = np.arange(n) / fps
    out = np.zeros(n)
    for _ in range(3):
        f = rng.uniform(0.1, max_hz)
        out += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return amplitude * out / 2.0


def _pulses(n: int, rng: np.random.Generator, rate_hz: float, width_s: float, fps: float) -> np.ndarray:
    """Short smooth bumps in [0, 1] at random times (blinks)."""
    t = np.arange(n) / fps
    out = np.zeros(n)
    for c in rng.uniform(0, n / fps, size=rng.poisson(rate_hz * n / fps) + 1):
        out = np.maximum(out, np.exp(-0.5 * ((t - c) / (width_s / 2.5)) ** 2))
    return out


def random_motion(n: int, seed: int, fps: float = FPS) -> Motion:
    """A talking-head-like motion: slow head sway, speech-rate jaw movement, blinks, occasional brow raises."""
    rng = np.random.default_rng(seed)
    mouth = np.clip(0.5 + _smooth_curve(n, rng, 0.9, 3.0, fps), 0.0, 1.0)
    return Motion(
        angle=_smooth_curve(n, rng, 10.0, 0.6, fps),
        scale=1.0 + _smooth_curve(n, rng, 0.06, 0.5, fps),
        tx=_smooth_curve(n, rng, 0.08, 0.5, fps),
        ty=_smooth_curve(n, rng, 0.06, 0.5, fps),
        mouth=mouth,
        blink=_pulses(n, rng, 0.4, 0.25, fps),
        brow=np.clip(_smooth_curve(n, rng, 1.0, 0.4, fps), 0.0, 1.0),
    )


# --------------------------------------------------------------------------------------------------------------
# The warp: a smooth analytic displacement field placed on the portrait's landmarks
# --------------------------------------------------------------------------------------------------------------
@dataclass
class FaceGeometry:
    """Where the expressive parts of the portrait are, in pixels (from its MediaPipe landmarks)."""

    center: np.ndarray  # face centre (x, y)
    size: float  # face height in pixels
    mouth: np.ndarray
    mouth_width: float
    eyes: np.ndarray  # [2, 2]
    eye_width: float
    brows: np.ndarray  # [2, 2]

    @classmethod
    def from_landmarks(cls, lmk: np.ndarray, hw: tuple[int, int]) -> "FaceGeometry":
        from anchorface.faces.landmarks import EXPRESSIVE_REGIONS

        px = lmk[:, :2] * np.array([hw[1], hw[0]])
        r = {k: px[v].mean(0) for k, v in EXPRESSIVE_REGIONS.items()}
        lips = px[EXPRESSIVE_REGIONS["lips"]]
        left_eye = px[EXPRESSIVE_REGIONS["left_eye"]]
        return cls(
            center=px.mean(0),
            size=float(np.ptp(px[:, 1])),
            mouth=r["lips"],
            mouth_width=float(np.ptp(lips[:, 0])),
            eyes=np.stack([r["left_eye"], r["right_eye"]]),
            eye_width=float(np.ptp(left_eye[:, 0])),
            brows=np.stack([r["left_eyebrow"], r["right_eyebrow"]]),
        )


def _bump(p: np.ndarray, c: np.ndarray, sx: float, sy: float) -> np.ndarray:
    d = (p - c) / np.array([sx, sy])
    return np.exp(-0.5 * (d**2).sum(-1))


def local_displacement(p: np.ndarray, geo: FaceGeometry, mouth: float, blink: float, brow: float) -> np.ndarray:
    """Expression displacement d(p) (pixels) at points p [..., 2]: the jaw drops below the mouth, upper lids
    close over the eyes, brows lift."""
    d = np.zeros_like(p, dtype=np.float64)
    # jaw: everything below the mouth centre moves down, most at the lower lip, fading over the chin
    below = 1.0 / (1.0 + np.exp(-(p[..., 1] - geo.mouth[1]) / (0.02 * geo.size)))
    d[..., 1] += mouth * 0.09 * geo.size * below * _bump(p, geo.mouth + [0, 0.12 * geo.size],
                                                          0.9 * geo.mouth_width, 0.22 * geo.size)
    for eye, brow_c in zip(geo.eyes, geo.brows):
        above = 1.0 / (1.0 + np.exp((p[..., 1] - eye[1]) / (0.01 * geo.size)))
        d[..., 1] += blink * 0.05 * geo.size * above * _bump(p, eye, 0.6 * geo.eye_width, 0.05 * geo.size)
        d[..., 1] -= brow * 0.03 * geo.size * _bump(p, brow_c, 0.9 * geo.eye_width, 0.06 * geo.size)
    return d


def _similarity(geo: FaceGeometry, angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    m = cv2.getRotationMatrix2D(tuple(map(float, geo.center)), angle, scale)
    m[:, 2] += np.array([tx, ty]) * geo.size
    return m


def warp_frame(image: np.ndarray, geo: FaceGeometry, params: dict[str, float], grid_step: int = 4) -> np.ndarray:
    """Render one pseudo-frame: q = S(p + d(p)), sampled backwards: p = u - d(p) with u = S^-1(q).

    u is exact per pixel; the expression displacement d is smooth, so the fixed point is solved on a grid every
    `grid_step` pixels and only the displacement is upsampled."""
    h, w = image.shape[:2]
    s_inv = cv2.invertAffineTransform(_similarity(geo, params["angle"], params["scale"], params["tx"], params["ty"]))

    def backward_similarity(xs, ys):
        return np.stack([xs, ys], -1) @ s_inv[:, :2].T + s_inv[:, 2]

    ys, xs = np.mgrid[0:h:grid_step, 0:w:grid_step].astype(np.float64)
    u = backward_similarity(xs, ys)
    p = u.copy()
    for _ in range(6):  # d is small and smooth: the iteration converges fast
        p = u - local_displacement(p, geo, params["mouth"], params["blink"], params["brow"])
    disp = cv2.resize((u - p).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    full = (backward_similarity(xs, ys) - disp).astype(np.float32)
    return cv2.remap(image, full[..., 0], full[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)


def portrait_geometry(image: np.ndarray, what: str = "the demo portrait") -> FaceGeometry:
    """The portrait's `FaceGeometry` (MediaPipe, static-image mode); NoFaceError naming `what` without a face."""
    from anchorface.faces.landmarks import LandmarkDetector

    with LandmarkDetector(static_image_mode=True) as det:
        lmk = det.detect(image)
    if lmk is None:
        raise NoFaceError(f"no face found in {what}")
    return FaceGeometry.from_landmarks(lmk, image.shape[:2])


def head_and_shoulders(image: np.ndarray, what: str = "the demo portrait") -> tuple[np.ndarray, FaceGeometry]:
    """A square head-and-shoulders crop (side = 3 face heights, as in a talking-head video) and its geometry."""
    geo = portrait_geometry(image, what)
    side = int(min(3 * geo.size, *image.shape[:2]))
    x0 = int(np.clip(geo.center[0] - side / 2, 0, image.shape[1] - side))
    y0 = int(np.clip(geo.center[1] - side / 2, 0, image.shape[0] - side))
    shift = np.array([x0, y0], dtype=np.float64)
    geo = dataclasses.replace(geo, center=geo.center - shift, mouth=geo.mouth - shift, eyes=geo.eyes - shift,
                              brows=geo.brows - shift)
    return np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side]), geo


def write_pseudo_clip(path: Path, image: np.ndarray, geo: FaceGeometry, motion: Motion, size: int = 256) -> None:
    """Write one pseudo-clip as an mp4 (the same kind of file a user would give `anchorface prepare`)."""
    from anchorface.io.video import VideoWriter

    s = size / max(image.shape[:2])
    small = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    geo = dataclasses.replace(geo, center=geo.center * s, size=geo.size * s, mouth=geo.mouth * s,
                              mouth_width=geo.mouth_width * s, eyes=geo.eyes * s, eye_width=geo.eye_width * s,
                              brows=geo.brows * s)
    with VideoWriter(path, FPS) as writer:
        for i in range(len(motion)):
            writer.write(warp_frame(small, geo, motion.frame(i)))


@dataclass
class Portrait:
    """A still turned into pseudo-clips: its name (clip file names), path (None: built in) and head-and-shoulders
    crop with its geometry."""

    name: str
    path: Path | None
    image: np.ndarray
    geometry: FaceGeometry


def astronaut_portrait() -> Portrait:
    return Portrait(ASTRONAUT, None, *head_and_shoulders(astronaut()))


def load_portraits(path: str | Path) -> list[Portrait]:
    """The stills of a photo or a folder of photos (`io.images.IMAGE_SUFFIXES`, sorted by name; other files are
    ignored) as `Portrait`s. One-line errors: a missing path, an unreadable image, a folder without images, a photo
    without a face (in a folder, stills without a face are skipped with a warning; an error if none has one)."""
    import warnings

    from anchorface.errors import AnchorfaceWarning
    from anchorface.io.images import IMAGE_SUFFIXES, load_image

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise AnchorfaceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
    elif path.exists():
        files = [path]
    else:
        raise AnchorfaceError(f"photo or folder not found: {path}")
    stems = [p.stem for p in files]
    out = []
    for p in files:
        image = load_image(p)  # ImageError: unreadable
        try:
            crop, geo = head_and_shoulders(image, f"the photo {p}")
        except NoFaceError as e:
            if not path.is_dir():
                raise
            warnings.warn(f"{e}; skipped", AnchorfaceWarning, stacklevel=2)
            continue
        name = p.stem if stems.count(p.stem) == 1 else p.name.replace(".", "_")
        out.append(Portrait(name, p, crop, geo))
    if not out:
        raise NoFaceError(f"no face found in any image of folder {path}")
    return out


def trained_on(portraits: list[Portrait], what: str | None = None) -> dict:
    """The `trained_on` record of a checkpoint made from `portraits` (`anchored.checkpoint`): `what` it saw, for
    messages (default: "1 photo (me.jpg)", "12 photos (a.jpg, b.jpg, ...)"), and each still's
    `faces.signature`."""
    from anchorface.faces.signature import encode, image_signature

    if what is None:
        names = [p.path.name if p.path is not None else p.name for p in portraits]
        listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        what = f"{len(names)} photo{'s' if len(names) > 1 else ''} ({listed})"
    return {"what": what, "signatures": [encode(image_signature(p.image, p.name)) for p in portraits]}


DEMO_TRAINED_ON = "one portrait (scikit-image's astronaut)"


def make_pseudo_clips(out_dir: str | Path, num_clips: int, num_frames: int, seed: int = 0, size: int = 256,
                      progress: bool = True, portraits: list[Portrait] | None = None,
                      deadline: float | None = None) -> list[Path]:
    """Generate `num_clips` pseudo-clips (supp. §3), each with its own random motion, of the `portraits` in turn
    (at least one clip each; default: the astronaut). Clip k of portrait P is `P.name-SEED-K.mp4`. With a
    `deadline` (a `time.perf_counter()` value), no clip is started after it once every portrait has one."""
    import time

    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    portraits = portraits or [astronaut_portrait()]
    paths = []
    for k in tqdm(range(max(num_clips, len(portraits))), desc="pseudo-clips", disable=not progress):
        if deadline is not None and k >= len(portraits) and time.perf_counter() > deadline:
            break
        p = portraits[k % len(portraits)]
        path = out / f"{p.name}-{seed:03d}-{k:04d}.mp4"
        write_pseudo_clip(path, p.image, p.geometry, random_motion(num_frames, seed * 100_003 + k), size)
        paths.append(path)
    return paths


def _main() -> None:  # pragma: no cover - used by scripts/train_demo_checkpoint.py
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    make_pseudo_clips(a.out, a.clips, a.frames, a.seed)


if __name__ == "__main__":  # pragma: no cover
    _main()
