"""Sequence plans: which driving frames are denoised together (§3.2, Fig. 3). Pure data (numpy), no torch.

A plan is kept apart from its execution (`anchorface.methods.anchored.sampler`): it says, for a driving video of N frames and a
model that denoises T frames at once, which frame sits at each (sequence, position) slot of the batch, which slot
renders each frame, and where the shared anchor sits in each sequence.

Three kinds:

- ``anchored`` (ours, Fig. 3b): the anchor a = N // 2 (the central frame, §3.2). The other N-1 frames are split,
  in temporal order, into *contiguous* groups of T-1 and every sequence is its group plus the anchor, sorted.
  The paper leaves the split open; we keep neighbours together because a sequence is what the sDiT sees at once,
  so contiguous groups let it model local motion between neighbouring frames, while the anchor (shared, and
  overridden in every layer) carries global consistency across all sequences. The anchor therefore sits at
  different positions in different sequences and the spacing around it is non-uniform, as in training (§3.1).
  A short last group is filled with the frames just before it; those duplicate slots are generated (the model
  needs T frames) but not rendered (``owner=False``), so every frame has exactly one owner. The anchor's owner is
  sequence 0, whose anchor tokens every other sequence receives.
- ``multidiffusion`` (the baseline, Fig. 3a): uniform overlapping windows of T frames with a stride (default
  T // 2), the last window aligned to the end. Every slot contributes: the per-step predictions of a frame that
  lies in several windows are averaged.
- ``independent``: consecutive chunks of T frames (the last one aligned to the end, as above), nothing shared.

Fewer frames than T (N < T): one sequence, padded to T by repeating frames evenly (each frame at least once, the
repeats are non-owners). We pad rather than run a shorter sequence because the sDiT's temporal positional
encoding and training always see exactly T frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anchorface.errors import AnchorfaceError

KINDS = ("anchored", "multidiffusion", "independent")


@dataclass
class SequencePlan:
    """B sequences of T slots over a timeline of `num_frames` driving frames."""

    kind: str
    num_frames: int
    slots: np.ndarray  # [B, T] int64 driving-frame index at each (sequence, position); sorted in each row
    owner: np.ndarray  # [B, T] bool: this slot renders its frame (multidiffusion: every slot contributes)
    anchor: int | None  # anchored: the central frame index, else None
    anchor_positions: np.ndarray  # [B] int64 position of the anchor in each row (-1 when none)

    @property
    def num_sequences(self) -> int:
        return int(self.slots.shape[0])

    @property
    def frames_per_sequence(self) -> int:
        return int(self.slots.shape[1])

    @property
    def weights(self) -> np.ndarray:
        """[B, T] float64: the weight of each slot's prediction in its frame's merged prediction.

        Owner-based plans: 1 at the owner, 0 elsewhere. Multidiffusion: 1 / (number of slots holding that frame),
        i.e. the average over all windows containing it (Fig. 3a)."""
        w = self.owner.astype(np.float64)
        counts = np.bincount(self.slots[self.owner], minlength=self.num_frames).astype(np.float64)
        return w / counts[self.slots]

    def validate(self) -> "SequencePlan":
        """Check the invariants every plan keeps; raises ValueError (a programming error, not user input)."""
        B, T = self.slots.shape
        if self.owner.shape != (B, T) or self.anchor_positions.shape != (B,):
            raise ValueError("plan: slots, owner and anchor_positions shapes disagree")
        if np.any(np.diff(self.slots, axis=1) < 0):
            raise ValueError("plan: rows must be sorted")
        if self.slots.min() < 0 or self.slots.max() >= self.num_frames:
            raise ValueError("plan: slot outside the timeline")
        if set(np.unique(self.slots).tolist()) != set(range(self.num_frames)):
            raise ValueError("plan: every frame must appear in some sequence")
        counts = np.bincount(self.slots[self.owner], minlength=self.num_frames)
        if self.kind != "multidiffusion" and np.any(counts != 1):
            raise ValueError("plan: every frame must have exactly one owner")
        if self.anchor is not None:
            rows = np.arange(B)
            if np.any(self.anchor_positions < 0) or np.any(self.slots[rows, self.anchor_positions] != self.anchor):
                raise ValueError("plan: the anchor must be in every row at anchor_positions")
        elif np.any(self.anchor_positions != -1):
            raise ValueError("plan: anchor_positions must be -1 without an anchor")
        return self


def _padded_single(n: int, T: int) -> tuple[np.ndarray, np.ndarray]:
    """N <= T: one sequence of T slots covering every frame, repeats spread evenly (owner = first occurrence)."""
    # rounding an arithmetic progression with step (n-1)/(T-1) <= 1 hits every integer in [0, n-1]
    row = np.rint(np.linspace(0, n - 1, T)).astype(np.int64) if T > 1 else np.zeros(1, np.int64)
    owner = np.ones(T, bool)
    owner[1:] = row[1:] != row[:-1]
    return row[None], owner[None]


def _chunks(frames: np.ndarray, size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split `frames` (in order) into contiguous chunks of `size`; a short last chunk is filled with the frames
    just before it, which are marked as non-owners. Needs len(frames) >= size."""
    groups, owners = [], []
    for start in range(0, len(frames), size):
        stop = start + size
        if stop <= len(frames):
            groups.append(frames[start:stop])
            owners.append(np.ones(size, bool))
        else:
            fill = size - (len(frames) - start)
            groups.append(frames[len(frames) - size:])
            owners.append(np.arange(size) >= fill)
    return groups, owners


def _check(n: int, T: int) -> None:
    if n < 1:
        raise AnchorfaceError(f"the driving video has no frames (N={n})")
    if T < 1:
        raise AnchorfaceError(f"frames per sequence must be >= 1, got T={T}")


def anchored_plan(n: int, T: int) -> SequencePlan:
    """Anchored Diffusion (§3.2, Eq. 1): contiguous groups of T-1 frames, each completed by the central frame."""
    _check(n, T)
    anchor = n // 2
    if n <= T:
        slots, owner = _padded_single(n, T)
    else:
        if T < 2:
            raise AnchorfaceError("anchored sampling needs T >= 2 frames per sequence (anchor + one frame)")
        others = np.delete(np.arange(n, dtype=np.int64), anchor)
        groups, owners = _chunks(others, T - 1)
        rows, row_owner = [], []
        for b, (group, own) in enumerate(zip(groups, owners)):
            order = np.argsort(np.append(group, anchor), kind="stable")
            rows.append(np.append(group, anchor)[order])
            row_owner.append(np.append(own, b == 0)[order])  # sequence 0 owns (and donates) the anchor
        slots, owner = np.stack(rows), np.stack(row_owner)
    anchor_positions = np.argmax(slots == anchor, axis=1).astype(np.int64)  # first occurrence in each row
    return SequencePlan("anchored", n, slots, owner, anchor, anchor_positions).validate()


def multidiffusion_plan(n: int, T: int, stride: int | None = None) -> SequencePlan:
    """MultiDiffusion (Fig. 3a): uniform windows of T frames every `stride` frames (default T // 2), the last
    window aligned to the end of the video; overlapping predictions are averaged."""
    _check(n, T)
    stride = max(1, T // 2) if stride is None else int(stride)
    if not 1 <= stride <= T:
        raise AnchorfaceError(f"multidiffusion stride must be in [1, T={T}], got {stride}")
    if n <= T:
        slots, _ = _padded_single(n, T)
    else:
        starts = list(range(0, n - T, stride)) + [n - T]
        slots = np.stack([np.arange(s, s + T, dtype=np.int64) for s in starts])
    owner = np.ones_like(slots, dtype=bool)
    return SequencePlan("multidiffusion", n, slots, owner, None, np.full(len(slots), -1, np.int64)).validate()


def independent_plan(n: int, T: int) -> SequencePlan:
    """Independent sequences: consecutive chunks of T frames, nothing shared (no consistency across chunks)."""
    _check(n, T)
    if n <= T:
        slots, owner = _padded_single(n, T)
    else:
        groups, owners = _chunks(np.arange(n, dtype=np.int64), T)
        slots, owner = np.stack(groups), np.stack(owners)
    return SequencePlan("independent", n, slots, owner, None, np.full(len(slots), -1, np.int64)).validate()


def make_plan(kind: str, n: int, T: int, stride: int | None = None) -> SequencePlan:
    """Build the plan of the given kind (`anchored` | `multidiffusion` | `independent`)."""
    if kind == "anchored":
        return anchored_plan(n, T)
    if kind == "multidiffusion":
        return multidiffusion_plan(n, T, stride)
    if kind == "independent":
        return independent_plan(n, T)
    raise AnchorfaceError(f"unknown merge strategy '{kind}'; choose one of {', '.join(KINDS)}")

