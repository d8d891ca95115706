"""Global encoders G (§3.1, §4.4): one vector per source image (or text prompt) that conditions every frame.

- `clip`    (`CLIPGlobalEncoder`): the paper's G, a frozen CLIP (transformers `CLIPModel`) image embedding;
  text embeddings from the same model give text-to-video (§4.4). The authors' earlier code used ViT-L/14.
- `learned`: a small CNN trained jointly with the denoiser, the no-download path for small-scale work; it is
  part of a method, not frozen, and lives in `methods/anchored/global_encoder.py`.

Input pixels are `[N, 3, H, W]` float in [-1, 1]; embeddings are `[N, dim]` float32 on the input's device.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anchorface.frozen.codecs import load_pretrained
from anchorface.errors import AnchorfaceError, MissingWeightsError, require

TEXT_NEEDS_CLIP = "text prompts need the CLIP global encoder (data.encoder: clip)"


class GlobalEncoder(nn.Module):
    """G: images (and, for CLIP, texts) -> `[N, dim]` embeddings. `trainable` says whether it learns with the
    denoiser (and is saved in the checkpoint) or is a frozen pretrained model."""

    dim: int
    trainable: bool = False

    @property
    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def encode_images(self, px: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        raise AnchorfaceError(TEXT_NEEDS_CLIP)

    def forward(self, px: torch.Tensor) -> torch.Tensor:
        return self.encode_images(px)


def _check_pixels(px: torch.Tensor) -> None:
    if px.ndim != 4 or px.shape[1] != 3:
        raise ValueError(f"expected pixels [N, 3, H, W] in [-1, 1], got {tuple(px.shape)}")


# ------------------------------------------------------------------------------------------------------- CLIP
CLIP_HINT = ("download a CLIP model with its processor and tokenizer, e.g. `hf download "
             "openai/clip-vit-large-patch14 --local-dir DIR` (ViT-L/14, the authors' earlier choice), and set "
             "data.encoder_path: DIR (or use `data.encoder: learned`)")


def _size_field(size, key: str):
    """Read `shortest_edge` / `height` / `width` from a processor's size (a dict, or a SizeDict in transformers 5)."""
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


class CLIPGlobalEncoder(GlobalEncoder):
    """Frozen CLIP projection embeddings (`get_image_features` / `get_text_features`).

    Preprocessing follows the checkpoint's `CLIPImageProcessor` settings but runs on tensors (no PIL round trip):
    resize the shortest side to `size.shortest_edge` (bicubic, antialiased), center-crop to `crop_size`,
    normalise with `image_mean` / `image_std`. (Pillow's bicubic on uint8 differs by quantisation only.)
    Embeddings are the unnormalised projections, as CLIP returns them; `normalize=True` L2-normalises them
    (cosine similarity, as in CSIM, is unaffected either way)."""

    def __init__(self, path: str | os.PathLike = "openai/clip-vit-large-patch14", normalize: bool = False,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        require("transformers", "clip", "CLIP")
        from transformers import CLIPModel

        try:  # transformers >= 5 without torchvision: the PIL-backed class, under its own name (no warning)
            from transformers import CLIPImageProcessorPil as ImageProcessor
        except ImportError:
            from transformers import CLIPImageProcessor as ImageProcessor

        self.path, self.normalize, self.dtype = str(path), normalize, dtype
        self.model, _ = load_pretrained(CLIPModel.from_pretrained, path, "CLIP", CLIP_HINT)
        self.model.to(dtype)
        proc, _ = load_pretrained(ImageProcessor.from_pretrained, path, "CLIP image processor", CLIP_HINT)
        self._tokenizer = None  # loaded on the first text prompt: image-only use needs no tokenizer files
        self.dim = int(self.model.config.projection_dim)
        self.max_text_length = int(self.model.config.text_config.max_position_embeddings)

        shortest = _size_field(proc.size, "shortest_edge")
        self.resize = None if not proc.do_resize else \
            int(shortest) if shortest else (int(_size_field(proc.size, "height")), int(_size_field(proc.size, "width")))
        self.crop = (int(_size_field(proc.crop_size, "height")), int(_size_field(proc.crop_size, "width"))) \
            if proc.do_center_crop else None
        mean, std = (proc.image_mean, proc.image_std) if proc.do_normalize else ((0.0,) * 3, (1.0,) * 3)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "CLIPGlobalEncoder":  # frozen: always in eval mode
        return super().train(False)

    @property
    def config(self) -> dict[str, Any]:
        return {"type": "clip", "path": self.path, "dim": self.dim, "normalize": self.normalize}

    def preprocess(self, px: torch.Tensor) -> torch.Tensor:
        """`[N, 3, H, W]` in [-1, 1] -> CLIP's normalised input, on tensors."""
        x = ((px.float() + 1) / 2).clamp(0, 1)
        if self.resize is not None:
            h, w = x.shape[-2:]
            if isinstance(self.resize, int):
                s = self.resize
                size = (s, max(s, int(s * w / h))) if h <= w else (max(s, int(s * h / w)), s)
            else:
                size = self.resize
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        if self.crop is not None:
            ch, cw = self.crop
            h, w = x.shape[-2:]
            if h < ch or w < cw:
                raise ValueError(f"image {h}x{w} is smaller than CLIP's crop {ch}x{cw} (resizing is disabled)")
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[..., top:top + ch, left:left + cw]
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    @torch.no_grad()
    def encode_images(self, px: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        _check_pixels(px)
        device = next(self.model.parameters()).device
        step = batch_size or max(px.shape[0], 1)
        outs = []
        for i in range(0, px.shape[0], step):
            x = self.preprocess(px[i:i + step].to(device)).to(self.dtype)
            outs.append(_features(self.model.get_image_features(pixel_values=x)))
        return self._finish(torch.cat(outs), px.device)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer()
        device = next(self.model.parameters()).device
        tok = self._tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_text_length,
                              return_tensors="pt").to(device)
        out = self.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
        return self._finish(_features(out), device)

    def _load_tokenizer(self):
        from transformers import CLIPTokenizer

        missing = MissingWeightsError(f"CLIP tokenizer not found at '{self.path}' (no tokenizer.json, or vocab.json "
                                      f"+ merges.txt); {CLIP_HINT}")
        local = Path(self.path).expanduser()
        if local.is_dir() and not ((local / "tokenizer.json").is_file()
                                   or ((local / "vocab.json").is_file() and (local / "merges.txt").is_file())):
            raise missing
        tok, _ = load_pretrained(CLIPTokenizer.from_pretrained, self.path, "CLIP tokenizer", CLIP_HINT)
        if len(tok) <= len(set(tok.all_special_tokens)):  # transformers 5 builds an empty BPE when files are absent
            raise missing
        return tok

    def _finish(self, emb: torch.Tensor, device) -> torch.Tensor:
        emb = emb.float()
        if self.normalize:
            emb = F.normalize(emb, dim=-1)
        return emb.to(device)


def _features(out) -> torch.Tensor:
    """transformers < 5 returns the projected embedding; >= 5 returns an output whose `pooler_output` is it."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def load_clip(data_cfg, global_dim: int, dtype: torch.dtype = torch.float32) -> CLIPGlobalEncoder:
    """The frozen CLIP encoder at `data.encoder_path`, checked to give `global_dim`-d embeddings."""
    enc = CLIPGlobalEncoder(data_cfg.encoder_path, dtype=dtype)
    if enc.dim != global_dim:
        raise AnchorfaceError(f"the CLIP model at '{data_cfg.encoder_path}' gives {enc.dim}-d embeddings but "
                              f"model.global_dim is {global_dim}; set model.global_dim: {enc.dim}")
    return enc
