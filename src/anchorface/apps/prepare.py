"""`anchorface prepare VIDEOS_DIR DATASET_DIR`: face crops, landmarks, latents and source embeddings of every
video, as the training dataset (`data/dataset.py`, §3.1)."""

from __future__ import annotations

import argparse
import sys

from anchorface.apps.arguments import positive_float
from anchorface.config import load_config
from anchorface.data.dataset import DEFAULT_MAX_SECONDS, prepare_dataset


def _cmd_prepare(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    from anchorface.devices import resolve_device

    device = resolve_device(args.device or "auto")
    s = prepare_dataset(args.videos_dir, args.dataset_dir, cfg, max_seconds=args.max_seconds,
                        overwrite=args.overwrite, device=device, progress=not args.quiet)
    print(f"{args.dataset_dir}: {s['clips']} clips, {s['frames']} frames from {s['videos']} videos "
          f"({s['skipped_no_face']} skipped without a face, {s['skipped_unreadable']} unreadable, "
          f"{s['skipped_faceless_stretches']} stretches without a face cut out: {s['skipped_faceless_frames']} "
          "frames)", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare", help="turn a folder of face videos into a training dataset",
        description="Crop faces, track MediaPipe landmarks and precompute latents (and CLIP embeddings) of every "
                    "video in VIDEOS_DIR; write safetensors shards + index.json to DATASET_DIR (§3.1, §3.3).")
    p.add_argument("videos_dir", help="folder of videos (.mp4, .mov, .mkv, .avi, .webm)")
    p.add_argument("dataset_dir", help="output folder")
    p.add_argument("--config", default="tiny", help="preset (tiny, paper-t4, paper-t8) or YAML file (default: tiny)")
    p.add_argument("--max-seconds", type=positive_float, default=DEFAULT_MAX_SECONDS,
                   help=f"cut longer videos into segments of at most this length (default: {DEFAULT_MAX_SECONDS})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in DATASET_DIR")
    p.add_argument("--device", default=None, help="torch device for the codec/encoder (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_prepare)
