"""Checkpoints as `from_pretrained` directories (diffusers-style: config JSON + safetensors per component).

    CKPT/anchorface.json                 {"format": "anchorface", "version": 1, "config": Config.to_dict()}
    CKPT/sdit/config.json, model.safetensors              the denoiser + mapping network (EMA weights)
    CKPT/global_encoder/config.json, model.safetensors    only for the jointly trained `learned` encoder

Written atomically: a temporary sibling directory is filled, then renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from anchorface.config import Config
from anchorface.errors import AnchorfaceError, CheckpointError

FORMAT, VERSION = "anchorface", 1
MANIFEST = "anchorface.json"


def save_checkpoint(directory: str | Path, cfg: Config, sdit, encoder=None) -> Path:
    """Write `sdit` (and a `learned` global encoder) with the run's config; replaces `directory` atomically."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make the checkpoint private to its writer
        sdit.save_pretrained(tmp / "sdit")
        if encoder is not None and cfg.data.encoder == "learned":
            encoder.save_pretrained(tmp / "global_encoder")
        (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT, "version": VERSION, "config": cfg.to_dict()},
                                               indent=2))
        for path in tmp.rglob("*"):  # temp files are created private (0600/0700): give them the usual modes
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def check_checkpoint_path(directory: str | Path) -> Path:
    """CheckpointError unless `directory` is an existing directory (a file is named as such, not "not found")."""
    directory = Path(directory)
    if directory.is_file() or (directory.exists() and not directory.is_dir()):
        raise CheckpointError(f"{directory} is a file, expected a checkpoint directory")
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    return directory


def read_config(directory: str | Path) -> Config:
    """The run config stored in a checkpoint; CheckpointError if `directory` is not an anchorface checkpoint."""
    directory = Path(directory)
    manifest = directory / MANIFEST
    check_checkpoint_path(directory)
    if not manifest.exists():
        raise CheckpointError(f"{directory} is not an anchorface checkpoint (no {MANIFEST}; "
                              "pass the directory written by `anchorface train`, e.g. runs/x/checkpoint-0001000)")
    try:
        meta = json.loads(manifest.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{manifest} is not valid JSON ({e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {manifest}: {str(e).splitlines()[0]}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{manifest}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{directory}: unsupported checkpoint format {meta.get('format')!r} "
                              f"v{meta.get('version')} (expected {FORMAT} v{VERSION})")
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{manifest}: no \"config\" object (the run's configuration)")
    try:
        return Config.from_dict(meta["config"])
    except CheckpointError:
        raise
    except AnchorfaceError as e:
        raise CheckpointError(f"{manifest}: {e}") from None


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
    return cfg, sdit, encoder


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The newest `checkpoint-*` directory of a training run (or `run_dir` itself if it is a checkpoint)."""
    run_dir = check_checkpoint_path(run_dir)
    if (run_dir / MANIFEST).exists():
        return run_dir
    found = sorted(p for p in run_dir.glob("checkpoint-*") if (p / MANIFEST).exists())
    if not found:
        raise CheckpointError(f"no checkpoint found in {run_dir}")
    return found[-1]
