"""Checkpoints as `from_pretrained` directories (diffusers-style: config JSON + safetensors per component).

    CKPT/anchorface.json                 {"format": "anchorface", "version": 1, "config": Config.to_dict(),
                                          ["trained_on": {"what": "...", "signatures": [[...], ...]}]}
    CKPT/sdit/config.json, model.safetensors              the denoiser + mapping network (EMA weights)
    CKPT/global_encoder/config.json, model.safetensors    only for the jointly trained `learned` encoder

`trained_on` is written by checkpoints made from stills (the demo, `anchorface personalize`): what they were
trained on, and the `faces.signature` of each still, so that `reenact` can tell a photo the model has never seen.

Written atomically (`io.atomic`): a temporary sibling directory is filled, then renamed into place.
"""

from __future__ import annotations

from pathlib import Path

import torch

from anchorface.config import Config
from anchorface.errors import CheckpointError
from anchorface.io.atomic import atomic_output
from anchorface.io.manifest import existing_directory, read_manifest
from anchorface.methods.checkpoints import FORMAT, MANIFEST, VERSION, check_finite, read_config, write_config  # noqa: F401


def save_checkpoint(directory: str | Path, cfg: Config, sdit, encoder=None, trained_on: dict | None = None) -> Path:
    """Write `sdit` (and a `learned` global encoder) with the run's config (and `trained_on`, see the module doc);
    replaces `directory` atomically."""
    directory = Path(directory)
    extra = {"trained_on": trained_on} if trained_on is not None else {}
    with atomic_output(directory, CheckpointError, what="checkpoint ") as tmp:
        sdit.save_pretrained(tmp / "sdit")
        if encoder is not None and cfg.data.encoder == "learned":
            encoder.save_pretrained(tmp / "global_encoder")
        write_config(tmp, cfg, **extra)
    return directory


def read_trained_on(directory: str | Path) -> dict | None:
    """The checkpoint's `trained_on` record ({"what": str, "signatures": [[float]]}), None when it has none or
    the record is malformed (it only decides whether `reenact` prints a hint)."""
    meta = read_manifest(Path(directory) / MANIFEST, FORMAT, VERSION, error=CheckpointError, what="checkpoint")
    rec = meta.get("trained_on")
    if not (isinstance(rec, dict) and isinstance(rec.get("what"), str) and isinstance(rec.get("signatures"), list)):
        return None
    return rec


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load `(config, sdit, encoder)`; `encoder` is the learned global encoder or None (CLIP is loaded by name)."""
    from anchorface.methods.anchored.global_encoder import LearnedGlobalEncoder
    from anchorface.methods.anchored.sdit import SDiT

    directory = Path(directory)
    cfg = read_config(directory)
    sdit = SDiT.from_pretrained(directory / "sdit").to(device=device, dtype=dtype).eval()
    encoder = None
    if cfg.data.encoder == "learned" and cfg.model.global_dim > 0:  # (global_dim 0: no G at all)
        if not (directory / "global_encoder").is_dir():
            raise CheckpointError(f"{directory}: config uses the learned global encoder but global_encoder/ is missing")
        encoder = LearnedGlobalEncoder.from_pretrained(directory / "global_encoder").to(device=device, dtype=dtype)
        encoder.eval()
    check_finite(directory, sdit=sdit, global_encoder=encoder)
    return cfg, sdit, encoder


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The newest `checkpoint-*` directory of a training run (or `run_dir` itself if it is a checkpoint)."""
    run_dir = existing_directory(run_dir, "checkpoint", CheckpointError)
    if (run_dir / MANIFEST).exists():
        return run_dir
    found = sorted(p for p in run_dir.glob("checkpoint-*") if (p / MANIFEST).exists())
    if not found:
        raise CheckpointError(f"no checkpoint found in {run_dir}")
    return found[-1]
