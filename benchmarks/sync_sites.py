"""Where the anchored sampler synchronises the host with a CUDA device (issue 15: "no host synchronisation per
layer"): one sampling step of a small random sDiT (S/2, T=8, 32x32x4 latents, bf16) under
`torch.cuda.set_sync_debug_mode("warn")`, with each synchronising call counted by the anchorface/diffusers lines on
its stack. A site inside `sdit.py` (the blocks or the anchoring hook) would be a per-layer synchronisation.

    PYTHONPATH=src python benchmarks/sync_sites.py --frames 64 --micro-batch 4      # needs CUDA
"""

from __future__ import annotations

import argparse
import collections
import sys
import traceback
import warnings

import numpy as np
import torch

from anchorface.config import MODEL_PRESETS, DiffusionConfig
from anchorface.diffusion.gaussian import GaussianDiffusion
from anchorface.methods.anchored.plans import anchored_plan
from anchorface.methods.anchored.sampler import anchored_diffusion
from anchorface.methods.anchored.sdit import SDiT, SDiTConfig


def sync_sites(fn) -> collections.Counter:
    """Run `fn()` under `torch.cuda.set_sync_debug_mode("warn")`; the host synchronisations it made, counted by
    the last three anchorface/diffusers lines on their stacks."""
    sites: collections.Counter = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        stack = [f for f in traceback.extract_stack() if "anchorface" in f.filename or "diffusers" in f.filename]
        sites[" <- ".join(f"{f.filename.split('/')[-1]}:{f.lineno}" for f in stack[::-1][:3])] += 1

    with warnings.catch_warnings():
        warnings.showwarning = record
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sites


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--samplers", nargs="+", default=["dpmpp-2m", "ddim"])
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("sync_sites.py needs a CUDA device", file=sys.stderr)
        return 1
    cfg = SDiTConfig(input_size=32, in_channels=4, num_frames=8, global_dim=768, **MODEL_PRESETS["S/2"])
    model = SDiT(cfg).cuda().to(torch.bfloat16).eval()
    plan = anchored_plan(args.frames, 8)
    lmk, g = np.zeros((args.frames, cfg.landmark_dim), np.float32), torch.zeros(1, 768)
    diffusion = GaussianDiffusion(DiffusionConfig())
    for sampler in args.samplers:
        run = dict(sampler=sampler, micro_batch=args.micro_batch, latent_shape=(4, 32, 32), progress=False)
        anchored_diffusion(model, diffusion, plan, g, lmk, steps=2, **run)  # warm-up
        sites = sync_sites(lambda run=run: anchored_diffusion(model, diffusion, plan, g, lmk, steps=1, **run))
        forwards = -(-plan.num_sequences // args.micro_batch)
        print(f"{sampler}: {plan.num_sequences} sequences, {forwards} forward passes x {cfg.depth} blocks; "
              f"{sum(sites.values())} host synchronisations (setup + one step)")
        for site, n in sites.most_common(15):
            print(f"  {n:4d}  {site}")
    return 0


if __name__ == "__main__":
    from anchorface.apps.cli import run_command

    sys.exit(run_command(main, "sync_sites"))
