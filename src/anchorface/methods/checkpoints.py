"""What every method's checkpoint folder shares: `CKPT/anchorface.json`, the manifest holding the run's `Config`
(whose `method` names the method that wrote it). Each method's own `checkpoint.py` writes its components beside it
and reads the config through `read_config`."""

from __future__ import annotations

from pathlib import Path

from anchorface.config import Config
from anchorface.errors import AnchorfaceError, CheckpointError
from anchorface.io.manifest import manifest_in, read_manifest, write_manifest

FORMAT, VERSION = "anchorface", 1
MANIFEST = "anchorface.json"


def write_config(folder: Path, cfg: Config, **extra) -> None:
    """The manifest of a checkpoint being written into `folder` (the temporary sibling of `io.atomic`)."""
    write_manifest(folder / MANIFEST, FORMAT, VERSION, {"config": cfg.to_dict(), **extra}, CheckpointError)


def read_config(directory: str | Path, method: str | None = None) -> Config:
    """The run config stored in a checkpoint; CheckpointError if `directory` is not an anchorface checkpoint, or
    (with `method`) one written by another method."""
    manifest = manifest_in(directory, MANIFEST, "checkpoint", f"an anchorface checkpoint (no {MANIFEST}; pass the "
                           "directory written by `anchorface train`, e.g. runs/x/checkpoint-0001000)", CheckpointError)
    meta = read_manifest(manifest, FORMAT, VERSION, error=CheckpointError, what="checkpoint")
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{manifest}: no \"config\" object (the run's configuration)")
    try:
        cfg = Config.from_dict(meta["config"])
    except CheckpointError:
        raise
    except AnchorfaceError as e:
        raise CheckpointError(f"{manifest}: {e}") from None
    if method is not None and cfg.method != method:
        raise CheckpointError(f"{Path(directory)} is a checkpoint of method {cfg.method}, not {method}")
    return cfg


def check_finite(directory: str | Path, **modules) -> None:
    """CheckpointError naming the first component (keyword name) with a NaN or infinite weight: a corrupt or
    diverged checkpoint must not render a video of NaNs and exit 0. None entries are skipped."""
    import torch

    for name, module in modules.items():
        if module is None:
            continue
        for key, tensor in module.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(f"{Path(directory)}: {name} weight {key} holds NaN or infinite values "
                                      "(a corrupt or diverged checkpoint)")


def load_same_architecture(checkpoint: str | Path, name: str, mine, theirs) -> None:
    """Load a checkpoint's module `theirs` into `mine`, a model built from another config (fine-tuning from it):
    CheckpointError, one line, when it has no such module or another architecture (the counts of parameters of
    another shape, missing and unexpected, and the first of them), rather than PyTorch's key-by-key listing."""
    if theirs is None:
        raise CheckpointError(f"{checkpoint} has no {name}, the model of this config has one")
    a, b = mine.state_dict(), theirs.state_dict()
    missing, extra = [k for k in a if k not in b], [k for k in b if k not in a]
    shape = [k for k in a if k in b and a[k].shape != b[k].shape]
    if missing or extra or shape:
        first = (f"size mismatch for {shape[0]}: {tuple(b[shape[0]].shape)} in the checkpoint, "
                 f"{tuple(a[shape[0]].shape)} here" if shape else (missing or extra)[0])
        raise CheckpointError(f"{checkpoint}: its {name} does not fit the model of this config ({len(shape)} "
                              f"parameters of another shape, {len(missing)} missing, {len(extra)} unexpected; "
                              f"first: {first})")
    mine.load_state_dict(b)
