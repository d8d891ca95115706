"""Step caching, measured (issue 15, item 4): FORA-style reuse of the middle sDiT blocks' residuals every other step.

At odd steps, blocks 1..depth-2 return x + (their output - input) cached at the previous step for the same
micro-batch (the anchoring hook still runs after every block, so anchor tokens stay shared). Compared at equal
model cost with the same sampler at 0.75x the steps without caching, by PSNR against a 1000-step DDPM sample with
the same seed. A measurement only (it patches the blocks); the product does not cache.

    PYTHONPATH=src python benchmarks/step_cache_probe.py [frames]
"""
import sys, time, numpy as np, torch
from importlib.resources import files
from anchorface.methods.anchored.pipeline import AnchorFacePipeline
from anchorface.faces import detect as faces, landmarks
from anchorface.io.video import iter_frames, load_image
from anchorface.evaluation.metrics import psnr
torch.set_num_threads(1)
pipe = AnchorFacePipeline.from_pretrained(str(files("anchorface") / "assets" / "demo"))
image = load_image("/work/shared/data/faces/source/s1.jpg"); box = faces.source_crop_box(image, "s")
src_lmk = faces.source_landmarks(image, box, pipe.resolution); g = pipe.global_signal(faces.crop(image, box, pipe.resolution))
frames = list(iter_frames("/work/shared/data/faces/driving/d0.mp4", max_frames=int(sys.argv[1]) if len(sys.argv) > 1 else 8))
motion = landmarks.relative_motion(faces.track_video(frames, pipe.resolution, progress=False).landmarks, src_lmk, reference=0)
blocks = pipe.sdit.blocks
CACHED = range(1, len(blocks) - 1)
state = dict(on=False, calls=0, per_step=None)
cache = {}
orig = [b.forward for b in blocks]
def wrap(i):
    def fwd(x, c):
        if not state["on"] or i not in CACHED:
            return orig[i](x, c)
        k, m = divmod(state["calls"], state["per_step"])
        key = (i, m)
        if k % 2 == 1 and key in cache:
            return x + cache[key]
        out = orig[i](x, c); cache[key] = out - x; return out
    return fwd
for i, b in enumerate(blocks): b.forward = wrap(i)
pipe.sdit.register_forward_pre_hook(lambda mod, a: None)
def count(mod, a, o): state["calls"] += 1
pipe.sdit.register_forward_hook(count)
from anchorface.methods.anchored.plans import make_plan
nb = -(-make_plan("anchored", len(motion), pipe.num_frames).num_sequences // pipe.config.sample.micro_batch)
def run(sampler, steps, cached=False):
    state.update(on=cached, calls=0, per_step=nb); cache.clear()
    t0 = time.process_time()
    z = pipe.generate(g, motion, sampler=sampler, steps=steps, seed=0, progress=False)
    return np.stack(list(pipe.decode_frames(z))), time.process_time() - t0
ref, _ = run("ddpm", 1000)
print("| sampler | steps | caching | block evaluations (of steps x depth) | CPU s | PSNR vs 1000-step DDPM |")
print("|---|---|---|---|---|---|")
for sampler in ("ddim", "dpmpp-2m"):
    for steps in (10, 20, 50):
        for cached, n in ((False, steps), (True, steps), (False, int(round(steps * 0.75)))):
            out, sec = run(sampler, n, cached)
            evals = n * len(blocks) - (n // 2) * len(CACHED) * cached
            print(f"| {sampler} | {n} | {'FORA 2' if cached else 'none'} | {evals / (n * len(blocks)):.2f} | {sec:.2f} | {psnr(out, ref):.2f} |", flush=True)
