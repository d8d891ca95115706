"""Training throughput (samples/s = sequences of T frames per second) of the real training step (§4.1, App. D).

One step = the step of `anchorface train`: `anchorface.methods.anchored.training.diffusion_loss` (q_sample, sDiT forward with the
mapping network and, for `tiny`, the jointly trained global encoder, the learned-sigma hybrid loss with the
expressive weight map), backward, AdamW on the two parameter groups, EMA update. Data are synthetic in-memory
batches of the right shapes, so this measures the model step, not the data pipeline.

- CPU: the `tiny` preset (64 px crops, pixel codec -> 16x16x48 latents, T=4, learned G), fp32.
- GPU (when there is one): sDiT-XL/2, T=8, 256 px through the SD VAE (32x32x4 latents), CLIP G (768-d embeddings
  precomputed, as in training), bf16 autocast; otherwise it says "no GPU available".

    python benchmarks/bench_train.py              # CPU tiny, then GPU XL/2 if available
    python benchmarks/bench_train.py --quick      # fewer steps
    python benchmarks/bench_train.py --gpu-batch 16 --gpu-steps 20
"""

from __future__ import annotations

import argparse
import sys
import contextlib
import time

import torch

from anchorface.config import load_config
from anchorface.diffusion.gaussian import GaussianDiffusion
from anchorface.methods.anchored.training import build_denoiser, diffusion_loss, example_noise, param_groups
from anchorface.training.loop import EMA


def synthetic_batch(cfg, latent_shape, batch: int, device) -> dict:
    """A batch shaped like `ClipDataset`'s: latents, landmark vectors, weight maps (1 or 1+λ), source, drop."""
    gen = torch.Generator().manual_seed(0)
    T, (C, h, w) = cfg.model.num_frames, latent_shape
    weight = 1.0 + cfg.diffusion.lambda_ex * (torch.rand(batch, T, 1, h, w, generator=gen) < 0.15).float()
    if cfg.data.encoder == "learned":
        source = torch.rand(batch, 3, cfg.data.resolution, cfg.data.resolution, generator=gen) * 2 - 1
    else:
        source = torch.randn(batch, cfg.model.global_dim, generator=gen)
    out = {"latents": torch.randn(batch, T, C, h, w, generator=gen),
           "landmarks": torch.rand(batch, T, cfg.model.landmark_dim, generator=gen) * 2 - 1,
           "weight": weight, "source": source, "drop": torch.rand(batch, generator=gen) < cfg.data.cond_dropout}
    return {k: v.to(device) for k, v in out.items()}


def measure(cfg, latent_shape, batch: int, warmup: int, steps: int, device, bf16: bool) -> dict:
    torch.manual_seed(0)
    model = build_denoiser(cfg, latent_shape).to(device).train()
    ema = EMA(model, cfg.train.ema_decay)
    opt = torch.optim.AdamW(param_groups(model, cfg.train.lr, cfg.train.mapping_lr_scale), lr=cfg.train.lr,
                            weight_decay=cfg.train.weight_decay)
    diffusion = GaussianDiffusion(cfg.diffusion)
    data = synthetic_batch(cfg, latent_shape, batch, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def one_step(i):
        idx = torch.arange(i * batch, (i + 1) * batch)
        t, noise = example_noise(0, idx, data["latents"].shape[1:], diffusion.num_timesteps)
        with autocast:
            loss = diffusion_loss(model, diffusion, data, t.to(device), noise.to(device))["loss"].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model, i)
        return loss

    for i in range(warmup):
        one_step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(steps):
        loss = one_step(warmup + i)
    loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"params_M": params / 1e6, "step_s": dt / steps, "samples_per_s": batch * steps / dt, "peak_GiB": mem}


def report(name: str, batch: int, r: dict) -> None:
    mem = f", peak {r['peak_GiB']:.1f} GiB" if r["peak_GiB"] == r["peak_GiB"] else ""
    print(f"{name}: {r['params_M']:.2f} M params, batch {batch}: {r['step_s'] * 1e3:.0f} ms/step, "
          f"{r['samples_per_s']:.1f} samples/s{mem}", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-batch", type=int, default=None, help="default: the tiny preset's batch (8)")
    p.add_argument("--cpu-steps", type=int, default=10)
    p.add_argument("--gpu-batch", type=int, default=4, help="sequences per GPU (App. D: 16 over 4 GPUs = 4)")
    p.add_argument("--gpu-steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="3 timed steps")
    args = p.parse_args(argv)
    if args.quick:
        args.cpu_steps, args.gpu_steps, args.warmup = 3, 3, 1

    tiny = load_config("tiny")
    f, res = tiny.data.pixel_factor, tiny.data.resolution
    batch = args.cpu_batch or tiny.train.batch_size
    r = measure(tiny, (3 * f * f, res // f, res // f), batch, args.warmup, args.cpu_steps, torch.device("cpu"),
                bf16=False)
    report(f"tiny on CPU ({torch.get_num_threads()} threads, fp32)", batch, r)

    if not torch.cuda.is_available():
        print("sDiT-XL/2 T=8 bf16: no GPU available")
        return
    paper = load_config("paper-t8")
    r = measure(paper, (4, 32, 32), args.gpu_batch, args.warmup, args.gpu_steps, torch.device("cuda"), bf16=True)
    report(f"sDiT-XL/2 T=8 on {torch.cuda.get_device_name()} (bf16)", args.gpu_batch, r)


if __name__ == "__main__":
    from anchorface.apps.cli import run_command

    sys.exit(run_command(main, "bench_train"))
