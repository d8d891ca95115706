"""Before / after `anchorface personalize` (issue 14): a photo reenacted with the demo model and with the model
personalised on it, scored as `anchorface evaluate` scores (evaluation/protocols.py), plus a frame grid.

For each PHOTO=CHECKPOINT pair and the driving clip: the case is tracked once (`protocols.make_case`: driving crop
boxes and landmarks, the source face), each model renders it with re-targeted (relative) motion, as `reenact` does
by default (`protocols.generate`), and `protocols.Scorer` with the face-recognition embedding
(`protocols.IdentityEmbedding`, dlib) scores it:

- id dist: mean Euclidean distance between the dlib embeddings of the source crop and of the generated frames
  (dlib's same-person threshold is 0.6); the row "driving" is the source against the driving person's own crops,
  the level of "another person";
- CSIM: min cosine similarity of the same embeddings (§4.2);
- LMSE / E-LMSE: generated landmarks against the motion the model followed (`metrics.motion_metrics`);
- render s: wall time of the rendering (Anchored Diffusion + decoding).

The grid (for each pair: source | driving frames, then before, then after) goes to --grid; it shows the people of
the photos and the clip: keep it out of the repository when they are not yours.

    PYTHONPATH=src python benchmarks/personalize_study.py ../shared/data/faces/driving/d0.mp4 \\
        ../shared/data/faces/source/s1.jpg=runs/s1-model ../shared/data/faces/source/s12.jpg=runs/s12-model \\
        --grid runs/personalize-grid.png
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib.resources import files
from pathlib import Path

import cv2
import numpy as np

GRID_COLUMNS = 8  # driving frames shown per row
TILE = 128  # px per tile in the grid


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("driving", help="the driving clip")
    p.add_argument("pairs", nargs="+", metavar="PHOTO=CHECKPOINT", help="a photo and the model personalised on it")
    p.add_argument("--demo", default=str(files("anchorface") / "assets" / "demo"), help="the 'before' checkpoint")
    p.add_argument("--frames", type=int, default=0, help="the first N frames of the driving clip (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", help="write the frame grid here (PNG)")
    return p.parse_args(argv)


def label(tile: np.ndarray, text: str) -> np.ndarray:
    out = np.ascontiguousarray(tile).copy()
    for color, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(out, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, thickness, cv2.LINE_AA)
    return out


def grid_rows(source_crop, driving, before, after, name) -> np.ndarray:
    """Three rows for one pair: source | driving frames; before; after (GRID_COLUMNS evenly spaced frames)."""
    from anchorface.io.images import resize

    idx = np.linspace(0, len(driving) - 1, GRID_COLUMNS).round().astype(int)
    blank = np.full((TILE, TILE, 3), 32, np.uint8)
    rows = []
    for first, frames, text in ((label(resize(source_crop, TILE), f"source {name}"), driving, "driving"),
                                (label(blank, "before: demo"), before, "before"),
                                (label(blank, "after: personal"), after, "after")):
        tiles = [first] + [resize(frames[i], TILE) for i in idx]
        tiles[1] = label(tiles[1], text)
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def main(argv=None) -> None:
    args = parse_args(argv)
    from anchorface.evaluation import metrics, protocols
    from anchorface.faces.identity import distance
    from anchorface.io.images import load_image, save_image
    from anchorface.io.video import iter_frames
    from anchorface.methods.registry import get_method

    driving = Path(args.driving)
    frames = list(iter_frames(driving, max_frames=args.frames or None))
    spec = get_method("anchored")
    demo = spec.from_pretrained(args.demo)
    res = demo.resolution
    scorer = protocols.Scorer(protocols.IdentityEmbedding())
    rows, blocks = [], []
    for pair in args.pairs:
        photo, ckpt = pair.split("=", 1)
        photo = Path(photo)
        case = protocols.make_case(f"{driving.stem}<-{photo.stem}", driving, frames, load_image(photo), photo.name,
                                   resolution=res)
        idx = protocols.embedded_frames(len(frames))
        e_src, e_drv = scorer.references(case, res, idx)
        rows.append((photo.name, "driving", float(distance(e_src[0], e_drv).mean()),
                     metrics.csim(e_src[0], e_drv), float("nan"), float("nan"), float("nan")))
        gens = {}
        for when, method in (("before", demo), ("after", spec.from_pretrained(ckpt))):
            t0 = time.perf_counter()
            gen, motion = protocols.generate(method, case, {}, relative=True, seed=args.seed)
            seconds = time.perf_counter() - t0
            m = scorer.score(case, gen, motion, with_reference=False)["metrics"]
            e_gen = scorer.embed(gen[idx])
            rows.append((photo.name, when, float(distance(e_src[0], e_gen).mean()), m["csim"], m["lmse"],
                         m["e_lmse"], seconds))
            gens[when] = gen
        blocks.append(grid_rows(case.source_crop(256), case.driving_crops(256), gens["before"], gens["after"],
                                photo.stem))
    print(f"driving {driving.name}, {len(frames)} frames; identity: {scorer.embedder.name}, "
          f"{scorer.embedder.detected}/{scorer.embedder.measured} faces found by dlib's detector")
    print("| photo | model | id dist (lower: same face) | CSIM | LMSE | E-LMSE | render s |")
    print("|---|---|---|---|---|---|---|")
    for name, when, d, c, lm, elm, s in rows:
        model = {"driving": "(driving person)", "before": "demo", "after": "personalised"}[when]
        print(f"| {name} | {model} | {d:.3f} | {c:.3f} | {lm:.1f} | {elm:.1f} | {s:.1f} |".replace("nan", "-"))
    if args.grid:
        save_image(args.grid, np.concatenate(blocks, axis=0))
        print(f"grid: {args.grid}")


if __name__ == "__main__":
    from anchorface.apps.cli import run_command

    sys.exit(run_command(main, "personalize_study"))
