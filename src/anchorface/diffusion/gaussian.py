"""Gaussian diffusion as in DiT / improved DDPM (App. D: t_max = 1000, linear betas, learned sigma).

Training uses DiT's "hybrid" objective on [B, T, C, H, W] sequences: the (per-pixel weighted, §4.1) ε-MSE plus
the variational bound with a stop-gradient on the predicted mean, which trains only the variance channels.
Sampling uses diffusers' DDPM / DDIM schedulers with the same betas, at any number of steps (respacing).

`DiffusionConfig.prediction` picks what the first C output channels predict:
- ε: DiT and the paper (default), for VAE latents whose 2x2 patches hold 16 values;
- v = sqrt(abar) ε - sqrt(1 - abar) x0 (Salimans & Ho 2022): well conditioned at every t;
- x0, the clean frames, for the weight-free pixel codec (`tiny`, `demo`), whose patches hold 192 values. Noise
  fills all 192 dimensions of a patch while images lie near a low-dimensional set, so a small model predicting ε or
  v leaves token-sized noise that DDIM compounds into a mosaic; predicting x0 does not (Li & He 2025, "Back to
  Basics: Let Denoising Generative Models Denoise"). Its loss is the v-loss written in x0, (1 + SNR_t)
  |x0 - x0_hat|^2, with SNR_t truncated at `x0_loss_snr_cap` so that the nearly clean steps do not dominate.
Everything else (learned sigma, the VB term, the expressive weighting, guidance) is the same; the VB term sees the
ε implied by the prediction.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from anchorface.config import DiffusionConfig
from anchorface.errors import AnchorfaceError

CHANNEL_DIM = 2  # [B, T, C, H, W]
PREDICTIONS = ("epsilon", "v", "x0")
_DIFFUSERS_PREDICTION = {"epsilon": "epsilon", "v": "v_prediction", "x0": "sample"}
MAX_TIMESTEPS = 100_000  # far above any schedule used (1000); a checkpoint asking for more is corrupt


def check_linear_betas(num_timesteps: int, beta_start: float, beta_end: float, where: str = "diffusion") -> None:
    """AnchorfaceError (one line) unless 0 < beta_start <= beta_end < 1 and 2 <= num_timesteps <= MAX_TIMESTEPS:
    the linear schedule of App. D that a hand-edited or corrupt checkpoint config could break (NaN frames, or an
    allocation of terabytes; the posterior's clipped log-variance needs a second step)."""
    if not 2 <= num_timesteps <= MAX_TIMESTEPS:
        raise AnchorfaceError(f"{where}.num_timesteps must be in 2..{MAX_TIMESTEPS}, got {num_timesteps}")
    if not 0 < beta_start <= beta_end < 1:
        raise AnchorfaceError(f"{where}: need 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}")


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x, means, log_scales, bin_width: float = 2 / 255):
    """log P(x) of a Gaussian integrated over the bin of width `bin_width` around x (data assumed in [-1, 1],
    the outermost bins extend to ±inf), as improved DDPM's decoder. Uses the exact normal CDF."""
    inv_std = torch.exp(-log_scales)
    cdf_plus = torch.special.ndtr(inv_std * (x - means + bin_width / 2))
    cdf_min = torch.special.ndtr(inv_std * (x - means - bin_width / 2))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)


class GaussianDiffusion:
    """The forward process q and the learned-sigma reverse process p of DiT, for [B, T, C, H, W] latents."""

    def __init__(self, cfg: DiffusionConfig | None = None):
        self.cfg = cfg = cfg or DiffusionConfig()
        if cfg.prediction not in PREDICTIONS:
            raise AnchorfaceError(f"diffusion.prediction must be one of {', '.join(PREDICTIONS)}, got "
                                  f"'{cfg.prediction}'")
        self.prediction = cfg.prediction
        if cfg.x0_loss_snr_cap < 0:
            raise AnchorfaceError(f"diffusion.x0_loss_snr_cap must be >= 0, got {cfg.x0_loss_snr_cap}")
        check_linear_betas(cfg.num_timesteps, cfg.beta_start, cfg.beta_end)
        self.num_timesteps = cfg.num_timesteps
        self.betas = np.linspace(cfg.beta_start, cfg.beta_end, cfg.num_timesteps, dtype=np.float64)
        alphas = 1.0 - self.betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)
        # q(x_{t-1} | x_t, x_0)
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # the variance is 0 at t = 0: clip its log there to the value at t = 1 (as DiT)
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1],
                                                               self.posterior_variance[1:]))
        self.posterior_mean_coef1 = self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    @staticmethod
    def _extract(arr: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """arr[t] as float32 [B, 1, 1, ...] broadcastable to `like`."""
        out = torch.from_numpy(arr).to(t.device)[t.long()].float()
        return out.view(-1, *([1] * (like.ndim - 1)))

    def target(self, x0, noise, t):
        """What the first C output channels are trained to predict: the noise, v, or x0."""
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "x0":
            return x0
        return (self._extract(self.sqrt_alphas_cumprod, t, x0) * noise
                - self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0)

    def eps_from_prediction(self, pred, x_t, t):
        """The ε implied by the model's prediction: identity for ε; ε = sqrt(abar) v + sqrt(1 - abar) x_t;
        ε = (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""
        if self.prediction == "epsilon":
            return pred
        if self.prediction == "x0":
            return ((x_t - self._extract(self.sqrt_alphas_cumprod, t, x_t) * pred)
                    / self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_t))
        return (self._extract(self.sqrt_alphas_cumprod, t, x_t) * pred
                + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t)

    def x0_from_prediction(self, pred, x_t, t):
        """The x0 implied by the model's prediction at x_t: x0 = (x_t - sqrt(1 - abar) ε) / sqrt(abar)."""
        if self.prediction == "x0":
            return pred
        eps = self.eps_from_prediction(pred, x_t, t)
        return (self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)

    def q_sample(self, x0, t, noise):
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        return (self._extract(self.sqrt_alphas_cumprod, t, x0) * x0
                + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def q_posterior_mean_variance(self, x0, x_t, t):
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0)."""
        mean = self._extract(self.posterior_mean_coef1, t, x_t) * x0 + self._extract(self.posterior_mean_coef2, t,
                                                                                         x_t) * x_t
        return mean, self._extract(self.posterior_variance, t, x_t), self._extract(
            self.posterior_log_variance_clipped, t, x_t)

    def p_mean_variance(self, model_out, x_t, t):
        """p(x_{t-1} | x_t) from a learned-sigma output [prediction, v]: log variance = frac * log(beta_t)
        + (1 - frac) * log(posterior variance), frac = (v + 1) / 2 (improved DDPM, eq. 15)."""
        pred, v = model_out.split(x_t.shape[CHANNEL_DIM], dim=CHANNEL_DIM)
        eps = self.eps_from_prediction(pred, x_t, t)
        min_log = self._extract(self.posterior_log_variance_clipped, t, x_t)
        max_log = self._extract(np.log(self.betas), t, x_t)
        frac = (v + 1) / 2
        log_variance = frac * max_log + (1 - frac) * min_log
        pred_x0 = (self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                   - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
        return dict(mean=mean, variance=torch.exp(log_variance), log_variance=log_variance, pred_x0=pred_x0)

    def vb_terms_bpd(self, model_out, x0, x_t, t):
        """The variational-bound term per sample, in bits per dimension: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))
        for t > 0 and the discretized Gaussian decoder NLL of x_0 at t = 0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        p = self.p_mean_variance(model_out, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, p["mean"], p["log_variance"])) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"])) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(self, model_out, x0, x_t, t, noise, weight=None) -> dict[str, torch.Tensor]:
        """DiT's hybrid loss per sample [B]: mse = mean(weight * (target - prediction)^2) with target = ε (or v),
        weight broadcastable to [B, T, C, H, W] (e.g. the (1 + λ_ex) map [B, T, 1, H, W] of §4.1); vb = the
        variational bound with the predicted mean detached, scaled by num_timesteps / 1000 as DiT; loss = mse + vb.
        A model output with C channels (no learned sigma) gives vb = 0."""
        C = x0.shape[CHANNEL_DIM]
        pred = model_out[:, :, :C]
        sq = (self.target(x0, noise, t) - pred) ** 2
        if self.prediction == "x0":  # the v-loss (1 + SNR) |x0 - x0_hat|^2, its SNR truncated at x0_loss_snr_cap
            snr = self._extract(self.snr, t, x0)
            sq = sq * (1.0 + snr.clamp(max=self.cfg.x0_loss_snr_cap))
        mse = mean_flat(sq if weight is None else weight * sq)
        if model_out.shape[CHANNEL_DIM] == 2 * C:
            frozen = torch.cat([pred.detach(), model_out[:, :, C:]], dim=CHANNEL_DIM)
            vb = self.vb_terms_bpd(frozen, x0, x_t, t) * (self.num_timesteps / 1000.0)
        else:
            vb = torch.zeros_like(mse)
        return dict(loss=mse + vb, mse=mse, vb=vb)

    def make_scheduler(self, kind: str = "ddpm", steps: int | None = None, learned_sigma: bool = True):
        """`sampling.make_scheduler` with these betas and this prediction."""
        from anchorface.diffusion.sampling import make_scheduler

        return make_scheduler(self, kind, steps, learned_sigma)
