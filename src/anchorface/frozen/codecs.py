"""Frozen latent codecs (App. D): the denoiser works on `encode(pixels)` and its samples are `decode`d to pixels.

- `sd-vae`  (`SDVAECodec`): the paper's codec, Stable Diffusion's VAE (diffusers `AutoencoderKL`), x8 down,
  4 channels, latents scaled by the VAE config's `scaling_factor` (0.18215 for SD 1.x).
- `pixel`   (`PixelCodec`): exact, weight-free space-to-depth; the no-download path for small-scale work.

Pixels are `[N, 3, H, W]` float in [-1, 1] (`to_pixels` / `to_uint8` convert from / to uint8 RGB frames);
latents are `[N, C, H/f, W/f]` float32.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anchorface.errors import AnchorfaceError, MissingWeightsError, one_line

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def to_pixels(frames) -> torch.Tensor:
    """uint8 RGB frames `[..., H, W, 3]` (numpy or torch) -> float32 pixels `[..., 3, H, W]` in [-1, 1], the range
    the codecs and encoders take (the inverse of `to_uint8` up to rounding)."""
    x = frames if torch.is_tensor(frames) else torch.from_numpy(np.ascontiguousarray(frames))
    return x.movedim(-1, -3).float() / 127.5 - 1.0


def to_uint8(px: torch.Tensor) -> np.ndarray:
    """float pixels `[..., 3, H, W]` in [-1, 1] -> uint8 RGB frames `[..., H, W, 3]` (numpy; clamped, rounded)."""
    return ((px.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()


def decode_to_uint8(codec: "LatentCodec", latents: torch.Tensor, batch_size: int = 8):
    """Decode latents [N, C, h, w] `batch_size` at a time into uint8 RGB frames [H, W, 3] (numpy), in order; the
    frames equal `to_uint8(codec.decode(z))`. On CUDA the uint8 conversion runs on the device and each batch is
    copied into pinned host memory without blocking, so the copy of batch i overlaps the decoding of batch i + 1
    (a quarter of the float32 bytes cross the bus, asynchronously)."""
    cuda = latents.device.type == "cuda"
    pending = None  # (pinned host frames, CUDA event) of the previous batch
    for i in range(0, len(latents), batch_size):
        px = codec.decode(latents[i:i + batch_size])
        u8 = ((px.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1)
        if not cuda:
            yield from u8.numpy()
            continue
        host = torch.empty(u8.shape, dtype=torch.uint8, pin_memory=True)
        host.copy_(u8, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        if pending is not None:
            pending[1].synchronize()
            yield from pending[0].numpy()
        pending = (host, done)
    if pending is not None:
        pending[1].synchronize()
        yield from pending[0].numpy()


class LatentCodec(nn.Module):
    """Frozen encoder/decoder between pixels and the denoiser's latent space. Always in eval mode, no gradients.

    `encode` / `decode` take a `batch_size` (None = all at once) to bound peak memory on long videos."""

    factor: int  # spatial down-sampling factor f
    channels: int  # latent channels C

    def _freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "LatentCodec":  # a frozen codec stays in eval mode
        return super().train(False)

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        if resolution % self.factor:
            raise AnchorfaceError(f"resolution {resolution} is not divisible by the codec's factor {self.factor}")
        return self.channels, resolution // self.factor, resolution // self.factor

    @property
    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, px: torch.Tensor, batch_size: int | None = None, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """`[N, 3, H, W]` pixels in [-1, 1] -> `[N, C, H/f, W/f]` float32 latents (on the input's device)."""
        if px.ndim != 4 or px.shape[1] != 3:
            raise ValueError(f"encode expects pixels [N, 3, H, W], got {tuple(px.shape)}")
        if px.shape[-1] % self.factor or px.shape[-2] % self.factor:
            raise ValueError(f"pixel size {tuple(px.shape[-2:])} is not divisible by the codec's factor {self.factor}")
        return _batched(lambda x: self._encode(x, generator), px, batch_size)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """`[N, C, h, w]` latents -> `[N, 3, h*f, w*f]` float32 pixels, clamped to [-1, 1]."""
        if z.ndim != 4 or z.shape[1] != self.channels:
            raise ValueError(f"decode expects latents [N, {self.channels}, h, w], got {tuple(z.shape)}")
        return _batched(lambda x: self._decode(x).clamp(-1, 1), z, batch_size)

    def _encode(self, px: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    step = batch_size or max(x.shape[0], 1)
    return torch.cat([fn(x[i:i + step]).float().to(x.device) for i in range(0, max(x.shape[0], 1), step)])


class PixelCodec(LatentCodec):
    """Exact, weight-free space-to-depth (`pixel_unshuffle` by `factor`): `[3, H, W] -> [3 f^2, H/f, W/f]`.

    NOT the paper's VAE: it compresses nothing. It is the no-download path for small-scale work (the `tiny`
    preset), giving the denoiser a latent grid of the same shape logic with a lossless round trip."""

    def __init__(self, factor: int = 4):
        super().__init__()
        if factor < 1:
            raise AnchorfaceError(f"pixel codec factor must be >= 1, got {factor}")
        self.factor = int(factor)
        self.channels = 3 * self.factor**2
        self._freeze()

    @property
    def config(self) -> dict[str, Any]:
        return {"type": "pixel", "factor": self.factor}

    def _encode(self, px, generator):
        return F.pixel_unshuffle(px.float(), self.factor)

    def _decode(self, z):
        return F.pixel_shuffle(z.float(), self.factor)


VAE_HINT = ("download an AutoencoderKL, e.g. `hf download stabilityai/sd-vae-ft-ema --local-dir DIR`, and set "
            "data.codec_path: DIR (or use the weight-free `data.codec: pixel`)")


class SDVAECodec(LatentCodec):
    """Stable Diffusion's VAE (diffusers `AutoencoderKL`), as in App. D: latents = (mean - shift) * scaling_factor.

    `path`: a local directory or a hub id; a Stable Diffusion pipeline directory works too (its `vae` subfolder
    is found automatically). `sample=True` encodes a sample of the posterior instead of its mean.
    f = 2^(len(block_out_channels) - 1), C = latent_channels, both from the VAE's config."""

    def __init__(self, path: str | os.PathLike = "stabilityai/sd-vae-ft-ema", subfolder: str | None = None,
                 dtype: torch.dtype = torch.float32, sample: bool = False):
        super().__init__()
        from diffusers import AutoencoderKL

        self.path, self.sample = str(path), sample
        self.vae, self.subfolder = load_pretrained(AutoencoderKL.from_pretrained, path, "SD-VAE", VAE_HINT,
                                                   subfolder=subfolder, pipeline_subfolder="vae", torch_dtype=dtype)
        cfg = self.vae.config
        self.factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.channels = int(cfg.latent_channels)
        self.scaling_factor = float(cfg.scaling_factor)
        self.shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)
        self.dtype = dtype
        self._freeze()

    @property
    def config(self) -> dict[str, Any]:
        return {"type": "sd-vae", "path": self.path, "subfolder": self.subfolder, "sample": self.sample,
                "scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor,
                "factor": self.factor, "channels": self.channels}

    def _device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def _encode(self, px, generator):
        dist = self.vae.encode(px.to(self._device(), self.dtype)).latent_dist
        z = dist.sample(generator) if self.sample else dist.mean
        return (z - self.shift_factor) * self.scaling_factor

    def _decode(self, z):
        z = z.to(self._device(), self.dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample


def load_codec(data_cfg, dtype: torch.dtype = torch.float32) -> LatentCodec:
    """The codec named by `data.codec` ("sd-vae" | "pixel"), checked against `data.resolution`."""
    if data_cfg.codec == "pixel":
        codec = PixelCodec(data_cfg.pixel_factor)
    elif data_cfg.codec == "sd-vae":
        codec = SDVAECodec(data_cfg.codec_path, dtype=dtype)
    else:
        raise AnchorfaceError(f"unknown data.codec '{data_cfg.codec}'; choose 'sd-vae' or 'pixel'")
    codec.latent_shape(data_cfg.resolution)  # raises when the resolution does not fit the codec
    return codec


# ------------------------------------------------------------------------------- pretrained weights, one home
def load_pretrained(from_pretrained: Callable, path: str | os.PathLike, what: str, hint: str,
                    subfolder: str | None = None, pipeline_subfolder: str | None = None, **kwargs):
    """Call a Hugging Face `from_pretrained` on a local directory or a hub id, turning every "not there" into a
    one-line MissingWeightsError (what was looked for + `hint` on how to provide it).

    A directory is loaded with `local_files_only=True` (never a network call). A Stable Diffusion pipeline
    (a directory without `config.json`, or a hub id without one at its root) is read from `pipeline_subfolder`.
    Returns `(model, subfolder_used)`."""
    text = str(path)
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir():
            raise MissingWeightsError(f"{what} weights not found at '{text}' (not a directory); {hint}")
        if subfolder is None and pipeline_subfolder and not (local / "config.json").exists() \
                and (local / pipeline_subfolder / "config.json").exists():
            subfolder = pipeline_subfolder
        candidates = [subfolder]
        source, kwargs = str(local), {**kwargs, "local_files_only": True}
    elif _HUB_ID.match(text) and not text.startswith((".", "~")):
        candidates = [subfolder] if subfolder is not None else [None, pipeline_subfolder] if pipeline_subfolder \
            else [None]
        source = text
    else:
        raise MissingWeightsError(f"{what} weights not found at '{text}' (no such directory); {hint}")
    from safetensors import SafetensorError

    reason = ""
    for sub in candidates:
        try:
            kw = {**kwargs, "subfolder": sub} if sub else kwargs
            return from_pretrained(source, **kw), sub
        except SafetensorError as e:  # the weights are there but truncated or corrupt (an interrupted download)
            raise MissingWeightsError(f"{what} weights at '{text}' cannot be read (truncated or corrupt file: "
                                      f"{one_line(e)}); {hint}") from None
        except (OSError, ValueError) as e:  # missing files / not cached / offline / unreachable hub
            reason = reason or one_line(e)[:160]
    where = "" if local.exists() else "no such directory, and not in the hub cache (hub unreachable or offline): "
    raise MissingWeightsError(f"{what} weights not found at '{text}' ({where}{reason}); {hint}")

