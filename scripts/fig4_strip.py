"""Fig. 4 for the README from data the project generates: a demo-sized model that must invent an outfit.

    python scripts/fig4_strip.py --work /tmp/fig4      # about 12 min on 2 CPU cores

The committed demo model saw one photo, so with G dropped it has one appearance to draw and nothing to drift to.
This script fine-tunes it on pseudo-clips of the astronaut whose clothes and background are recoloured per clip
(hue rotations outside the face), with per-signal dropout (`data.signal_dropout`) so that landmark-only sampling is
in distribution. With G dropped the model must then pick a colour, and only the merge strategy can keep it: the
consistency study (`anchorface evaluate --protocol consistency --consistency-conditions landmarks`) on a new
pseudo-clip draws the Fig. 4 strip of every strategy, copied to docs/images/fig4-demo.png. No file of ../shared is
read, so the strip may be committed (the weights stay in --work).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HUES = 8  # recolourings (hue shifts spread over the circle)


def sh(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def recoloured_portraits(work: Path) -> Path:
    """The astronaut head-and-shoulders crop with its clothes and background hue-rotated HUES ways (the face, an
    ellipse around the face geometry, kept), saved as stills for `make_pseudo_clips`."""
    from anchorface.data.synthetic import astronaut_portrait
    from anchorface.io.images import save_image

    p = astronaut_portrait()
    h, w = p.image.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    (cx, cy), s = p.geometry.center, p.geometry.size
    face = ((xx - cx) / (0.45 * s)) ** 2 + ((yy - cy) / (0.65 * s)) ** 2 <= 1.0
    face = cv2.GaussianBlur(face.astype(np.float32), (0, 0), 0.05 * s)[..., None]
    hsv = cv2.cvtColor(p.image, cv2.COLOR_RGB2HSV)
    out = work / "stills"
    out.mkdir(parents=True, exist_ok=True)
    for k in range(HUES):
        shifted = hsv.copy()
        shifted[..., 0] = (shifted[..., 0].astype(int) + k * 180 // HUES) % 180
        shifted[..., 1] = np.maximum(shifted[..., 1], 90)  # (a grey suit would not change colour)
        rgb = cv2.cvtColor(shifted, cv2.COLOR_HSV2RGB).astype(np.float32)
        save_image(out / f"astronaut-hue{k}.png", (face * p.image + (1 - face) * rgb).round().astype(np.uint8))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/anchorface-fig4")
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--length", type=int, default=192, help="frames of the strip's video")
    a = ap.parse_args()
    from anchorface.config import load_config, save_config
    from anchorface.data.synthetic import astronaut_portrait, load_portraits, make_pseudo_clips
    from anchorface.methods.anchored.checkpoint import read_config

    work = Path(a.work)
    demo = ROOT / "src" / "anchorface" / "assets" / "demo"
    if not (work / "clips").is_dir():
        make_pseudo_clips(work / "clips", a.clips, a.frames, seed=1, portraits=load_portraits(recoloured_portraits(work)))
    cfg = read_config(demo)
    cfg.data.signal_dropout = 0.3
    cfg.train.max_steps, cfg.train.warmup_steps, cfg.train.ckpt_every, cfg.train.sample_every = a.steps, 20, a.steps, 0
    cfg.train.lr = a.lr
    save_config(cfg, work / "config.yaml")
    assert load_config(work / "config.yaml").data.signal_dropout == 0.3
    if not (work / "data").is_dir():
        sh(sys.executable, "-m", "anchorface", "prepare", str(work / "clips"), str(work / "data"), "--config",
           str(work / "config.yaml"))
    if not (work / "run" / "latest").is_file():  # fine-tuning the demo's weights
        sh(sys.executable, "-m", "anchorface", "train", "--config", str(work / "config.yaml"), "--data",
           str(work / "data"), "--output", str(work / "run"), "--init-from", str(demo), "--holdout-videos", "0")
    checkpoint = work / "run" / (work / "run" / "latest").read_text().strip()
    driving = work / "driving"
    if not driving.is_dir():  # the original astronaut with a motion none of the training clips has
        make_pseudo_clips(driving, 1, a.length, seed=7, portraits=[astronaut_portrait()])
    report = work / "report"
    shutil.rmtree(report, ignore_errors=True)
    sh(sys.executable, "-m", "anchorface", "evaluate", "--methods", "anchored", "--checkpoint", str(checkpoint),
       "--driving", str(driving), "--protocol", "consistency", "--lengths", str(a.length), "--seeds", "1",
       "--consistency-conditions", "landmarks", "--sampler", "dpmpp-2m", "--steps", "10", "-o", str(report))
    from PIL import Image  # (256 colours: a third of the size, no visible change)

    Image.open(report / "strip-landmarks.png").convert("RGB").quantize(256, dither=Image.Dither.NONE).save(
        ROOT / "docs" / "images" / "fig4-demo.png", optimize=True)
    print(f"wrote {ROOT / 'docs' / 'images' / 'fig4-demo.png'} (report: {report / 'report.md'})")


if __name__ == "__main__":
    from anchorface.apps.cli import run_command

    sys.exit(run_command(main, "fig4_strip"))
