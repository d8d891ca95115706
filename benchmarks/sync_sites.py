import collections, traceback, warnings, sys, numpy as np, torch
from anchorface.config import DiffusionConfig, MODEL_PRESETS
from anchorface.diffusion.gaussian import GaussianDiffusion
from anchorface.methods.anchored.plans import anchored_plan
from anchorface.methods.anchored.sampler import anchored_diffusion
from anchorface.methods.anchored.sdit import SDiT, SDiTConfig
cfg = SDiTConfig(input_size=32, in_channels=4, num_frames=8, global_dim=768, **MODEL_PRESETS["S/2"])
model = SDiT(cfg).cuda().to(torch.bfloat16).eval()
plan = anchored_plan(64, 8); lmk = np.zeros((64, cfg.landmark_dim), np.float32); g = torch.zeros(1, 768)
d = GaussianDiffusion(DiffusionConfig())
for sampler in ("dpmpp-2m", "ddim"):
    run = dict(sampler=sampler, micro_batch=4, latent_shape=(4, 32, 32), progress=False)
    anchored_diffusion(model, d, plan, g, lmk, steps=2, **run)
    sites = collections.Counter()
    def show(message, category, filename, lineno, file=None, line=None):
        st = [f for f in traceback.extract_stack() if "anchorface" in f.filename or "diffusers" in f.filename]
        sites[" <- ".join(f"{f.filename.split('/')[-1]}:{f.lineno}" for f in st[::-1][:3])] += 1
    warnings.showwarning = show
    warnings.simplefilter("always")
    torch.cuda.set_sync_debug_mode("warn")
    anchored_diffusion(model, d, plan, g, lmk, steps=1, **run)
    torch.cuda.set_sync_debug_mode("default")
    print(sampler, "sequences", plan.num_sequences, "total", sum(sites.values()))
    for k, v in sites.most_common(15): print(f"  {v:4d} {k}")
