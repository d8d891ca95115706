"""Sampler study (issue 15): quality against steps for each sampler, against a 1000-step DDPM reference.

For a few short real driving clips and a source photo, and each seed, the reference is DDPM with all 1000 steps.
Then every sampler (ddpm, ddim, dpmpp-2m, unipc) runs at 5/10/20/50/100/250 steps with the same seed (the same
initial noise Q_K) and the same conditions. Per run:

- PSNR (dB) of the decoded frames against the reference's frames (how close a fast sampler gets to the
  1000-step sample);
- LMSE (§4.2): MediaPipe landmarks of the generated crops against the landmarks the model was driven with
  (relative motion), pixels^2 of a 256-px crop, frames without a detected face excluded;
- identity distance: mean Euclidean distance between the dlib face-recognition embeddings of the source photo
  and of the generated frames (`anchorface.faces.identity`; < 0.6 is dlib's same-person threshold);
- faces found: the fraction of generated frames in which MediaPipe finds a face (LMSE is over those only);
- denoising seconds.

Writes `study.csv` (one row per run), `study.md` (means over clips and seeds) and `study.png` (the three metrics
against steps, one line per sampler) into --out. Small by default for a shared 2-core machine.

    PYTHONPATH=src python benchmarks/sampler_study.py --checkpoint runs/tiny-faces --out runs/sampler-study
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"  # ../shared beside the checkout
SAMPLER_NAMES = ("ddpm", "ddim", "dpmpp-2m", "unipc")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(files("anchorface") / "assets" / "demo"),
                   help="a checkpoint directory, or a run directory (its newest checkpoint-* is used)")
    p.add_argument("--source", default=str(FACES / "source" / "s1.jpg"))
    p.add_argument("--driving", nargs="+", default=[str(FACES / "driving" / "d0.mp4"),
                                                    str(FACES / "driving" / "d3.mp4")])
    p.add_argument("--frames", type=int, default=8, help="frames per clip (default 8)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--samplers", nargs="+", default=list(SAMPLER_NAMES))
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50, 100, 250])
    p.add_argument("--reference-steps", type=int, default=1000)
    p.add_argument("--merge", default="anchored")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="sampler-study")
    p.add_argument("--from-csv", action="store_true", help="only rewrite study.md / study.png from --out/study.csv")
    return p.parse_args(argv)


def newest_checkpoint(path: Path) -> Path:
    if (path / "anchorface.json").exists():
        return path
    found = sorted(path.glob("checkpoint-*"))
    if not found:
        raise SystemExit(f"no checkpoint in {path}")
    return found[-1]


def identity_embedder():
    """(name, fn: uint8 frames [N, H, W, 3] -> [N, 128]): dlib's face-recognition embedding (`faces.identity`, the
    `curate` extra's dlib-bin); identity distance = mean Euclidean distance to the source's (dlib: < 0.6 = same
    person)."""
    from anchorface.faces.identity import IdentityEmbedder

    return "dlib face recognition, Euclidean distance", IdentityEmbedder().embed


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from anchorface.errors import NoFaceError
    from anchorface.evaluation.metrics import lmse, psnr
    from anchorface.faces.identity import distance
    from anchorface.faces import detect as faces, landmarks
    from anchorface.io.images import load_image
    from anchorface.io.video import iter_frames
    from anchorface.methods.anchored.pipeline import AnchorFacePipeline, full_frame_box

    ckpt = newest_checkpoint(Path(args.checkpoint))
    out = Path(args.out)
    if args.from_csv:
        with open(out / "study.csv") as fh:
            rows = list(csv.DictReader(fh))
        write_summary(rows, out, ckpt, "see the run's log", args)
        return 0
    pipe = AnchorFacePipeline.from_pretrained(ckpt)
    id_name, embed = identity_embedder()
    out.mkdir(parents=True, exist_ok=True)
    print(f"checkpoint {ckpt}; identity: {id_name}; load {os.getloadavg()[0]:.2f}", flush=True)

    image = load_image(args.source)
    box = faces.source_crop_box(image, "the source image")
    src_crop = faces.crop(image, box, pipe.resolution)
    src_lmk = faces.source_landmarks(image, box, pipe.resolution)
    g = pipe.global_signal(src_crop)
    src_emb = embed(src_crop[None])

    def generated_landmarks(frames):
        try:
            track = faces.track_video(list(frames), pipe.resolution, fixed_box=full_frame_box(frames[0].shape[:2]),
                                      progress=False)
        except NoFaceError:  # no face in any generated frame: LMSE undefined (nan), faces_found = 0
            return np.zeros((len(frames), landmarks.NUM_LANDMARKS, 3)), np.zeros(len(frames), bool)
        return track.landmarks, track.found

    rows = []
    csv_path = out / "study.csv"
    fields = ["clip", "seed", "sampler", "steps", "seconds", "psnr_vs_ref", "lmse", "id_distance", "faces_found"]
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for clip in args.driving:
            frames = list(iter_frames(clip, max_frames=args.frames))
            track = faces.track_video(frames, pipe.resolution, progress=False)
            motion = landmarks.relative_motion(track.landmarks, src_lmk, reference=0)

            def sample(sampler, steps, seed, motion=motion):
                t0 = time.perf_counter()
                z = pipe.generate(g, motion, merge=args.merge, sampler=sampler, steps=steps, seed=seed,
                                  progress=False)
                return np.stack(list(pipe.decode_frames(z))), time.perf_counter() - t0

            for seed in args.seeds:
                ref, _ = sample("ddpm", args.reference_steps, seed)
                for sampler in args.samplers:
                    for steps in args.steps:
                        gen, sec = sample(sampler, steps, seed)
                        gl, found = generated_landmarks(gen)
                        row = dict(clip=Path(clip).stem, seed=seed, sampler=sampler, steps=steps, seconds=sec,
                                   psnr_vs_ref=psnr(gen, ref), lmse=lmse(gl, motion, valid=found) if found.any()
                                   else float("nan"), id_distance=float(distance(src_emb[0], embed(gen)).mean()),
                                   faces_found=float(found.mean()))
                        rows.append(row)
                        writer.writerow(row)
                        fh.flush()
                        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                              flush=True)
    write_summary(rows, out, ckpt, id_name, args)
    return 0


def _nanmean(values) -> float:
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def write_summary(rows, out: Path, ckpt, id_name, args) -> None:
    """study.md: per sampler and step count, the mean over clips x seeds with a 95% bootstrap interval (clips
    resampled whole, `evaluation.stats.bootstrap_ci`) for PSNR, faces found and identity distance."""
    from anchorface.evaluation.stats import bootstrap_ci

    rows = [dict(r, steps=int(r["steps"])) for r in rows]
    keys = sorted({(r["sampler"], r["steps"]) for r in rows}, key=lambda k: (SAMPLER_NAMES.index(k[0]), k[1]))
    mean, ci = {}, {}
    for k in keys:
        sel = [r for r in rows if (r["sampler"], r["steps"]) == k]
        mean[k] = {m: _nanmean([float(r[m]) for r in sel]) for m in ("psnr_vs_ref", "lmse", "id_distance",
                                                                       "faces_found", "seconds")}
        ci[k] = {m: bootstrap_ci([float(r[m]) for r in sel], groups=[r["clip"] for r in sel])[1:]
                 for m in ("psnr_vs_ref", "faces_found", "id_distance")}
    clips = sorted({r["clip"] for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})

    def cell(k, m, fmt):
        lo, hi = ci[k][m]
        return f"{mean[k][m]:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"

    lines = [f"Sampler study: {ckpt}, clips {', '.join(clips)} ({args.frames} frames), seeds {seeds}, {args.merge}; "
             f"reference DDPM {args.reference_steps} steps; identity: {id_name}. Means over clips x seeds, 95% "
             "bootstrap intervals (clips resampled whole).",
             "", "| sampler | steps | PSNR vs ref (dB) | LMSE | faces found | identity distance | denoising s |",
             "|---|---|---|---|---|---|---|"]
    for (s, n), m in mean.items():
        lines.append(f"| {s} | {n} | {cell((s, n), 'psnr_vs_ref', '.2f')} | {m['lmse']:.1f} | "
                     f"{cell((s, n), 'faces_found', '.2f')} | {cell((s, n), 'id_distance', '.3f')} | "
                     f"{m['seconds']:.2f} |")
    (out / "study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, metric, label in zip(axes, ("psnr_vs_ref", "lmse", "id_distance"),
                                 ("PSNR vs 1000-step DDPM (dB)", "LMSE (px^2, 256-px crop)", "identity distance")):
        for s in dict.fromkeys(k[0] for k in keys):
            xs = [n for (s2, n) in keys if s2 == s]
            ax.plot(xs, [mean[(s, n)][metric] for n in xs], marker="o", label=s)
        ax.set_xscale("log")
        ax.set_xlabel("steps")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "study.png", dpi=110)


if __name__ == "__main__":
    from anchorface.apps.cli import run_command

    sys.exit(run_command(main, "sampler_study"))
