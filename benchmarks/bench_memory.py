"""Peak memory of Anchored Diffusion vs. video length (§3.2: "overcome memory constraints").

Each run is a fresh subprocess, so its RSS high-water mark (getrusage ru_maxrss) is that run's peak. The sampler
keeps per-frame latents z [N, C, h, w] plus landmarks [N, 1434] (O(N), small) and runs the sDiT on `micro_batch`
sequences at a time, so peak memory should barely grow with N at a fixed micro-batch size.

    python benchmarks/bench_memory.py                       # generate() API, tiny random model, 100 vs 400 frames
    python benchmarks/bench_memory.py --e2e                 # also `anchorface reenact` on a looped real clip
    python benchmarks/bench_memory.py --frames 100 1000 --micro-batch 8 --steps 2

On CUDA (`--device cuda`) torch.cuda.max_memory_allocated is reported too. PyTorch exposes no peak counter for its
CPU allocator, so on CPU the RSS high-water mark is the measure (it includes the allocator's peak).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FACES = Path(__file__).resolve().parents[2] / "shared/data/faces"
TOLERANCE = 0.10  # the peaks of the shortest and the longest video must be within 10%


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def tiny_checkpoint(directory: Path, preset: str = "tiny") -> Path:
    """A randomly initialised checkpoint of `preset` (non-zero output layer, so sampling does real work)."""
    import torch

    from anchorface.methods.anchored.checkpoint import save_checkpoint
    from anchorface.frozen.codecs import load_codec
    from anchorface.config import load_config
    from anchorface.methods.anchored.global_encoder import load_encoder
    from anchorface.methods.anchored.sdit import SDiT, SDiTConfig

    cfg = load_config(preset)
    C, h, _ = load_codec(cfg.data).latent_shape(cfg.data.resolution)
    torch.manual_seed(0)
    sdit = SDiT(SDiTConfig.from_model_config(cfg.model, input_size=h, in_channels=C))
    with torch.no_grad():
        sdit.final_layer.linear.weight.normal_(0, 0.02)
    return save_checkpoint(directory, cfg, sdit, load_encoder(cfg.data, cfg.model.global_dim))


def child_generate(args) -> dict:
    """One run of `AnchorFacePipeline.generate` on synthetic landmarks (no I/O): the sampler's own memory."""
    import numpy as np
    import torch

    from anchorface.methods.anchored.pipeline import AnchorFacePipeline

    pipe = AnchorFacePipeline.from_pretrained(args.checkpoint, device=args.device)
    rng = np.random.default_rng(0)
    lmk = (0.5 + 0.05 * rng.standard_normal((args.child_frames, 478, 3))).astype(np.float32)
    g = pipe.global_signal(np.full((pipe.resolution,) * 2 + (3,), 128, np.uint8))
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    before = rss_mb()
    t = time.time()
    z = pipe.generate(g, lmk, merge=args.merge, sampler="ddim", steps=args.steps, micro_batch=args.micro_batch,
                      progress=False)
    n_decoded = sum(1 for _ in pipe.decode_frames(z))
    out = dict(frames=args.child_frames, decoded=n_decoded, seconds=time.time() - t, rss_before_mb=before,
               peak_rss_mb=peak_rss_mb(), latents_mb=z.numel() * z.element_size() / 2**20)
    if args.device.startswith("cuda"):
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def child_reenact(args) -> dict:
    """One `anchorface reenact` run (the command's code path, in-process) on a looped real clip."""
    from anchorface.apps.cli import main

    t = time.time()
    code = main(["reenact", str(FACES / "source/s1.jpg"), args.child_video, "-o", args.child_output,
                 "--checkpoint", args.checkpoint, "--steps", str(args.steps), "--micro-batch", str(args.micro_batch),
                 "--device", args.device, "--quiet"])
    if code != 0:
        raise SystemExit(code)
    from anchorface.io.video import probe_video

    return dict(frames=probe_video(args.child_output).num_frames, seconds=time.time() - t,
                peak_rss_mb=peak_rss_mb())


def looped_clip(src: Path, frames: int, out: Path) -> Path:
    """`frames` frames of `src` played forward and backward (no jump at the loop), with the clip's frame rate."""
    from anchorface.io.video import VideoWriter, iter_frames, probe_video

    clip = list(iter_frames(src, max_frames=100))
    order = clip + clip[-2:0:-1]
    with VideoWriter(out, probe_video(src).fps) as w:
        for i in range(frames):
            w.write(order[i % len(order)])
    return out


def spawn(args, extra: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, __file__, "--checkpoint", str(args.checkpoint), "--steps", str(args.steps),
           "--micro-batch", str(args.micro_batch), "--merge", args.merge, "--device", args.device, *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"child failed ({' '.join(cmd)}):\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def report(name: str, runs: list[dict], key: str) -> bool:
    lo, hi = runs[0], runs[-1]
    ratio = hi[key] / lo[key]
    for r in runs:
        extra = "".join(f", {k} {r[k]:.1f}" for k in ("latents_mb", "cuda_peak_mb") if k in r)
        print(f"  {name}: {r['frames']:5d} frames  peak RSS {r['peak_rss_mb']:8.1f} MiB{extra}  ({r['seconds']:.1f} s)")
    ok = abs(ratio - 1) <= TOLERANCE
    growth = (hi[key] - lo[key]) / max(hi["frames"] - lo["frames"], 1) * 1024
    per_frame = f" (latents: {hi['latents_mb'] / hi['frames'] * 1024:.0f} KiB/frame)" if "latents_mb" in hi else ""
    print(f"  {name}: growth {hi[key] - lo[key]:.1f} MiB = {growth:.0f} KiB per extra frame{per_frame}")
    print(f"  {name}: peak {key} ratio {hi['frames']} / {lo['frames']} frames = {ratio:.3f} "
          f"({'within' if ok else 'NOT within'} {TOLERANCE:.0%})")
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, nargs="+", default=[100, 400])
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="denoising steps (memory does not depend on them)")
    p.add_argument("--merge", default="anchored")
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="tiny", help="config preset of the random checkpoint")
    p.add_argument("--checkpoint", help="use this checkpoint instead of a random one")
    p.add_argument("--e2e", action="store_true", help="also run `anchorface reenact` on a looped real clip")
    p.add_argument("--child-frames", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-video", help=argparse.SUPPRESS)
    p.add_argument("--child-output", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child_frames:
        print(json.dumps(child_generate(args)))
        return 0
    if args.child_video:
        print(json.dumps(child_reenact(args)))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.checkpoint is None:
            args.checkpoint = tiny_checkpoint(tmp / "ckpt", args.preset)
        print(f"peak memory, {args.merge}, micro-batch {args.micro_batch}, {args.steps} steps, {args.device}, "
              f"checkpoint {args.checkpoint}")
        runs = [spawn(args, ["--child-frames", str(n)]) for n in args.frames]
        assert all(r["decoded"] == r["frames"] for r in runs)
        ok = report("generate", runs, "peak_rss_mb")
        if args.e2e:
            if not (FACES / "driving/d0.mp4").exists():
                print(f"  reenact: skipped, real face data not found at {FACES}")
            else:
                e2e = []
                for n in args.frames:
                    clip = looped_clip(FACES / "driving/d0.mp4", n, tmp / f"loop{n}.mp4")
                    e2e.append(spawn(args, ["--child-video", str(clip), "--child-output", str(tmp / f"out{n}.mp4")]))
                ok &= report("reenact", e2e, "peak_rss_mb")
    return 0 if ok else 1


if __name__ == "__main__":
    from anchorface.apps.cli import run_command

    sys.exit(run_command(main, "bench_memory"))
