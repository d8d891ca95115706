"""DiffusionAct checkpoints as `from_pretrained` directories (config JSON + safetensors per component):

    CKPT/anchorface.json                  {"format": "anchorface", "version": 1, "config": Config.to_dict()}
                                          (config.method == "diffusionact")
    CKPT/semantic_encoder/                E of the DiffAE (§3.1)
    CKPT/unet/                            the conditional UNet eps_theta(x_t, t, z) (§3.1)
    CKPT/reenactment_encoder/             E_r with its zero convolution (§3.2); absent in a DiffAE-only folder

Written atomically (`io.atomic`): a temporary sibling directory is filled, then renamed into place.

The official DiffAE FFHQ-256 checkpoint (`ffhq256_autoenc/last.ckpt`) is a pickled PyTorch Lightning file of the
authors' `BeatGANsAutoencModel` (a guided-diffusion UNet plus a half-UNet encoder, both with attention at 16 px);
its weights only fit a copy of that architecture, which this module does not reproduce (`load_checkpoint`
says so in one line).
"""

from __future__ import annotations

from pathlib import Path

import torch

from anchorface.config import Config
from anchorface.errors import CheckpointError
from anchorface.io.atomic import atomic_output
from anchorface.methods.checkpoints import check_finite, read_config as read_any_config, write_config

METHOD = "diffusionact"


def save_checkpoint(directory: str | Path, cfg: Config, encoder, unet, reenactment_encoder=None) -> Path:
    """Write E, the UNet and (when given) E_r with the run's config; replaces `directory` atomically."""
    directory = Path(directory)
    with atomic_output(directory, CheckpointError, what="checkpoint ") as tmp:
        encoder.save_pretrained(tmp / "semantic_encoder")
        unet.save_pretrained(tmp / "unet")
        if reenactment_encoder is not None:
            reenactment_encoder.save_pretrained(tmp / "reenactment_encoder")
        write_config(tmp, cfg)
    return directory


def read_config(directory: str | Path) -> Config:
    """The run config stored in a DiffusionAct checkpoint; CheckpointError for anything else."""
    return read_any_config(directory, METHOD)

def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu", reenactment: bool = True):
    """(config, E, UNet, E_r or None); CheckpointError when a component is missing (E_r only if `reenactment`)."""
    from anchorface.methods.diffusionact.diffae import ConditionalUNet, SemanticEncoder
    from anchorface.methods.diffusionact.reenactment_encoder import ReenactmentEncoder

    directory = Path(directory)
    if directory.is_file() and directory.suffix in (".ckpt", ".pt", ".pth"):  # e.g. the official ffhq256 last.ckpt
        raise CheckpointError(f"{directory}: the official DiffAE checkpoint is a Lightning pickle of the authors' "
                              "BeatGANsAutoencModel, whose layout this project's DiffAE does not reproduce; train "
                              "the DiffAE stage instead (diffusionact.diffae_steps)")
    cfg = read_config(directory)
    encoder = SemanticEncoder.from_pretrained(directory / "semantic_encoder", device)
    unet = ConditionalUNet.from_pretrained(directory / "unet", device)
    er = None
    if (directory / "reenactment_encoder").is_dir():
        er = ReenactmentEncoder.from_pretrained(directory / "reenactment_encoder", device)
    elif reenactment:
        raise CheckpointError(f"{directory} holds a DiffAE only (no reenactment_encoder/): train stages 1-2 first")
    parts = {"anchorface.json": {"resolution": cfg.data.resolution}, "semantic_encoder": encoder.config,
             "unet": unet.config, **({"reenactment_encoder": er.config} if er is not None else {})}
    for key in ("resolution", "z_dim"):  # the components must fit together (a mixed-up or hand-edited folder)
        values = {name: part[key] for name, part in parts.items() if key in part}
        if len(set(values.values())) > 1:
            raise CheckpointError(f"{directory}: its parts disagree on {key} "
                                  f"({', '.join(f'{n} {v}' for n, v in values.items())})")
    check_finite(directory, semantic_encoder=encoder, unet=unet, reenactment_encoder=er)
    return cfg, encoder, unet, er

