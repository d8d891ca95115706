"""Torch devices named by the user (`--device`, `from_pretrained(device=...)`): checked once, one-line errors."""

from __future__ import annotations

import torch

from anchorface.errors import AnchorfaceError

AUTO = "auto"  # CUDA when available, else the CPU


def resolve_device(name: str | torch.device | None = AUTO) -> str:
    """The device to run on, as a torch device string: `auto` (or None) -> `cuda` if available else `cpu`;
    `cpu`, `cuda`, `cuda:N`, `mps` are checked against what this machine has (AnchorfaceError otherwise)."""
    if name is None or name == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise AnchorfaceError(f"unknown device '{name}' (cpu, cuda, cuda:N, mps or auto)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AnchorfaceError("CUDA is not available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AnchorfaceError(f"device '{name}' does not exist: {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise AnchorfaceError("MPS is not available; use --device cpu")
    return str(device)
