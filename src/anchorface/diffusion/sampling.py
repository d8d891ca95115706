"""Sampling from a `GaussianDiffusion` with diffusers' schedulers (App. D; supp. §4): scheduler construction with
DiT's respacing, frame-wise scheduler steps on [B, T, C, H, W] sequences, classifier-free guidance, and a plain
sampling loop (the anchored sampler, Algorithm 1, lives with its method in `methods/anchored/sampler.py`)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from anchorface.diffusion.gaussian import _DIFFUSERS_PREDICTION, CHANNEL_DIM

SAMPLERS = ("ddpm", "ddim", "dpmpp-2m", "unipc")
MULTISTEP = ("dpmpp-2m", "unipc")  # solvers with a history of past predictions (kept per frame by `FrameSolver`)


def make_scheduler(diffusion, kind: str = "ddpm", steps: int | None = None, learned_sigma: bool = True):
    """A diffusers scheduler with the betas of `diffusion` (a `GaussianDiffusion`), set to `steps` steps (respacing; None = all timesteps).

    ddpm: DDPMScheduler, learned_range variance, "linspace" spacing = DiT's respacing (evenly spaced from T-1
          down to 0), so the last step lands on t = 0 and returns the predicted x0 without noise.
    ddim: DDIMScheduler, "leading" spacing = DiT's ddimN respacing, set_alpha_to_one=True so the last step
          returns the predicted x0 exactly; eta is given to `sample_loop`.
    dpmpp-2m: DPMSolverMultistepScheduler, DPM-Solver++(2M) (Lu et al. 2022), data prediction, "trailing"
          spacing (starts at t = T-1; "linspace" repeats timesteps near 1000 steps, a zero step size), first order
          at the last step and a final sigma of 0 (returns x0).
    unipc: UniPCMultistepScheduler, UniPC-2 with the B(h) = e^h - 1 variant ("bh2", Zhao et al. 2023), predictor-
          corrector in data prediction, same spacing and final step.
    Both multistep solvers are given the clipped x0 the model implies (`predicted_x0`, the same x0 DDPM/DDIM clip
    with `sample_clip`), so they are configured with prediction_type "sample"; the model's own prediction type and
    clip range are kept on the scheduler as `anchorface_prediction`, `anchorface_clip`.
    """
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    clip = diffusion.cfg.sample_clip
    common = dict(num_train_timesteps=diffusion.num_timesteps, trained_betas=diffusion.betas, clip_sample=clip is not None,
                  clip_sample_range=float(clip or 1.0),
                  prediction_type=_DIFFUSERS_PREDICTION[diffusion.prediction])
    if kind == "ddpm":
        sched = DDPMScheduler(**common, variance_type="learned_range" if learned_sigma else "fixed_small",
                              timestep_spacing="linspace")
    elif kind == "ddim":
        sched = DDIMScheduler(**common, set_alpha_to_one=True, timestep_spacing="leading")
    elif kind in MULTISTEP:
        multistep = dict(num_train_timesteps=diffusion.num_timesteps, trained_betas=diffusion.betas,
                         prediction_type="sample", solver_order=2, timestep_spacing="trailing",
                         lower_order_final=True, final_sigmas_type="zero")
        if kind == "dpmpp-2m":
            sched = DPMSolverMultistepScheduler(**multistep, algorithm_type="dpmsolver++", solver_type="midpoint")
        else:
            sched = UniPCMultistepScheduler(**multistep, predict_x0=True, solver_type="bh2")
        sched.anchorface_prediction, sched.anchorface_clip = diffusion.prediction, clip
    else:
        raise ValueError(f"unknown sampler '{kind}' ({' | '.join(SAMPLERS)})")
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


def is_multistep(scheduler) -> bool:
    """Whether `scheduler` is one of the multistep solvers of `make_scheduler` (state across steps)."""
    return hasattr(scheduler, "anchorface_prediction")


def predicted_x0(scheduler, pred: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
    """The x0 implied by the model's prediction (eps, v or x0) at x_t, clipped to the scheduler's `anchorface_clip`
    range when set (float32; the input of the multistep solvers)."""
    a = scheduler.alphas_cumprod[int(t)].to(torch.float32)  # a 0-dim host tensor: no copy to the device
    pred, x = pred.float(), x.float()
    kind = scheduler.anchorface_prediction
    if kind == "epsilon":
        x0 = (x - (1 - a).sqrt() * pred) / a.sqrt()
    elif kind == "v":
        x0 = a.sqrt() * x - (1 - a).sqrt() * pred
    else:
        x0 = pred
    clip = scheduler.anchorface_clip
    return x0 if clip is None else x0.clamp(-clip, clip)


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

    if is_multistep(scheduler):  # the clipped x0 of the prediction channels (no variance channels, no noise)
        prev = scheduler.step(predicted_x0(scheduler, out[:, :C], t, flat), t, flat).prev_sample
    elif isinstance(scheduler, DDIMScheduler):  # DDIM takes the prediction only (no variance channels)
        prev = scheduler.step(out[:, :C], t, flat, eta=eta, generator=gen).prev_sample
    else:
        if out.shape[1] == 2 * C:  # learned sigma: keep v in [-1, 1] (see `clamp_variance`)
            out = clamp_variance(out, C)
        prev = scheduler.step(out, t, flat, generator=gen).prev_sample
    return prev.reshape(B, T, C, H, W)


def clamp_variance(out: torch.Tensor, channels: int) -> torch.Tensor:
    """[prediction, v] with v clamped to [-1, 1]. The learned log variance interpolates between log β̃_t and
    log β_t with frac = (v + 1) / 2 (improved DDPM, eq. 15), and nothing in training keeps v in range: a small or
    briefly trained model predicts v far outside it at small t (up to 14 measured on the tiny corpus model), which
    is harmless with all 1000 steps (β̃_t ≈ β_t) but extrapolates to exploding variances on respaced schedules
    (DDPM at 250 steps then draws noise patches, not faces). Clamped, the variance stays between the two bounds."""
    return torch.cat([out[:, :channels], out[:, channels:].clamp(-1.0, 1.0)], dim=1)


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


class FrameSolver:
    """Frame-wise scheduler updates on any subsets of N frames (the anchored sampler updates each frame once per
    step, in whichever micro-batch it becomes ready), with the solver state of multistep schedulers kept per frame.

    DDPM and DDIM are stateless: `step` is `scheduler_step`. DPM-Solver++(2M) and UniPC keep a history (their past
    x0 predictions; UniPC also the last corrected sample) and step counters. Here the history lives in [N, ...]
    buffers, one row per frame; before each update the scheduler is given the rows of the frames being updated and
    the counters of the start of this step, and afterwards the new rows are stored back. Every solver operation is
    elementwise per frame, so a frame's result does not depend on which frames are updated together (micro-batch
    size), exactly as for DDPM / DDIM."""

    _COUNTERS = ("_step_index", "lower_order_nums", "this_order", "timestep_list")

    def __init__(self, scheduler, num_frames: int, eta: float = 0.0):
        self.scheduler, self.num_frames, self.eta = scheduler, num_frames, eta
        self.multistep = is_multistep(scheduler)
        self._step = None
        if self.multistep:
            scheduler._step_index = 0
            self._post = self._counters()  # counters after the last update (the state the next step starts from)
            self._history: list[torch.Tensor | None] = [None] * len(scheduler.model_outputs)
            self._last: torch.Tensor | None = None

    def _counters(self) -> dict:
        s = self.scheduler
        state = {k: getattr(s, k) for k in self._COUNTERS if hasattr(s, k)}
        if "timestep_list" in state:
            state["timestep_list"] = list(state["timestep_list"])
        state["_filled"] = [m is not None for m in s.model_outputs]
        state["_has_last"] = getattr(s, "last_sample", None) is not None
        return state

    def step(self, k: int, t, frames: torch.Tensor, model_out: torch.Tensor, x: torch.Tensor,
             generator=None) -> torch.Tensor:
        """Update frames `frames` (index tensor) at step k: model_out [n, C_out, H, W], x [n, C, H, W] -> x_prev."""
        if not self.multistep:
            return scheduler_step(self.scheduler, model_out[None], t, x[None], generator=generator, eta=self.eta)[0]
        s = self.scheduler
        if k != self._step:  # the first update of step k starts from the counters the last update of k-1 left
            self._step, self._pre = k, self._post
        for name, value in self._pre.items():
            if not name.startswith("_filled") and not name.startswith("_has"):
                setattr(s, name, list(value) if name == "timestep_list" else value)
        s.model_outputs = [h[frames] if filled else None for h, filled in zip(self._history, self._pre["_filled"])]
        if hasattr(s, "last_sample"):
            s.last_sample = self._last[frames] if self._pre["_has_last"] else None
        prev = scheduler_step(s, model_out[None], t, x[None])[0]
        for j, m in enumerate(s.model_outputs):
            if m is not None:
                if self._history[j] is None:
                    self._history[j] = m.new_empty((self.num_frames, *m.shape[1:]))
                self._history[j][frames] = m
        if getattr(s, "last_sample", None) is not None:
            if self._last is None:
                self._last = s.last_sample.new_empty((self.num_frames, *s.last_sample.shape[1:]))
            self._last[frames] = s.last_sample
        self._post = self._counters()
        return prev
