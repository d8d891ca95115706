"""The jointly learned global encoder G (§3.1 with a small CNN in place of CLIP): the no-download path for
small-scale work (`data.encoder: learned`), trained with the sDiT and saved in its checkpoint, and `load_encoder`,
which picks G from the config (`clip`, frozen, from `frozen/encoders.py`, or `learned`)."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anchorface.errors import AnchorfaceError
from anchorface.frozen.encoders import GlobalEncoder, _check_pixels, load_clip
from anchorface.io.weights import load_module, save_module


class LearnedGlobalEncoder(GlobalEncoder):
    """A small CNN G trained jointly with the denoiser: the no-download path for small-scale work (not the paper's
    CLIP). Strided 3x3 conv stages with GroupNorm + SiLU, global average pooling, a linear map to `dim`.
    Inputs of another size are resized (bilinear, antialiased) to `resolution` first."""

    trainable = True

    def __init__(self, dim: int, resolution: int, widths: tuple[int, ...] = (32, 64, 128, 256), groups: int = 8):
        super().__init__()
        if dim <= 0:
            raise AnchorfaceError(f"the learned global encoder needs a positive dimension, got {dim}")
        if any(c <= 0 or c % groups for c in widths):
            raise AnchorfaceError(f"the learned global encoder's widths must be positive multiples of {groups} "
                                  f"(GroupNorm groups), got {list(widths)}")
        self.dim, self.resolution, self.widths, self.groups = int(dim), int(resolution), tuple(widths), int(groups)
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        c_in = widths[0]
        for c in widths:  # each stage halves the resolution
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(groups, c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(groups, c), nn.SiLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, self.dim)

    @property
    def config(self) -> dict[str, Any]:
        return {"type": "learned", "dim": self.dim, "resolution": self.resolution, "widths": list(self.widths),
                "groups": self.groups}

    def encode_images(self, px: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        _check_pixels(px)
        x = px.float()
        if tuple(x.shape[-2:]) != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution,) * 2, mode="bilinear", antialias=True, align_corners=False)
        step = batch_size or max(x.shape[0], 1)
        return torch.cat([self.head(self.features(x[i:i + step]).mean(dim=(2, 3)))
                          for i in range(0, x.shape[0], step)])

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """`config.json` + `model.safetensors`, each written atomically."""
        save_module(directory, self.config, self)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "LearnedGlobalEncoder":
        return load_module(cls, directory, "learned", "learned global encoder", default_kind="learned")


def load_encoder(data_cfg, global_dim: int, dtype: torch.dtype = torch.float32) -> GlobalEncoder | None:
    """The encoder named by `data.encoder` ("clip" | "learned") giving `global_dim`-d embeddings
    (`model.global_dim`); None when `global_dim == 0` (no global conditioning)."""
    if global_dim == 0:
        return None
    if data_cfg.encoder == "learned":
        w = data_cfg.encoder_width
        return LearnedGlobalEncoder(global_dim, data_cfg.resolution, widths=(w, 2 * w, 4 * w, 8 * w))
    if data_cfg.encoder == "clip":
        return load_clip(data_cfg, global_dim, dtype)
    raise AnchorfaceError(f"unknown data.encoder '{data_cfg.encoder}'; choose 'clip' or 'learned'")

