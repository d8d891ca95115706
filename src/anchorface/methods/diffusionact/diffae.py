"""The diffusion autoencoder (DiffAE) DiffusionAct builds on (paper 003, §3.1): a semantic encoder E (image ->
z in R^d, d = 512 in the paper) and a conditional UNet eps_theta(x_t, t, z).

The UNet is conditioned as DiffAE does it, by adaptive group normalisation in every residual block:
AdaGN(h, t, z) = (1 + z_s) ((1 + t_s) GroupNorm(h) + t_b), with (t_s, t_b) from the timestep embedding and z_s
from the semantic code (DiffAE writes z_s (t_s GN(h) + t_b); the 1 + offsets start both at identity). The encoder
is the UNet's downsampling half (residual blocks, no conditioning) with global average pooling and a linear map
to z. Both are small, own modules (widths, levels and attention resolutions are set by `DiffusionActConfig`).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anchorface.errors import AnchorfaceError
from anchorface.io.weights import load_module, save_module

GROUPS = 8  # GroupNorm groups (every width is a multiple)


def parse_ints(text: str | list | tuple, what: str) -> tuple[int, ...]:
    """"1,2,2,4" -> (1, 2, 2, 4); AnchorfaceError naming `what` otherwise ("" -> ())."""
    if isinstance(text, (list, tuple)):
        return tuple(int(v) for v in text)
    try:
        return tuple(int(v) for v in str(text).replace(" ", "").split(",") if v)
    except ValueError:
        raise AnchorfaceError(f"{what}: expected comma-separated integers, got {text!r}") from None


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    """GN-SiLU-conv, AdaGN(t, z) (when conditioned), SiLU-conv (zero-initialised), plus the skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int = 0, z_dim: int = 0):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(GROUPS, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(GROUPS, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.emb = nn.Linear(emb_dim, 2 * c_out) if emb_dim else None
        self.zmap = nn.Linear(z_dim, c_out) if z_dim else None
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb=None, z=None):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.emb is not None:
            t_s, t_b = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
            h = (1 + t_s) * h + t_b
        if self.zmap is not None:
            h = (1 + self.zmap(z)[:, :, None, None]) * h
        return self.skip(x) + self.conv2(F.silu(h))


class Attention(nn.Module):
    """Self-attention over the pixels of a feature map (one head per 32 channels, or one head where that does not
    divide the width), residual."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = nn.GroupNorm(GROUPS, c)
        heads = max(1, c // 32)
        self.attn = nn.MultiheadAttention(c, heads if c % heads == 0 else 1, batch_first=True)

    def forward(self, x, *_):
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)
        h = self.attn(h, h, h, need_weights=False)[0]
        return x + h.transpose(1, 2).reshape(B, C, H, W)


class _Persist:
    """save_pretrained / from_pretrained: config.json + model.safetensors (each written atomically)."""

    KIND = "module"

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        save_module(directory, {"type": self.KIND, **self.config}, self)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu"):
        return load_module(cls, directory, cls.KIND, cls.KIND).to(device).eval()


class SemanticEncoder(_Persist, nn.Module):
    """E: image [B, 3, R, R] in [-1, 1] -> semantic code z [B, z_dim] (§3.1). Stages of two residual blocks halve
    the resolution down to 4x4 (widths c, 2c, 4c, 4c, ...), then GN-SiLU, global average pooling and a linear map."""

    KIND = "semantic_encoder"

    def __init__(self, z_dim: int = 512, channels: int = 64, resolution: int = 64, in_channels: int = 3):
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise AnchorfaceError(f"the semantic encoder needs a power-of-two resolution >= 8, got {resolution}")
        self.config: dict[str, Any] = {"z_dim": z_dim, "channels": channels, "resolution": resolution,
                                       "in_channels": in_channels}
        self.z_dim = z_dim
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        blocks: list[nn.Module] = []
        c, res, level = channels, resolution, 0
        while True:
            c_out = channels * min(2 ** level, 4)
            blocks += [ResBlock(c, c_out), ResBlock(c_out, c_out)]
            c = c_out
            if res <= 4:
                break
            blocks.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
            res, level = res // 2, level + 1
        self.blocks = nn.ModuleList(blocks)
        self.norm, self.head = nn.GroupNorm(GROUPS, c), nn.Linear(c, z_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for b in self.blocks:
            h = b(h)
        return self.head(F.silu(self.norm(h)).mean(dim=(2, 3)))


class ConditionalUNet(_Persist, nn.Module):
    """eps_theta(x_t, t, z): a UNet whose residual blocks are conditioned on t and z by AdaGN (§3.1)."""

    KIND = "diffae_unet"

    def __init__(self, resolution: int = 64, channels: int = 64, mults: tuple | list | str = (1, 2, 2, 4),
                 blocks: int = 2, attention_res: tuple | list | str = (16,), z_dim: int = 512,
                 in_channels: int = 3):
        super().__init__()
        mults, attention_res = parse_ints(mults, "unet_mults"), parse_ints(attention_res, "attention_res")
        if not mults or resolution % 2 ** (len(mults) - 1):
            raise AnchorfaceError(f"resolution {resolution} cannot be halved {len(mults) - 1} times (unet_mults)")
        self.config: dict[str, Any] = {"resolution": resolution, "channels": channels, "mults": list(mults),
                                       "blocks": blocks, "attention_res": list(attention_res), "z_dim": z_dim,
                                       "in_channels": in_channels}
        emb = 4 * channels
        self.channels, self.z_dim = channels, z_dim
        self.time_mlp = nn.Sequential(nn.Linear(channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down, skips = nn.ModuleList(), [channels]
        c, res = channels, resolution
        for i, m in enumerate(mults):
            for _ in range(blocks):
                layer = nn.ModuleList([ResBlock(c, channels * m, emb, z_dim)])
                c = channels * m
                if res in attention_res:
                    layer.append(Attention(c))
                self.down.append(layer)
                skips.append(c)
            if i < len(mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                skips.append(c)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(c, c, emb, z_dim), Attention(c), ResBlock(c, c, emb, z_dim)])
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(mults))):
            for _ in range(blocks + 1):
                layer = nn.ModuleList([ResBlock(c + skips.pop(), channels * m, emb, z_dim)])
                c = channels * m
                if res in attention_res:
                    layer.append(Attention(c))
                self.up.append(layer)
            if i > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"),
                                              nn.Conv2d(c, c, 3, padding=1)]))
                res *= 2
        self.norm_out, self.conv_out = nn.GroupNorm(GROUPS, c), nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @staticmethod
    def _run(layer, h, emb, z):
        for m in layer:
            h = m(h, emb, z) if isinstance(m, (ResBlock, Attention)) else m(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.channels))
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = self._run(layer, h, emb, z)
            hs.append(h)
        h = self._run(self.mid, h, emb, z)
        for layer in self.up:
            if isinstance(layer[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(layer, h, emb, z)
        return self.conv_out(F.silu(self.norm_out(h)))


class DiffAE(nn.Module):
    """E + eps_theta + the noise schedule: `encode`, `eps`, the diffusion loss, DDIM inversion / decoding (§3.1)."""

    def __init__(self, encoder: SemanticEncoder, unet: ConditionalUNet, num_timesteps: int = 1000,
                 beta_start: float = 1e-4, beta_end: float = 0.02):
        from anchorface.methods.diffusionact.ddim import linear_alphas_cumprod

        super().__init__()
        self.encoder, self.unet = encoder, unet
        self.clip = True  # DDIM keeps the predicted x_0 in [-1, 1] (DiffAE samples with clip_denoised)
        self.register_buffer("alphas_cumprod", linear_alphas_cumprod(num_timesteps, beta_start, beta_end),
                             persistent=False)

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def eps_fn(self, z: torch.Tensor):
        return lambda x, t: self.unet(x, t, z)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t].float()[:, None, None, None]
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def predict_x0(self, x_t, t, z):
        """f_theta (Eq. 2)."""
        a = self.alphas_cumprod[t].float()[:, None, None, None]
        return (x_t - (1 - a).sqrt() * self.unet(x_t, t, z)) / a.sqrt()

    def diffusion_loss(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """DiffAE's training loss: ||eps_theta(x_t, t, E(x_0)) - eps||^2, per sample [B]."""
        pred = self.unet(self.q_sample(x0, t, noise), t, self.encoder(x0))
        return (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))

    def invert(self, x0: torch.Tensor, z: torch.Tensor, steps: int) -> torch.Tensor:
        from anchorface.methods.diffusionact.ddim import ddim_invert

        return ddim_invert(self.eps_fn(z), x0, self.alphas_cumprod, steps, clip=self.clip)

    def decode(self, x_T: torch.Tensor, z: torch.Tensor, steps: int) -> torch.Tensor:
        from anchorface.methods.diffusionact.ddim import ddim_decode

        return ddim_decode(self.eps_fn(z), x_T, self.alphas_cumprod, steps, clip=self.clip)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.float().clamp(-1, 1) - b.float().clamp(-1, 1)).pow(2).mean().item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


@torch.no_grad()
def reconstruction_psnr(model: DiffAE, x0: torch.Tensor, t: int = 500, seed: int = 0) -> float:
    """How well the DiffAE reconstructs x0 from its semantic code and a noisy x_t (fixed t and noise): PSNR of
    f_theta(x_t, t, E(x0)) against x0. (A DDIM round trip is no test of training: it inverts any eps exactly
    enough.)"""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
    x_t = model.q_sample(x0, tt, noise)
    return psnr(model.predict_x0(x_t, tt, model.encode(x0)), x0)
