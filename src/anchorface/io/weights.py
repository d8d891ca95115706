"""A small module's `from_pretrained` folder: `config.json` (its constructor's arguments and a "type") and
`model.safetensors` (its state dict), each written atomically; read back with one-line CheckpointErrors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from anchorface.errors import AnchorfaceError, CheckpointError, one_line


def save_module(directory: str | os.PathLike, config: dict, module) -> None:
    """Write `config` as config.json and `module`'s state dict as model.safetensors into `directory`."""
    from anchorface.io.atomic import write_safetensors
    from anchorface.io.manifest import write_json

    directory = Path(directory)
    write_json(directory / "config.json", config, CheckpointError)
    write_safetensors(directory / "model.safetensors", {k: v.detach().cpu().contiguous()
                                                        for k, v in module.state_dict().items()}, CheckpointError)


def load_module(factory: Callable[..., object], directory: str | os.PathLike, kind: str, what: str,
                default_kind: str | None = None):
    """`factory(**config)` with the weights of `directory` loaded; config.json's "type" must be `kind` (a config
    without one is taken as `default_kind`). Any failure is one CheckpointError naming `what`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from anchorface.io.manifest import read_json_object

    directory = Path(directory)
    cfg_path, weights = directory / "config.json", directory / "model.safetensors"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise CheckpointError(f"{what} checkpoint incomplete: {p} not found")
    try:
        cfg = read_json_object(cfg_path, CheckpointError)
        if cfg.pop("type", default_kind) != kind:
            raise ValueError(f"{cfg_path} is not a {what} config")
        module = factory(**cfg)
        module.load_state_dict(load_file(str(weights)))
    except AnchorfaceError:
        raise
    except (ValueError, TypeError, KeyError, RuntimeError, OSError, SafetensorError) as e:
        raise CheckpointError(f"{what} at {directory} cannot be loaded: {one_line(e)}") from None
    return module
