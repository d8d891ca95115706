"""Throughput of the conditioning front end: face detection, crop boxes, crops and MediaPipe landmarks (§3.1, App. B).

Per driving clip of the real corpus (frames decoded once, in memory, so decoding is timed apart), in frames/s:
decode (PyAV), face detection (video mode: full-range BlazeFace, short-range only on a miss; photo mode: both),
`track_crop_boxes` (detection + framing + smoothing), `crop` to 256 px, `track_landmarks` on the 256-px crops (what
`prepare` and inference run) and on the full frames.

    python benchmarks/bench_landmarks.py --quick
    python benchmarks/bench_landmarks.py --max-frames 300 --csv bench_landmarks.csv
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import platform
import sys
import time
from pathlib import Path

import mediapipe as mp

from anchorface.faces.detect import FaceDetector, crop, track_crop_boxes
from anchorface.faces.landmarks import track_landmarks
from anchorface.io.video import iter_frames

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/faces"
COLUMNS = ["clip", "frames", "size", "decode", "detect_video", "detect_photo", "crop_boxes", "crop256",
           "lmk_crop256", "lmk_full"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"face corpus (default {DEFAULT_DATA})")
    p.add_argument("--clips", nargs="+", default=None, help="clip names, e.g. d0 d3 (default: all driving clips)")
    p.add_argument("--max-frames", type=int, default=None, help="frames per clip (default: all)")
    p.add_argument("--size", type=int, default=256, help="crop size for the landmark pass (default 256)")
    p.add_argument("--quick", action="store_true", help="3 clips, 100 frames each")
    p.add_argument("--csv", default=None, metavar="PATH", help="also write the table as CSV")
    args = p.parse_args(argv)
    if args.quick:
        args.clips, args.max_frames = args.clips or ["d0", "d3", "d9"], args.max_frames or 100
    return args


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_clip(path: Path, max_frames: int | None, size: int) -> dict:
    frames, t_decode = timed(lambda: list(itertools.islice(iter_frames(path), max_frames)))
    n = len(frames)
    row = {"clip": path.stem, "frames": n, "size": f"{frames[0].shape[1]}x{frames[0].shape[0]}"}
    for key, exhaustive in (("detect_video", False), ("detect_photo", True)):
        with FaceDetector(exhaustive=exhaustive) as det:
            _, t = timed(lambda: [det.detect(f) for f in frames])
        row[key] = n / t
    boxes, t_boxes = timed(lambda: track_crop_boxes(frames, progress=False))
    crops, t_crop = timed(lambda: [crop(f, b, size) for f, b in zip(frames, boxes)])
    (_, found_c), t_lc = timed(lambda: track_landmarks(crops, progress=False))
    (_, found_f), t_lf = timed(lambda: track_landmarks(frames, progress=False))
    row.update(decode=n / t_decode, crop_boxes=n / t_boxes, crop256=n / t_crop, lmk_crop256=n / t_lc,
               lmk_full=n / t_lf, found=f"{found_c.sum()}/{found_f.sum()}")
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    driving = args.data / "driving"
    if not driving.is_dir():
        print(f"face corpus not found at {args.data}", file=sys.stderr)
        return 1
    paths = sorted(driving.glob("*.mp4"), key=lambda p: (len(p.stem), p.stem))
    if args.clips:
        paths = [driving / f"{c}.mp4" for c in args.clips]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, mediapipe {mp.__version__}, "
          f"python {platform.python_version()}")
    print("throughput in frames/s (higher is better); found = frames with landmarks, 256-px crops / full frames\n")
    rows = []
    head = f"{'clip':>6} {'frames':>6} {'size':>8} " + " ".join(f"{c:>12}" for c in COLUMNS[3:]) + f" {'found':>9}"
    print(head)
    for path in paths:
        r = bench_clip(path, args.max_frames, args.size)
        rows.append(r)
        print(f"{r['clip']:>6} {r['frames']:>6} {r['size']:>8} " + " ".join(f"{r[c]:>12.1f}" for c in COLUMNS[3:])
              + f" {r['found']:>9}", flush=True)
    total = sum(r["frames"] for r in rows)
    # all-clip throughput: total frames over total time per stage
    mean = {c: total / sum(r["frames"] / r[c] for r in rows) for c in COLUMNS[3:]}
    print(f"{'all':>6} {total:>6} {'':>8} " + " ".join(f"{mean[c]:>12.1f}" for c in COLUMNS[3:]))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS + ["found"])
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    from anchorface.apps.cli import run_command

    sys.exit(run_command(main, "bench_landmarks"))
