"""DDIM decoding and deterministic DDIM inversion of a diffusion autoencoder (paper 003, §3.1, Eq. 1-3).

A DDIM run of S steps visits the levels a_0 = 1 (the clean image), a_j = alphā(t_j) for the S training timesteps
t_1 < ... < t_S spread evenly over [0, T - 1] (`ddim_timesteps`). Decoding (Eq. 1, 2) walks j = S .. 1:

    eps = eps_theta(x_j, t_j, z),  f = (x_j - sqrt(1 - a_j) eps) / sqrt(a_j),  x_{j-1} = sqrt(a_{j-1}) f + sqrt(1 - a_{j-1}) eps

and inversion (Eq. 3) walks the same levels upwards, j = 0 .. S - 1, with eps evaluated where it stands
(at t_j, and at t = 0 for the clean image, as DiffAE does). Both are deterministic (eta = 0), so with an eps that is the same along the
path (an oracle that knows x_0) decoding the inverted x_T gives x_0 back exactly.
"""

from __future__ import annotations

from typing import Callable

import torch

from anchorface.diffusion.gaussian import check_linear_betas
from anchorface.errors import AnchorfaceError

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [B, C, H, W], t [B] long) -> eps


def linear_alphas_cumprod(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
                          ) -> torch.Tensor:
    """alphā_t = prod_{s <= t} (1 - beta_s) for DDPM's linear betas (DiffAE's schedule), float64 [T]."""
    check_linear_betas(num_timesteps, beta_start, beta_end, "diffusionact")
    betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, 0)


def ddim_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """S distinct training timesteps t_1 < ... < t_S, evenly spread over [0, T - 1] (t_S = T - 1)."""
    if not 1 <= steps <= num_timesteps:
        raise AnchorfaceError(f"DDIM steps must be in [1, {num_timesteps}], got {steps}")
    if steps == 1:
        return [num_timesteps - 1]
    return sorted({round(i * (num_timesteps - 1) / (steps - 1)) for i in range(steps)})


def _levels(alphas_cumprod: torch.Tensor, steps: int) -> tuple[list[int], list[float]]:
    ts = ddim_timesteps(len(alphas_cumprod), steps)
    return ts, [1.0] + [float(alphas_cumprod[t]) for t in ts]


def _step(eps_fn: EpsFn, x: torch.Tensor, t: int, a_from: float, a_to: float, clip: bool) -> torch.Tensor:
    eps = eps_fn(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
    f = (x - (1.0 - a_from) ** 0.5 * eps) / a_from ** 0.5  # Eq. 2: the predicted x_0
    if clip and a_from < 1.0:  # x_0 kept in the pixel range, eps made consistent with it (DiffAE's clip_denoised)
        f = f.clamp(-1.0, 1.0)
        eps = (x - a_from ** 0.5 * f) / (1.0 - a_from) ** 0.5
    return a_to ** 0.5 * f + (1.0 - a_to) ** 0.5 * eps  # Eq. 1 (a_to < a_from) / Eq. 3 (a_to > a_from)


def ddim_decode(eps_fn: EpsFn, x_T: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int,
                clip: bool = False) -> torch.Tensor:
    """x_0 from x_T by S deterministic DDIM steps (Eq. 1-2); `clip`: predicted x_0 clipped to [-1, 1]."""
    ts, a = _levels(alphas_cumprod, steps)
    x = x_T
    for j in range(len(ts), 0, -1):
        x = _step(eps_fn, x, ts[j - 1], a[j], a[j - 1], clip)
    return x


def ddim_invert(eps_fn: EpsFn, x_0: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int,
                clip: bool = False) -> torch.Tensor:
    """The stochastic subcode x_T of x_0 by S deterministic DDIM inversion steps (Eq. 3)."""
    ts, a = _levels(alphas_cumprod, steps)
    x = x_0
    for j in range(len(ts)):
        x = _step(eps_fn, x, ts[j - 1] if j else 0, a[j], a[j + 1], clip)
    return x
