"""Execution of a `plans.RankSplit` on torch.distributed: one long video on many processes / GPUs.

Once the anchor is fixed, anchored sequences depend on each other only through it (§3.2, Alg. 1), and every rank
recomputes sequence 0 (deterministic, same noise and weights), so the anchor's tokens need no communication. Two
things do: the few frames that neighbouring windows share in this project's column layout (`HaloExchange`, a
handful of latents per step) and, once, the final latents, gathered on rank 0 (`gather_frames`), which decodes and
writes. gloo on the CPU, nccl on CUDA (`devices.init_world`).
"""

from __future__ import annotations

import numpy as np
import torch

from anchorface.methods.anchored.plans import RankSplit


def _dist():
    import torch.distributed as dist

    return dist


class HaloExchange:
    """After every step: each rank sends the latents of `split.exports[rank]` and takes those of its
    `split.imports[rank]` (one all_gather of [max exports, C, h, w] per step; frames stay in the ranks' order)."""

    def __init__(self, split: RankSplit, rank: int):
        self.split, self.rank = split, rank
        self.width = max(1, max(len(e) for e in split.exports))
        self.take = []  # (source rank, positions in its export, local frames) for this rank's imports
        mine = split.imports[rank]
        for q, exp in enumerate(split.exports):
            sel = mine[np.isin(mine, exp)]
            if len(sel):
                self.take.append((q, torch.as_tensor(np.searchsorted(exp, sel)), torch.as_tensor(sel)))

    def __call__(self, z: torch.Tensor) -> None:
        exp = torch.as_tensor(self.split.exports[self.rank], device=z.device)
        send = z.new_zeros((self.width, *z.shape[1:]))
        send[:len(exp)] = z[exp]
        got = [torch.empty_like(send) for _ in range(self.split.world)]
        _dist().all_gather(got, send)
        for q, pos, frames in self.take:
            z[frames.to(z.device)] = got[q][pos.to(z.device)]


def gather_frames(frames: np.ndarray, latents: torch.Tensor, num_frames: int, rank: int,
                  world: int) -> torch.Tensor | None:
    """The latents [num_frames, C, h, w] on rank 0, from each rank's rendered `frames` (timeline indices, each frame
    on exactly one rank) and their `latents` [len(frames), C, h, w]; None on the other ranks."""
    dist = _dist()
    counts = [torch.zeros(1, dtype=torch.int64, device=latents.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([len(frames)], dtype=torch.int64, device=latents.device))
    width = max(1, max(int(c.item()) for c in counts))
    pack = latents.new_zeros((width, *latents.shape[1:]))
    pack[:len(frames)] = latents
    index = torch.full((width,), -1, dtype=torch.int64, device=latents.device)
    index[:len(frames)] = torch.as_tensor(np.asarray(frames, np.int64), device=latents.device)
    packs = [torch.empty_like(pack) for _ in range(world)] if rank == 0 else None
    indexes = [torch.empty_like(index) for _ in range(world)] if rank == 0 else None
    dist.gather(pack, packs, dst=0)
    dist.gather(index, indexes, dst=0)
    if rank != 0:
        return None
    out = latents.new_empty((num_frames, *latents.shape[1:]))
    seen = torch.zeros(num_frames, dtype=torch.bool)
    for p, i in zip(packs, indexes):
        keep = i >= 0
        out[i[keep]] = p[keep]
        seen[i[keep].cpu()] = True
    if not bool(seen.all()):
        raise RuntimeError(f"gather: {int((~seen).sum())} frames were rendered by no rank")
    return out
