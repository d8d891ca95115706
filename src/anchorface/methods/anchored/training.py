"""Anchored Diffusion's training recipe (§3.1, §4.1, App. D) for the method-agnostic loop (`anchorface.training`).

- What learns: the sDiT with its mapping network and, for `data.encoder: learned`, the global encoder G trained
  jointly (`Denoiser`).
- Data: `anchorface.data.dataset.ClipDataset` (precomputed latents, landmarks, source candidates; the sampler of
  §3.1 with the joint condition dropout of supp. §4). Example k and its diffusion noise are pure functions of
  (seed, k), so a resumed run draws exactly what an uninterrupted one would.
- Loss: DiT's learned-sigma hybrid loss, the ε-MSE weighted by 1 + λ_ex on expressive landmark pixels (§4.1).
- Parameter groups: the mapping network at lr * mapping_lr_scale (§4.1: 10x smaller), everything else at lr.
- Previews: a few held-out examples, driving | generated rows (DDIM with the EMA weights).
- Export: a from_pretrained checkpoint (`checkpoint.py`), which `AnchorFacePipeline` loads.
- Fine-tuning: `AnchoredRecipe.starting_from(checkpoint)` starts from a checkpoint's weights instead of a fresh
  initialisation (`anchorface personalize`, from the demo checkpoint).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from anchorface.config import Config
from anchorface.methods.anchored.checkpoint import load_checkpoint, read_config, save_checkpoint
from anchorface.methods.checkpoints import load_same_architecture

PREVIEW_EXAMPLES = 2  # held-out examples in the periodic sample grid


class Denoiser(nn.Module):
    """The trainable system: the sDiT (with its mapping network) and, for `data.encoder: learned`, the global
    encoder G trained jointly. `source` is a precomputed embedding [B, D] (frozen CLIP) or pixels [B, 3, H, W]."""

    def __init__(self, sdit: nn.Module, encoder: nn.Module | None = None):
        super().__init__()
        self.sdit, self.encoder = sdit, encoder

    def forward(self, x_t, t, source, landmarks, drop, drop_global=None, drop_landmarks=None):
        if self.sdit.mapping is None:  # global_dim == 0: a plain DiT
            return self.sdit(x_t, t)
        g = self.encoder.encode_images(source) if self.encoder is not None else source
        return self.sdit(x_t, t, g, landmarks, drop=drop, drop_global=drop_global, drop_landmarks=drop_landmarks)


def build_denoiser(cfg: Config, latent_shape) -> Denoiser:
    from anchorface.methods.anchored.global_encoder import load_encoder
    from anchorface.methods.anchored.sdit import SDiT, SDiTConfig

    C, h, w = latent_shape
    sdit = SDiT(SDiTConfig.from_model_config(cfg.model, input_size=h, in_channels=C))
    encoder = None
    if cfg.data.encoder == "learned":
        encoder = load_encoder(cfg.data, cfg.model.global_dim)
    return Denoiser(sdit, encoder)


def param_groups(model: Denoiser, lr: float, mapping_lr_scale: float) -> list[dict]:
    """§4.1: the mapping network at lr * mapping_lr_scale, everything else (and the learned G) at lr."""
    mapping = list(model.sdit.mapping.parameters()) if model.sdit.mapping is not None else []
    ids = {id(p) for p in mapping}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": rest, "lr": lr, "name": "main"}]
    if mapping:
        groups.append({"params": mapping, "lr": lr * mapping_lr_scale, "name": "mapping"})
    return groups


def diffusion_loss(model, diffusion, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> dict:
    """The per-sample hybrid loss of one batch (DiT; ε-MSE weighted by the expressive map, §4.1)."""
    x0 = batch["latents"]
    x_t = diffusion.q_sample(x0, t, noise)
    out = model(x_t, t, batch["source"], batch["landmarks"], batch["drop"], batch.get("drop_global"),
                batch.get("drop_landmarks"))
    return diffusion.training_losses(out.float(), x0, x_t, t, noise, weight=batch["weight"])


def example_noise(seed: int, indices, frame_shape, num_timesteps: int):
    """Timesteps [B] and noise [B, *frame_shape] of training examples `indices` (global sample counters k): each a
    pure function of (seed, k), so a step's noise does not depend on how the global batch is split over processes
    and accumulation micro-steps, and a resumed run draws exactly what an uninterrupted one would."""
    ts, noises = [], []
    for k in torch.as_tensor(indices).tolist():
        s = int(np.random.SeedSequence([seed, 1, int(k)]).generate_state(1, np.uint64)[0]) >> 1
        gen = torch.Generator().manual_seed(s)
        ts.append(torch.randint(0, num_timesteps, (1,), generator=gen))
        noises.append(torch.randn(tuple(frame_shape), generator=gen))
    return torch.cat(ts), torch.stack(noises)


@torch.no_grad()
def render_preview(model: Denoiser, diffusion, codec, examples: list[dict], steps: int, seed: int,
                   device) -> np.ndarray:
    """uint8 grid: for each example a row of driving frames and a row of generated ones (DDIM, `steps` steps, no
    guidance); with pixel sources the source crop leads the generated row."""
    from anchorface.diffusion.sampling import learns_sigma, sample_loop
    from anchorface.frozen.codecs import to_uint8

    batch = {k: torch.stack([e[k] for e in examples]).to(device) for k in examples[0]}
    B, T, C, h, w = batch["latents"].shape
    gen = torch.Generator().manual_seed(seed)
    x_T = torch.randn((B, T, C, h, w), generator=gen).to(device)
    scheduler = diffusion.make_scheduler("ddim", steps, learned_sigma=learns_sigma(model.sdit))

    def model_fn(x, t):
        return model(x, t, batch["source"], batch["landmarks"], batch["drop"]).float()

    z = sample_loop(model_fn, x_T, scheduler, generator=gen, progress=False)

    def decode(lat):  # [B, T, C, h, w] -> [B, T, 3, H, W]
        px = codec.decode(lat.reshape(B * T, C, h, w).float().cpu())
        return px.reshape(B, T, *px.shape[1:])

    driving, generated = decode(batch["latents"]), decode(z)
    H, W = driving.shape[-2:]
    pixel_source = batch["source"].ndim == 4
    cols = T + int(pixel_source)
    grid = -torch.ones(2 * B, cols, 3, H, W)
    for b in range(B):
        grid[2 * b, cols - T:] = driving[b]
        grid[2 * b + 1, cols - T:] = generated[b]
        if pixel_source:
            src = torch.nn.functional.interpolate(batch["source"][b:b + 1].float().cpu(), size=(H, W), mode="area")
            grid[2 * b + 1, 0] = src[0]
    return to_uint8(grid).transpose(0, 2, 1, 3, 4).reshape(2 * B * H, cols * W, 3)  # [2B, cols, H, W, 3] -> rows


def split_clips(index: dict, holdout_videos: int) -> tuple[list[str], list[str]]:
    """Clip names for training and for previews: the clips of the last `holdout_videos` source videos (by name) are
    held out when there are more videos than that; otherwise previews use training clips."""
    videos = sorted({c["source_video"] for c in index["clips"]})
    if holdout_videos <= 0 or len(videos) <= holdout_videos:
        names = [c["name"] for c in index["clips"]]
        return names, names
    held = set(videos[-holdout_videos:])
    return ([c["name"] for c in index["clips"] if c["source_video"] not in held],
            [c["name"] for c in index["clips"] if c["source_video"] in held])


class AnchoredRecipe:
    """The sDiT's training recipe: what `anchorface.training.loop.train` asks of a method (see
    `anchorface.training.recipe.Recipe`). Reads the prepared dataset in `data_dir` (`anchorface prepare`)."""

    log_terms = ("mse", "vb")  # besides "loss": the two halves of the hybrid loss
    read_config = staticmethod(read_config)  # the config that `export` stored (anchorface.json)
    init_from: Path | None = None  # a checkpoint whose weights the model starts from (`starting_from`)

    @classmethod
    def starting_from(cls, checkpoint: str | Path) -> type["AnchoredRecipe"]:
        """This recipe, fine-tuning: `build_model` loads `checkpoint`'s weights (same architecture: train with its
        config, `read_config(checkpoint)`), so the EMA starts there too."""
        return type(f"{cls.__name__}FromCheckpoint", (cls,), {"init_from": Path(checkpoint)})

    def __init__(self, cfg: Config, data_dir: str | Path, holdout_videos: int = 1):
        from anchorface.data.dataset import ClipDataset, check_compatible, load_index
        from anchorface.diffusion.gaussian import GaussianDiffusion
        from anchorface.errors import AnchorfaceError

        self.cfg, tc = cfg, cfg.train
        self.index = load_index(data_dir)
        check_compatible(self.index, cfg)
        train_clips, preview_clips = split_clips(self.index, holdout_videos)

        def clips(names, cond_dropout, signal_dropout=0.0):
            return ClipDataset(data_dir, cfg.model.num_frames, cond_dropout, cfg.diffusion.lambda_ex, tc.seed,
                               clip_names=names, index=self.index, signal_dropout=signal_dropout)

        self.dataset = clips(train_clips, cfg.data.cond_dropout, cfg.data.signal_dropout)
        try:
            self.preview_set = clips(preview_clips, 0.0)
        except AnchorfaceError:  # held-out clips too short: preview training clips
            preview_clips = train_clips
            self.preview_set = clips(preview_clips, 0.0)
        self.diffusion = GaussianDiffusion(cfg.diffusion)

    def summary(self) -> str:
        return (f"{len(self.dataset.clips)} clips ({self.dataset.skipped_short} too short, "
                f"{len(self.preview_set.clips)} for previews)")

    def build_model(self) -> Denoiser:
        model = build_denoiser(self.cfg, self.index["latent_shape"])
        if self.init_from is not None:
            _, sdit, encoder = load_checkpoint(self.init_from)  # (its own one-line errors: missing, not anchored...)
            for name, mine, theirs in (("sDiT", model.sdit, sdit), ("global encoder", model.encoder, encoder)):
                if mine is not None:
                    load_same_architecture(self.init_from, name, mine, theirs)
        return model

    def param_groups(self, model: Denoiser) -> list[dict]:
        return param_groups(model, self.cfg.train.lr, self.cfg.train.mapping_lr_scale)

    def loss(self, model, batch: dict) -> dict:
        t, noise = example_noise(self.cfg.train.seed, batch["index"], batch["latents"].shape[1:],
                                 self.diffusion.num_timesteps)
        device = batch["latents"].device
        return diffusion_loss(model, self.diffusion, batch, t.to(device), noise.to(device))

    def previewer(self, device):
        """Fixed held-out examples rendered with the frozen codec; None (with a warning) without its weights."""
        from anchorface.data.dataset import sample_training_example
        from anchorface.errors import MissingWeightsError
        from anchorface.frozen.codecs import load_codec

        try:
            codec = load_codec(self.cfg.data)
        except MissingWeightsError as e:
            print(f"anchorface: warning: no sample grids ({e})", file=sys.stderr)
            return None
        rng, T = np.random.default_rng(self.cfg.train.seed), self.cfg.model.num_frames
        examples = []
        for i in range(PREVIEW_EXAMPLES):
            clip = i % len(self.preview_set.clips)
            frames, src = sample_training_example(self.preview_set.clips[clip]["num_frames"], T, rng)
            examples.append(self.preview_set.load(clip, frames, src, drop=False))
        tc = self.cfg.train

        def preview(model: Denoiser) -> np.ndarray:
            return render_preview(model, self.diffusion, codec, examples, tc.sample_steps, tc.seed, device)

        return preview

    def export(self, model: Denoiser, directory: Path) -> None:
        save_checkpoint(directory, self.cfg, model.sdit, model.encoder)

    def restore(self, model: Denoiser, directory: Path) -> None:
        _, sdit, encoder = load_checkpoint(directory)
        model.sdit.load_state_dict(sdit.state_dict())
        if model.encoder is not None:
            model.encoder.load_state_dict(encoder.state_dict())
