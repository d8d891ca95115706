"""DiffusionAct's training recipe (paper 003, §3.3, §4.1, supp. C) for the method-agnostic loop (`training/loop.py`).

One run trains three stages in turn, chosen by the optimizer step (`Stages`):

0. "diffae" (`diffusionact.diffae_steps`, skipped when 0): the DiffAE, E and eps_theta, with the diffusion loss
   ||eps_theta(x_t, t, E(x_0)) - eps||^2 on face crops (§3.1). The paper starts from DiffAE's FFHQ model instead.
1. "pretrain" (`pretrain_steps`): E_r alone on self-reenactment pairs (source and target frames of one clip),
   L_z = ||E_r(x_s, y_t) - E(x_t)||_1; E and the DDIM are frozen and not run (§3.3, supp. C, Fig. 7).
2. "reenact" (the rest of `train.max_steps`): DDIM in the loop. x_T^s = DDIM inversion of the source with
   z_s = E(x_s) (T_tr steps, no gradient), x_r = DDIM decoding of x_T^s with z_r = E_r(x_s, y_t) (T_tr steps,
   differentiated), loss lambda_pix L_pix(x_r, x_t) + lambda_bg L_bg (the face masked out with MediaPipe's face
   oval), and, with user-provided networks, lambda_per L_per and lambda_id L_id. The batch is split half
   self-reenactment, half reconstruction (target = source, y = the source's landmarks; odd examples), and the
   UNet is fine-tuned jointly at `finetune_lr` (0 = frozen). Only the first `reenact_batch` examples of a loaded
   batch are used (§4.1: 4).

Left out (no network here): the FaRL style loss and the pose losses (gaze, EMOCA shape and head pose).

E_r is initialised from E at the start of stage 1 without touching the weights: the model holds E_r as E's
weights (detached) plus a trainable offset that is zero until stage 1 trains it, and the zero convolution. The
export writes E_r as a standalone encoder (E's weights + offset).

What the loop asks beyond `training.recipe.Recipe`: `scheduler(optimizer)` (each group's rate per stage, with
`train.warmup_steps` of warm-up at the start of every stage) and `ema_updates(step)` (the EMA restarts its warm-up
at each stage, so the exported weights of a stage are not averaged with the previous stage's).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anchorface.config import Config
from anchorface.data.dataset import ShardFiles
from anchorface.errors import AnchorfaceError
from anchorface.methods.checkpoints import load_same_architecture
from anchorface.methods.diffusionact.checkpoint import load_checkpoint, read_config, save_checkpoint

PREVIEW_PAIRS = 3  # held-out (source, target) pairs in the sample grid


@dataclass(frozen=True)
class Stages:
    """Step boundaries: [0, diffae) diffae, [diffae, pretrain_end) pretrain, [pretrain_end, total) reenact."""

    diffae: int
    pretrain_end: int
    total: int

    @classmethod
    def from_config(cls, cfg: Config) -> "Stages":
        d = cfg.diffusionact
        return cls(d.diffae_steps, d.diffae_steps + d.pretrain_steps, cfg.train.max_steps)

    def stage(self, step: int) -> str:
        return "diffae" if step < self.diffae else "pretrain" if step < self.pretrain_end else "reenact"

    def start(self, step: int) -> int:
        return 0 if step < self.diffae else self.diffae if step < self.pretrain_end else self.pretrain_end

    def describe(self) -> str:
        spans = [(n, a, b) for n, a, b in (("diffae", 0, self.diffae), ("pretrain", self.diffae, self.pretrain_end),
                                          ("reenact", self.pretrain_end, self.total)) if min(b, self.total) > a]
        return ", ".join(f"{n} steps {a}-{min(b, self.total)}" for n, a, b in spans)


def check_config(cfg: Config) -> None:
    """One-line AnchorfaceError for DiffusionAct settings that cannot train."""
    d = cfg.diffusionact
    for name in ("diffae_steps", "pretrain_steps"):
        if getattr(d, name) < 0:
            raise AnchorfaceError(f"diffusionact.{name} must be >= 0, got {getattr(d, name)}")
    if d.reenact_batch < 2 or d.reenact_batch % 2:
        raise AnchorfaceError(f"diffusionact.reenact_batch must be even and >= 2, got {d.reenact_batch}")
    if d.reenact_batch > cfg.train.batch_size:
        raise AnchorfaceError(f"diffusionact.reenact_batch ({d.reenact_batch}) exceeds train.batch_size "
                              f"({cfg.train.batch_size})")
    if d.pixel_loss not in ("l1", "l2"):
        raise AnchorfaceError(f"diffusionact.pixel_loss must be l1 or l2, got {d.pixel_loss!r}")
    if d.train_steps < 1:
        raise AnchorfaceError(f"diffusionact.train_steps (T_tr) must be >= 1, got {d.train_steps}")
    from anchorface.methods.diffusionact.diffae import GROUPS

    for name in ("unet_channels", "encoder_channels"):
        if getattr(d, name) < GROUPS or getattr(d, name) % GROUPS:
            raise AnchorfaceError(f"diffusionact.{name} must be a multiple of {GROUPS} (GroupNorm groups), "
                                  f"got {getattr(d, name)}")
    if d.landmark_channels != 3:
        raise AnchorfaceError(f"diffusionact.landmark_channels must be 3 (the landmark image's contours, eyes and "
                              f"lips, irises), got {d.landmark_channels}")
    if d.diffae_steps == 0 and not d.diffae_checkpoint:
        raise AnchorfaceError("diffusionact: set diffae_steps > 0 (train the DiffAE) or diffae_checkpoint (start "
                              "from a trained one)")


# ----------------------------------------------------------------------------------------------------------------
# Data: (source, target) frame pairs of one clip
# ----------------------------------------------------------------------------------------------------------------

class PairDataset(ShardFiles, torch.utils.data.Dataset):
    """Example k (a pure function of (seed, k)): a clip drawn uniformly, two distinct frames of it drawn uniformly
    as source and target, their landmark images and face masks, a timestep and noise for the DiffAE loss, and
    `recon` = k odd (stage 2's batch split: those examples reconstruct their source). Pixels are the prepared
    pixel-codec latents unshuffled (exact), in [-1, 1]."""

    def __init__(self, dataset_dir: str | Path, index: dict, clip_names: list[str], seed: int, num_timesteps: int):
        from anchorface.frozen.codecs import PixelCodec

        self.dir, self.index, self.seed, self.num_timesteps = Path(dataset_dir), index, int(seed), num_timesteps
        self.clips = [c for c in index["clips"] if c["name"] in set(clip_names) and c["num_frames"] >= 2]
        if not self.clips:
            raise AnchorfaceError(f"{self.dir}: no clip has two frames")
        self.codec = PixelCodec(int(index["data"]["pixel_factor"]))
        self.resolution = int(index["data"]["resolution"])

    def __len__(self) -> int:  # (read by StepSampler-driven loaders only through indices)
        return sum(c["num_frames"] for c in self.clips)

    def frame(self, clip: int, i: int) -> tuple[torch.Tensor, np.ndarray]:
        """Pixels [3, R, R] in [-1, 1] and landmarks [478, 3] of frame i of clip `clip`."""
        c = self.clips[clip]
        f = self._file(c["shard"])
        lat = f.get_slice(f"{c['name']}/latents")[int(i):int(i) + 1].float()
        lmk = f.get_slice(f"{c['name']}/landmarks")[int(i):int(i) + 1].float().numpy()[0]
        return self.codec.decode(lat)[0].clamp(-1, 1), lmk

    def load(self, clip: int, s: int, t: int, k: int) -> dict:
        from anchorface.faces.landmarks import face_mask, landmark_image

        R = self.resolution
        (xs, ls), (xt, lt) = self.frame(clip, s), self.frame(clip, t)
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, 3, k]).generate_state(1)[0]))
        return {"source": xs, "target": xt,
                "source_landmarks": torch.from_numpy(landmark_image(ls, R)),
                "target_landmarks": torch.from_numpy(landmark_image(lt, R)),
                "source_mask": torch.from_numpy(face_mask(ls, R))[None],
                "target_mask": torch.from_numpy(face_mask(lt, R))[None],
                "t": torch.randint(0, self.num_timesteps, (), generator=gen),
                "noise": torch.randn(xt.shape, generator=gen),
                "recon": torch.tensor(k % 2 == 1), "index": torch.tensor(int(k))}

    def choose(self, k: int) -> tuple[int, int, int]:
        rng = np.random.default_rng([self.seed, 5, int(k)])
        clip = int(rng.integers(len(self.clips)))
        s, t = rng.choice(self.clips[clip]["num_frames"], size=2, replace=False)
        return clip, int(s), int(t)

    def __getitem__(self, k: int) -> dict:
        return self.load(*self.choose(k), int(k))


# ----------------------------------------------------------------------------------------------------------------
# The trainable system
# ----------------------------------------------------------------------------------------------------------------

def _key(name: str) -> str:
    return name.replace(".", "__")


class DiffusionActModel(nn.Module):
    """DiffAE (E, eps_theta) + E_r as (E's weights + `delta`, `zero_conv`). `forward(batch, stage)` returns the
    stage's loss terms, so a DDP wrapper sees the whole computation."""

    def __init__(self, cfg: Config):
        from anchorface.methods.diffusionact.diffae import ConditionalUNet, DiffAE, SemanticEncoder

        super().__init__()
        d, R = cfg.diffusionact, cfg.data.resolution
        self.cfg = cfg
        encoder = SemanticEncoder(d.semantic_dim, d.encoder_channels, R)
        unet = ConditionalUNet(R, d.unet_channels, d.unet_mults, d.unet_blocks, d.attention_res, d.semantic_dim)
        self.diffae = DiffAE(encoder, unet, d.num_timesteps, d.beta_start, d.beta_end)
        self.delta = nn.ParameterDict({_key(n): nn.Parameter(torch.zeros_like(p))
                                       for n, p in encoder.named_parameters()})
        self.zero_conv = nn.Conv2d(d.landmark_channels, 3, 1)
        nn.init.zeros_(self.zero_conv.weight)
        nn.init.zeros_(self.zero_conv.bias)
        self.perceptual = self.identity = None  # user-provided TorchScript networks (frozen)

    def reenact_encode(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """E_r(x, y) = E_{theta_E + delta}(x + ZeroConv(y)) (§3.2); theta_E is not trained through E_r."""
        params = {n: p.detach() + self.delta[_key(n)] for n, p in self.diffae.encoder.named_parameters()}
        return torch.func.functional_call(self.diffae.encoder, params, (x + self.zero_conv(y),))

    def reenactment_encoder(self):
        """E_r as a standalone `ReenactmentEncoder` (for export and inference)."""
        from anchorface.methods.diffusionact.reenactment_encoder import ReenactmentEncoder

        er = ReenactmentEncoder.from_encoder(self.diffae.encoder, self.zero_conv.in_channels)
        with torch.no_grad():
            for n, p in er.encoder.named_parameters():
                p.add_(self.delta[_key(n)].to(p))
            er.zero_conv.load_state_dict(self.zero_conv.state_dict())
        return er

    def forward(self, batch: dict, stage: str) -> dict:
        zero = batch["source"].new_zeros(())
        terms = {"diffusion": zero, "latent_l1": zero, "pix": zero, "bg": zero, "per": zero, "id": zero}
        if stage == "diffae":
            terms["diffusion"] = self.diffae.diffusion_loss(batch["target"], batch["t"], batch["noise"]).mean()
            return {"loss": terms["diffusion"], **terms}
        if stage == "pretrain":
            with torch.no_grad():
                z_t = self.diffae.encode(batch["target"])
            z_r = self.reenact_encode(batch["source"], batch["target_landmarks"])
            terms["latent_l1"] = (z_r - z_t).abs().mean()
            return {"loss": terms["latent_l1"], **terms}
        return self._reenact(batch, terms)

    def _reenact(self, batch: dict, terms: dict) -> dict:
        d = self.cfg.diffusionact
        src = batch["source"]
        recon = batch["recon"][:, None, None, None] if d.batch_split else torch.zeros_like(batch["recon"])[:, None,
                                                                                                           None, None]
        target = torch.where(recon, src, batch["target"])
        y = torch.where(recon, batch["source_landmarks"], batch["target_landmarks"])
        mask = torch.where(recon, batch["source_mask"], batch["target_mask"])
        with torch.no_grad():
            x_T = self.diffae.invert(src, self.diffae.encode(src), d.train_steps)
        x_r = self.diffae.decode(x_T, self.reenact_encode(src, y), d.train_steps)
        dist = (lambda a, b: (a - b).abs().mean()) if d.pixel_loss == "l1" else \
            (lambda a, b: (a - b).pow(2).mean())
        keep = 1.0 - mask  # background and hair: outside the face oval
        terms["pix"], terms["bg"] = dist(x_r, target), dist(x_r * keep, target * keep)
        loss = d.lambda_pix * terms["pix"] + d.lambda_bg * terms["bg"]
        if self.perceptual is not None:
            terms["per"] = sum((a - b).pow(2).mean() for a, b in zip(_features(self.perceptual, x_r),
                                                                   _features(self.perceptual, target)))
            loss = loss + d.lambda_per * terms["per"]
        if self.identity is not None:
            terms["id"] = (1 - F.cosine_similarity(self.identity(x_r).flatten(1),
                                                   self.identity(target).flatten(1), dim=1)).mean()
            loss = loss + d.lambda_id * terms["id"]
        return {"loss": loss, **terms}


def _features(net, x) -> list[torch.Tensor]:
    out = net(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def load_user_network(path: str | None, what: str):
    """A user-provided TorchScript network (image [-1, 1] -> features), frozen; None when not configured."""
    if not path:
        return None
    if not Path(path).is_file():
        raise AnchorfaceError(f"diffusionact.{what}: file not found: {path}")
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as e:
        raise AnchorfaceError(f"diffusionact.{what}: {path} is not a TorchScript file ({e})".splitlines()[0]) from None
    return net.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------------------------------------------

class DiffusionActRecipe:
    """DiffusionAct's training recipe: what `anchorface.training.loop.train` asks of a method (see
    `anchorface.training.recipe.Recipe`), plus `scheduler` and `ema_updates` for the stages. Reads a prepared
    pixel-codec dataset in `data_dir` (`anchorface prepare`)."""

    log_terms = ("diffusion", "latent_l1", "pix", "bg", "per", "id")
    unused_parameters = True  # each stage trains a part (stage 1 the DiffAE, then E_r): DDP must allow the rest
    read_config = staticmethod(read_config)

    def __init__(self, cfg: Config, data_dir: str | Path, holdout_videos: int = 1):
        from anchorface.data.dataset import check_compatible, load_index
        from anchorface.methods.anchored.training import split_clips

        check_config(cfg)
        # stage 2 keeps reenact_batch of the global batch, in (source, target) pairs on every micro-batch
        share = 2 * int(os.environ.get("WORLD_SIZE", "1")) * cfg.train.grad_accum
        if cfg.diffusionact.reenact_batch % share:
            raise AnchorfaceError(f"diffusionact.reenact_batch ({cfg.diffusionact.reenact_batch}) must be a multiple "
                                  f"of 2 x processes x grad_accum ({share}): each micro-batch trains whole pairs")
        self.cfg, self.stages = cfg, Stages.from_config(cfg)
        self.index = load_index(data_dir)
        if self.index["data"].get("codec") != "pixel":
            raise AnchorfaceError("DiffusionAct trains on pixels: prepare the dataset with a pixel-codec config "
                                  "(e.g. `anchorface prepare --config diffusionact-tiny`)")
        check_compatible(self.index, cfg)
        train_clips, preview_clips = split_clips(self.index, holdout_videos)
        T = cfg.diffusionact.num_timesteps
        self.dataset = PairDataset(data_dir, self.index, train_clips, cfg.train.seed, T)
        self.preview_set = PairDataset(data_dir, self.index, preview_clips, cfg.train.seed + 1, T)

    def summary(self) -> str:
        used = [n for n in ("perceptual_net", "identity_net") if getattr(self.cfg.diffusionact, n)]
        return (f"DiffusionAct on {len(self.dataset.clips)} clips ({len(self.preview_set.clips)} for previews); "
                f"{self.stages.describe()}; stage-2 losses: pix, bg{''.join(', ' + u[:-4] for u in used)}")

    def build_model(self) -> DiffusionActModel:
        model = DiffusionActModel(self.cfg)
        d = self.cfg.diffusionact
        if d.diffae_checkpoint:
            _, encoder, unet, _ = load_checkpoint(d.diffae_checkpoint, reenactment=False)
            where = f"diffae_checkpoint {d.diffae_checkpoint}"
            load_same_architecture(where, "semantic encoder", model.diffae.encoder, encoder)
            load_same_architecture(where, "UNet", model.diffae.unet, unet)
        model.perceptual = load_user_network(d.perceptual_net, "perceptual_net")
        model.identity = load_user_network(d.identity_net, "identity_net")
        return model

    def param_groups(self, model: DiffusionActModel) -> list[dict]:
        """Three groups whose rates `scheduler` sets per stage: E, the UNet, and E_r's offset + zero conv."""
        lr = self.cfg.train.lr
        return [{"params": list(model.diffae.encoder.parameters()), "lr": lr, "name": "encoder"},
                {"params": list(model.diffae.unet.parameters()), "lr": lr, "name": "unet"},
                {"params": list(model.delta.parameters()) + list(model.zero_conv.parameters()), "lr": lr,
                 "name": "reenact"}]

    def rates(self, step: int) -> dict[str, float]:
        """Each group's learning rate at `step` (§4.1): diffae: E and UNet at diffae_lr (cosine to a tenth over
        the stage); pretrain: E_r at pretrain_lr; reenact: E_r at reenact_lr, the UNet at finetune_lr. Linear
        warm-up over `train.warmup_steps` at the start of each stage."""
        d, st = self.cfg.diffusionact, self.stages
        stage, start = st.stage(step), st.start(step)
        warm = min(1.0, (step - start + 1) / self.cfg.train.warmup_steps) if self.cfg.train.warmup_steps else 1.0
        if stage == "diffae":
            frac = (step - start) / max(1, st.diffae)
            lr = d.diffae_lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))
            return {"encoder": lr * warm, "unet": lr * warm, "reenact": 0.0}
        if stage == "pretrain":
            return {"encoder": 0.0, "unet": 0.0, "reenact": d.pretrain_lr * warm}
        return {"encoder": 0.0, "unet": d.finetune_lr * warm, "reenact": d.reenact_lr * warm}

    def scheduler(self, optimizer):
        """A LambdaLR giving each parameter group its `rates` (relative to its initial rate)."""
        base = [g["lr"] for g in optimizer.param_groups]
        names = [g["name"] for g in optimizer.param_groups]
        lambdas = [(lambda step, n=n, b=b: self.rates(step)[n] / b) for n, b in zip(names, base)]
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)

    def ema_updates(self, step: int) -> int:
        """The EMA's update count for its warm-up: restarted at each stage."""
        return step - self.stages.start(step)

    def loss(self, model, batch: dict) -> dict:
        step = int(batch["index"][0]) // self.cfg.train.batch_size  # (StepSampler: k = step x global batch + ...)
        stage = self.stages.stage(step)
        if stage == "reenact":
            n = len(batch["index"])
            keep = (n * self.cfg.diffusionact.reenact_batch) // self.cfg.train.batch_size  # (whole pairs: __init__)
            batch = {k: v[:keep] for k, v in batch.items()}
        return model(batch, stage)

    def previewer(self, device):
        """Held-out pairs: source | target | reenacted (E_r, T_tr steps) | the DiffAE's reconstruction of the
        source (inversion + decoding, T_tr steps)."""
        pairs = [self.preview_set[i] for i in range(PREVIEW_PAIRS)]
        batch = {k: torch.stack([p[k] for p in pairs]).to(device) for k in pairs[0]}
        steps = self.cfg.diffusionact.train_steps

        @torch.no_grad()
        def preview(model: DiffusionActModel) -> np.ndarray:
            from anchorface.frozen.codecs import to_uint8

            src = batch["source"]
            x_T = model.diffae.invert(src, model.diffae.encode(src), steps)
            reen = model.diffae.decode(x_T, model.reenact_encode(src, batch["target_landmarks"]), steps)
            rec = model.diffae.decode(x_T, model.diffae.encode(src), steps)
            rows = torch.stack([src, batch["target"], reen.clamp(-1, 1), rec.clamp(-1, 1)], 1)  # [B, 4, 3, R, R]
            B, C, _, R, _ = rows.shape
            return to_uint8(rows.cpu().reshape(B * C, 3, R, R)).reshape(B, C, R, R, 3).transpose(0, 2, 1, 3, 4) \
                .reshape(B * R, C * R, 3)

        return preview

    def export(self, model: DiffusionActModel, directory: Path) -> None:
        er = model.reenactment_encoder() if self.stages.total > self.stages.diffae else None
        save_checkpoint(directory, self.cfg, model.diffae.encoder, model.diffae.unet, er)

    def restore(self, model: DiffusionActModel, directory: Path) -> None:
        _, encoder, unet, er = load_checkpoint(directory, reenactment=False)
        model.diffae.encoder.load_state_dict(encoder.state_dict())
        model.diffae.unet.load_state_dict(unet.state_dict())
        if er is not None:
            with torch.no_grad():
                theta = dict(encoder.named_parameters())
                for n, p in er.encoder.named_parameters():
                    model.delta[_key(n)].copy_(p - theta[n])
            model.zero_conv.load_state_dict(er.zero_conv.state_dict())
