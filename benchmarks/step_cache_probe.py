"""Step caching, measured (issue "Speed", item 4): FORA-style reuse of the middle sDiT blocks' residuals every
other step.

At odd steps, blocks 1..depth-2 return x + (their output - input) cached at the previous step for the same
micro-batch (the anchoring hook still runs after every block, so anchor tokens stay shared). Compared at equal
model cost with the same sampler at 0.75x the steps without caching, by PSNR against a 1000-step DDPM sample with
the same seed. A measurement only (it patches the blocks of a loaded model); the product does not cache, because
this does not pay off (docs/design.md, README "Benchmarks").

    PYTHONPATH=src python benchmarks/step_cache_probe.py [--frames 8] [--faces ../shared/data/faces]
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

from anchorface.evaluation.metrics import psnr
from anchorface.faces import detect as faces
from anchorface.faces import landmarks
from anchorface.io.images import load_image
from anchorface.io.video import iter_frames
from anchorface.methods.anchored.pipeline import AnchorFacePipeline
from anchorface.methods.anchored.plans import make_plan

ROOT = Path(__file__).resolve().parents[1]


class StepCache:
    """Patches the middle blocks of `sdit`: at odd steps they return the input plus the residual cached at the
    previous step for the same micro-batch (`per_step` forward passes make one step)."""

    def __init__(self, sdit, per_step: int):
        self.blocks, self.cached = sdit.blocks, range(1, len(sdit.blocks) - 1)
        self.on, self.calls, self.per_step, self.residuals = False, 0, per_step, {}
        self.original = [b.forward for b in self.blocks]
        for i, block in enumerate(self.blocks):
            block.forward = self._wrap(i)
        sdit.register_forward_hook(self._count)

    def _count(self, module, args, output) -> None:
        self.calls += 1

    def _wrap(self, i: int):
        def forward(x, c):
            if not self.on or i not in self.cached:
                return self.original[i](x, c)
            step, m = divmod(self.calls, self.per_step)
            if step % 2 == 1 and (i, m) in self.residuals:
                return x + self.residuals[(i, m)]
            out = self.original[i](x, c)
            self.residuals[(i, m)] = out - x
            return out

        return forward

    def reset(self, on: bool) -> None:
        self.on, self.calls = on, 0
        self.residuals.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--faces", default=str(ROOT.parent / "shared" / "data" / "faces"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    pipe = AnchorFacePipeline.from_pretrained(str(files("anchorface") / "assets" / "demo"))
    image = load_image(Path(a.faces) / "source" / "s1.jpg")
    box = faces.source_crop_box(image, "s1.jpg")
    src_lmk = faces.source_landmarks(image, box, pipe.resolution)
    g = pipe.global_signal(faces.crop(image, box, pipe.resolution))
    frames = list(iter_frames(Path(a.faces) / "driving" / "d0.mp4", max_frames=a.frames))
    track = faces.track_video(frames, pipe.resolution, progress=False)
    motion = landmarks.relative_motion(track.landmarks, src_lmk, reference=0)
    sequences = make_plan("anchored", len(motion), pipe.num_frames).num_sequences
    cache = StepCache(pipe.sdit, -(-sequences // pipe.config.sample.micro_batch))

    def run(sampler: str, steps: int, cached: bool = False):
        cache.reset(cached)
        t0 = time.process_time()
        z = pipe.generate(g, motion, sampler=sampler, steps=steps, seed=0, progress=False)
        return np.stack(list(pipe.decode_frames(z))), time.process_time() - t0

    ref, _ = run("ddpm", 1000)
    depth = len(cache.blocks)
    print("| sampler | steps | caching | block evaluations (of steps x depth) | CPU s | PSNR vs 1000-step DDPM |")
    print("|---|---|---|---|---|---|")
    for sampler in ("ddim", "dpmpp-2m"):
        for steps in (10, 20, 50):
            for cached, n in ((False, steps), (True, steps), (False, int(round(steps * 0.75)))):
                out, sec = run(sampler, n, cached)
                evals = n * depth - (n // 2) * len(cache.cached) * cached
                print(f"| {sampler} | {n} | {'FORA 2' if cached else 'none'} | {evals / (n * depth):.2f} | "
                      f"{sec:.2f} | {psnr(out, ref):.2f} |", flush=True)


if __name__ == "__main__":
    from anchorface.apps.cli import run_command

    sys.exit(run_command(main, "step_cache_probe"))
