"""Torch devices named by the user (`--device`, `from_pretrained(device=...)`): checked once, one-line errors; and
the processes of a multi-process launch (`World`, `init_world`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

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


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run (`torchrun` / `accelerate launch` set RANK, WORLD_SIZE,
    LOCAL_RANK): rank 0 is the main process, the one that writes outputs."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "World":
        try:
            size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise AnchorfaceError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (set by torchrun)") from None
        if size < 1 or not 0 <= rank < size:
            raise AnchorfaceError(f"RANK={rank} is not in a world of WORLD_SIZE={size}")
        return cls(rank, size, local)


def init_world(device: str = AUTO) -> tuple[World, str]:
    """Join the process group of a multi-process launch (gloo on the CPU, nccl on CUDA; nothing to do for one
    process) and pick this rank's device: `auto` / `cuda` become cuda:LOCAL_RANK. Returns (world, device)."""
    world = World.from_env()
    device = resolve_device(device)
    if world.size == 1:
        return world, device
    import torch.distributed as dist

    if device.startswith("cuda"):
        if device == "cuda":
            device = resolve_device(f"cuda:{world.local_rank % torch.cuda.device_count()}")
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return world, device


def close_world(world: World) -> None:
    """Leave the process group `init_world` joined (nothing for one process)."""
    if world.size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()  # no rank leaves while another still talks to it (gloo aborts the peer otherwise)
            dist.destroy_process_group()
