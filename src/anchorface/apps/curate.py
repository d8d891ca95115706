"""`anchorface curate | stats | split | scene-study`: the data-curation front half of the system (§3.3, App. B,
§4.5.1), from raw footage to clips `anchorface prepare` takes (`curation/`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anchorface.curation.pipeline import CurateOptions

_D = CurateOptions()


def _cmd_curate(a: argparse.Namespace) -> int:
    from anchorface.curation.runner import run_curation

    opts = CurateOptions(min_height=a.min_height, min_face=a.min_face, min_seconds=a.min_seconds,
                         max_identity_distance=a.max_identity_distance, max_clip_distance=a.max_clip_distance,
                         min_quality=a.min_quality, clip=a.clip, multiple=a.multiple,
                         sample_seconds=a.sample_seconds, write_clips=a.write_clips)
    m = run_curation(a.raw_dir, a.out_dir, opts, workers=a.workers, ray_address=a.ray_address,
                     progress=not a.quiet)
    s = m["summary"]
    print(f"{a.out_dir}: {s['segments_accepted']} of {s['segments']} segments kept ({s['seconds_accepted']:.1f} s) "
          f"from {s['videos_curated']} of {s['videos']} videos; rejected videos: "
          + (", ".join(f"{n} {r}" for r, n in s["video_rejections"].items()) or "none"), file=sys.stderr)
    if s["videos_failed"]:
        print(f"anchorface: warning: {s['videos_failed']} videos failed (see manifest.json); a re-run retries them",
              file=sys.stderr)
    if a.stats:
        from anchorface.curation.stats import dataset_stats

        if s["segments_accepted"]:
            dataset_stats(a.out_dir)
            print(f"stats: {Path(a.out_dir) / 'stats' / 'stats.md'}", file=sys.stderr)
    return 0


def _cmd_stats(a: argparse.Namespace) -> int:
    from anchorface.curation.stats import dataset_stats

    r = dataset_stats(a.path, a.output)
    m = r["metrics"]
    print(f"{r['count']} {r['units']}: duration {m['duration']['mean']:.2f} ± {m['duration']['std']:.2f} s; "
          f"report in {Path(a.output) if a.output else 'the default folder'}", file=sys.stderr)
    return 0


def _cmd_split(a: argparse.Namespace) -> int:
    from anchorface.curation.split import make_split

    info = make_split(a.curated_dir, a.output, test_fraction=a.test_fraction, threshold=a.threshold, seed=a.seed)
    print(f"{len(info['train'])} train / {len(info['test'])} test segments, {info['clusters']} identity clusters "
          f"({len(info['test_clusters'])} held out), {len(info['cross_pairs'])} cross-identity pairs",
          file=sys.stderr)
    return 0


def _cmd_scene_study(a: argparse.Namespace) -> int:
    from anchorface.curation.scene_study import render_table, scene_study

    r = scene_study(a.source, a.output, checkpoint=a.checkpoint, clip=a.clip, frames=a.frames,
                    max_groups=a.max_groups, device=a.device, progress=not a.quiet)
    print(render_table(r).split("\n\nPaper")[0])
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "curate", help="cut raw videos into clean single-face segments (§3.3), on Ray or serially",
        description="Select videos of at least --min-height, cut them into shots, track one stable face of at least "
                    "--min-face px for at least --min-seconds, drop segments whose identity (or CLIP) drifts from "
                    "the first frame; write OUT_DIR/manifest.json (every segment, every rejection with its reason) "
                    "and, with --write-clips, OUT_DIR/clips/ for `anchorface prepare OUT_DIR/clips`. Resumable: a "
                    "re-run skips finished videos.")
    p.add_argument("raw_dir", help="folder of raw videos (searched recursively)")
    p.add_argument("out_dir", help="output folder")
    p.add_argument("--min-height", type=int, default=_D.min_height,
                   help=f"shorter side of the video in px (default {_D.min_height}, i.e. 720p)")
    p.add_argument("--min-face", type=float, default=_D.min_face, help=f"face width in px (default {_D.min_face:g})")
    p.add_argument("--min-seconds", type=float, default=_D.min_seconds,
                   help=f"segment length (default {_D.min_seconds:g})")
    p.add_argument("--max-identity-distance", type=float, default=_D.max_identity_distance,
                   help="largest face-recognition distance from the first frame (dlib metric; default "
                        f"{_D.max_identity_distance:g})")
    p.add_argument("--clip", metavar="DIR", help="CLIP model directory: also check the CLIP distance")
    p.add_argument("--max-clip-distance", type=float, default=_D.max_clip_distance,
                   help=f"largest CLIP cosine distance from the first frame (default {_D.max_clip_distance:g})")
    p.add_argument("--min-quality", type=float, default=_D.min_quality,
                   help="smallest laplacian sharpness of the face crop (default 0: keep all)")
    p.add_argument("--multiple", choices=["largest", "reject"], default=_D.multiple,
                   help="several faces in a frame: follow the largest (default) or reject the frames")
    p.add_argument("--sample-seconds", type=float, default=_D.sample_seconds,
                   help=f"score the tracked face every this many seconds (default {_D.sample_seconds:g})")
    p.add_argument("--write-clips", action="store_true", help="write the accepted segments to OUT_DIR/clips/")
    p.add_argument("--stats", action="store_true", help="also write the App. B statistics to OUT_DIR/stats/")
    p.add_argument("--workers", type=int, help="Ray workers on this machine (default: all cores); 1 = serial")
    p.add_argument("--ray-address", metavar="ADDR", help="join a running Ray cluster (e.g. auto or HOST:6379)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_curate)

    s = subparsers.add_parser("stats", help="dataset statistics of App. B (histograms, mean ± std)",
                              description="Histograms with mean ± std of duration, resolution, quality and face "
                                          "ratios of a curated folder or a prepared dataset: PNGs, stats.md, "
                                          "stats.json.")
    s.add_argument("path", help="a curated folder (manifest.json) or a prepared dataset (index.json)")
    s.add_argument("--output", "-o", help="report folder (default: CURATED/stats, or DATASET-stats beside it)")
    s.set_defaults(func=_cmd_stats)

    t = subparsers.add_parser("split", help="held-out test split by identity cluster, with evaluation pair lists",
                              description="Cluster the curated segments by identity and hold whole clusters out "
                                          "(§3.3, ReenactFaces-Test-1K); writes train/ and test/ clip links, "
                                          "self_pairs.tsv and cross_pairs.tsv for `anchorface evaluate`.")
    t.add_argument("curated_dir")
    t.add_argument("--output", "-o", help="split folder (default: CURATED_DIR/split)")
    t.add_argument("--test-fraction", type=float, default=0.2, help="share of segments held out (default 0.2)")
    t.add_argument("--threshold", type=float, help="identity clustering distance (default: 0.6, dlib's)")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_cmd_split)

    c = subparsers.add_parser("scene-study", help="scene recognition study of §4.5.1 (Table 2, t-SNE)",
                              description="Davies–Bouldin and Calinski–Harabasz indices of frame embeddings grouped "
                                          "by segment/video, with t-SNE plots, for the face-recognition embedding, "
                                          "a checkpoint's global encoder and CLIP.")
    c.add_argument("source", nargs="+", help="a curated folder, or videos / folders of videos")
    c.add_argument("--output", "-o", required=True)
    c.add_argument("--checkpoint", help="checkpoint directory whose global encoder G to include")
    c.add_argument("--clip", metavar="DIR", help="CLIP model directory")
    c.add_argument("--frames", type=int, default=16, help="frames per segment/video (default 16)")
    c.add_argument("--max-groups", type=int, help="use at most this many segments/videos")
    c.add_argument("--device", default="cpu")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=_cmd_scene_study)
