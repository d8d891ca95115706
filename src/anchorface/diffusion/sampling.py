"""Sampling from a `GaussianDiffusion` with diffusers' schedulers (App. D; supp. §4): scheduler construction with
DiT's respacing, frame-wise scheduler steps on [B, T, C, H, W] sequences, classifier-free guidance, and a plain
sampling loop (the anchored sampler, Algorithm 1, lives with its method in `methods/anchored/sampler.py`)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from anchorface.diffusion.gaussian import _DIFFUSERS_PREDICTION, CHANNEL_DIM

SAMPLERS = ("ddpm", "ddim")


def make_scheduler(diffusion, kind: str = "ddpm", steps: int | None = None, learned_sigma: bool = True):
    """A diffusers scheduler with the betas of `diffusion` (a `GaussianDiffusion`), set to `steps` steps (respacing; None = all timesteps).

    ddpm: DDPMScheduler, learned_range variance, "linspace" spacing = DiT's respacing (evenly spaced from T-1
          down to 0), so the last step lands on t = 0 and returns the predicted x0 without noise.
    ddim: DDIMScheduler, "leading" spacing = DiT's ddimN respacing, set_alpha_to_one=True so the last step
          returns the predicted x0 exactly; eta is given to `sample_loop`.
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    clip = diffusion.cfg.sample_clip
    common = dict(num_train_timesteps=diffusion.num_timesteps, trained_betas=diffusion.betas, clip_sample=clip is not None,
                  clip_sample_range=float(clip or 1.0),
                  prediction_type=_DIFFUSERS_PREDICTION[diffusion.prediction])
    if kind == "ddpm":
        sched = DDPMScheduler(**common, variance_type="learned_range" if learned_sigma else "fixed_small",
                              timestep_spacing="linspace")
    elif kind == "ddim":
        sched = DDIMScheduler(**common, set_alpha_to_one=True, timestep_spacing="leading")
    else:
        raise ValueError(f"unknown sampler '{kind}' (ddpm | ddim)")
    steps = steps or diffusion.num_timesteps
    if not 1 <= steps <= diffusion.num_timesteps:
        raise ValueError(f"steps must be in [1, {diffusion.num_timesteps}], got {steps}")
    sched.set_timesteps(steps)
    return sched


def learns_sigma(model) -> bool:
    """Whether a denoiser outputs [eps, v] (2C channels, DiT's learned sigma) or eps only: its config's
    `learn_sigma` (an `SDiT`, or a wrapper exposing the sDiT's `config`); True when it has none."""
    return bool(getattr(getattr(model, "config", None), "learn_sigma", True))


def guided(out_cond: torch.Tensor, out_uncond: torch.Tensor, scale: float, eps_channels: int,
           dim: int = CHANNEL_DIM) -> torch.Tensor:
    """Classifier-free guidance on the prediction channels: eps = eps_u + scale (eps_c - eps_u); the learned-variance
    channels are taken from the conditional output (as DiT). v and x0 are affine in ε at a given x_t with weights
    summing to 1, so guiding them is guiding ε. scale = 1 returns `out_cond` itself."""
    if scale == 1.0:
        return out_cond
    eps_c, rest = out_cond.split([eps_channels, out_cond.shape[dim] - eps_channels], dim=dim)
    eps_u = out_uncond.narrow(dim, 0, eps_channels)
    return torch.cat([eps_u + scale * (eps_c - eps_u), rest], dim=dim)


def scheduler_step(scheduler, model_out, t, x, generator=None, eta: float = 0.0) -> torch.Tensor:
    """One scheduler update for [B, T, C, H, W] sequences. diffusers expects channels at dim 1, so frames are
    folded into the batch: frame (b, i) is row b * T + i, and a list of B * T generators gives every frame its own
    noise stream (results then do not depend on which sequences share the batch)."""
    B, T, C, H, W = x.shape
    if isinstance(generator, (list, tuple)) and len(generator) != B * T:
        raise ValueError(f"expected one generator per frame ({B * T}), got {len(generator)}")
    gen = list(generator) if isinstance(generator, tuple) else generator
    out = model_out.reshape(B * T, -1, H, W)
    flat = x.reshape(B * T, C, H, W)
    from diffusers import DDIMScheduler

    if isinstance(scheduler, DDIMScheduler):  # DDIM takes the prediction only (no variance channels)
        prev = scheduler.step(out[:, :C], t, flat, eta=eta, generator=gen).prev_sample
    else:
        prev = scheduler.step(out, t, flat, generator=gen).prev_sample
    return prev.reshape(B, T, C, H, W)


def sample_loop(model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_T: torch.Tensor, scheduler,
                generator: torch.Generator | Sequence[torch.Generator] | None = None, eta: float = 0.0,
                progress: bool = True) -> torch.Tensor:
    """Denoise x_T [B, T, C, H, W] with `model_fn(x_t, t [B] long) -> [B, T, C_out, H, W]` over the scheduler's
    timesteps. `generator`: one torch.Generator, or one per frame (B * T, row-major) for batch-independent noise."""
    x = x_T
    for t in tqdm(scheduler.timesteps, disable=not progress, desc="denoising", leave=False):
        t_batch = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        x = scheduler_step(scheduler, model_fn(x, t_batch), t, x, generator=generator, eta=eta)
    return x
