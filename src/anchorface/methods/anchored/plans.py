"""Sequence plans: which driving frames are denoised together (§3.2, Fig. 3). Pure data (numpy), no torch.

A plan is kept apart from its execution (`anchorface.methods.anchored.sampler`): it says, for a driving video of N frames and a
model that denoises T frames at once, which frame sits at each (sequence, position) slot of the batch, which slot
renders each frame, and where the shared anchor sits in each sequence.

Three kinds:

- ``anchored`` (ours, Fig. 3b, Eq. 1-3): the anchor a = N // 2 (the central frame, §3.2) sits in *one common
  column* k of every sequence, as Eq. (1) draws it: each sequence holds k frames before the anchor, the anchor, and
  T-1-k frames after it, all in temporal order. So every sequence is a valid training-like sequence (each temporal
  position once, frames sorted, non-uniform spacing) and the anchor's overridden tokens carry the temporal
  positional encoding TPE_k of their own column in every sequence. The frames before the anchor are cut into B
  contiguous windows of k, those after it into B windows of T-1-k, and sequence i takes window i of each side, so
  it spans the i-th stretch of each half. k is the column that needs the fewest sequences, the central one on ties.
  A central anchor splits the video in two halves of (N-1)/2 frames while the columns split T-1 unevenly when T is
  even, so the side with fewer slots per sequence sets B and the other side's windows overlap (spread evenly): the
  overlapping slots are generated but not rendered (``owner=False``), and every frame keeps exactly one owner. For
  T = 8 this costs about 1/6 more sequences than T-1 new frames per sequence would (T = 4: about 1/2 more); we keep
  the paper's central anchor rather than move it to 3/7 (T = 4: 1/3) of the video. With T = 2 no common column
  exists (one free slot cannot hold frames from both sides in order), so T = 2 uses the sorted layout below.
- ``anchored-sorted`` (this project's first layout, kept for comparison): contiguous groups of T-1 frames each
  completed by the central anchor and sorted, so the anchor sits last in the sequences before it and first in
  those after it; its overridden tokens then carry sequence 0's TPE in every row.
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

KINDS = ("anchored", "multidiffusion", "independent", "anchored-sorted")


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


def _windows(frames: np.ndarray, size: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` contiguous windows of `size` over `frames` (in order), starts spread evenly from the first to the last
    possible one, so together they cover every frame (needs count * size >= len(frames) >= size). Returns the
    windows [count, size] and their owner flags: a frame is owned by the first window holding it."""
    if size == 0:
        return np.zeros((count, 0), np.int64), np.zeros((count, 0), bool)
    starts = np.rint(np.linspace(0, len(frames) - size, count)).astype(np.int64) if count > 1 else np.zeros(1, np.int64)
    idx = starts[:, None] + np.arange(size)
    owner = np.ones_like(idx, dtype=bool)
    owner[1:] = idx[1:] >= (starts[:-1] + size)[:, None]  # slots the previous window already holds
    return frames[idx], owner


def anchor_column(before: int, after: int, T: int) -> tuple[int, int]:
    """(column k of the anchor, number of sequences B) for `before` and `after` frames on either side of the anchor:
    the k that needs the fewest sequences, max(ceil(before / k), ceil(after / (T-1-k))); ties go to the column
    nearest the centre (T-1)/2."""
    best = None
    for k in range(T):
        m = T - 1 - k
        if (before and not k) or (after and not m) or before < k or after < m:
            continue  # a side with frames needs slots, and each window holds distinct frames
        B = max(-(-before // k) if k else 0, -(-after // m) if m else 0, 1)
        key = (B, abs(k - (T - 1) / 2), k)
        best = key if best is None or key < best else best
    if best is None:
        raise ValueError(f"no anchor column fits {before} + 1 + {after} frames in sequences of {T}")
    return best[2], best[0]


def _column_layout(n: int, T: int, anchor: int) -> tuple[np.ndarray, np.ndarray]:
    """Eq. (1): the anchor in one common column k; window i of the frames before it, the anchor, window i of the
    frames after it (n > T >= 3)."""
    before, after = np.arange(anchor, dtype=np.int64), np.arange(anchor + 1, n, dtype=np.int64)
    k, B = anchor_column(len(before), len(after), T)
    left, left_own = _windows(before, k, B)
    right, right_own = _windows(after, T - 1 - k, B)
    slots = np.concatenate([left, np.full((B, 1), anchor, np.int64), right], axis=1)
    anchor_own = np.zeros((B, 1), bool)
    anchor_own[0] = True  # sequence 0 owns (and donates) the anchor
    return slots, np.concatenate([left_own, anchor_own, right_own], axis=1)


def _sorted_layout(n: int, T: int, anchor: int) -> tuple[np.ndarray, np.ndarray]:
    """The first layout: contiguous groups of T-1 frames, each completed by the anchor and sorted (n > T >= 2)."""
    others = np.delete(np.arange(n, dtype=np.int64), anchor)
    groups, owners = _chunks(others, T - 1)
    rows, row_owner = [], []
    for b, (group, own) in enumerate(zip(groups, owners)):
        order = np.argsort(np.append(group, anchor), kind="stable")
        rows.append(np.append(group, anchor)[order])
        row_owner.append(np.append(own, b == 0)[order])  # sequence 0 owns (and donates) the anchor
    return np.stack(rows), np.stack(row_owner)


def _anchored(kind: str, n: int, T: int, layout) -> SequencePlan:
    """A plan around the central anchor a = n // 2 (§3.2): one padded sequence when n <= T, else `layout`."""
    _check(n, T)
    anchor = n // 2
    if n <= T:
        slots, owner = _padded_single(n, T)
    elif T < 2:
        raise AnchorfaceError("anchored sampling needs T >= 2 frames per sequence (anchor + one frame)")
    else:
        slots, owner = layout(n, T, anchor)
    anchor_positions = np.argmax(slots == anchor, axis=1).astype(np.int64)  # first occurrence in each row
    return SequencePlan(kind, n, slots, owner, anchor, anchor_positions).validate()


def anchored_plan(n: int, T: int) -> SequencePlan:
    """Anchored Diffusion (§3.2, Eq. 1-3): the central frame in one common column k of every sequence, with k frames
    before it and T-1-k after it (see the module docstring). T = 2 has one free slot, and no common column can hold
    frames from both sides in temporal order: it uses the sorted layout."""
    return _anchored("anchored", n, T, _column_layout if T > 2 else _sorted_layout)


def anchored_sorted_plan(n: int, T: int) -> SequencePlan:
    """The first layout (kept for comparison): contiguous groups of T-1 frames, each completed by the central frame and
    sorted, so the anchor is last in the sequences before it and first in those after it."""
    return _anchored("anchored-sorted", n, T, _sorted_layout)


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
    """Build the plan of the given kind (`KINDS`)."""
    if kind == "anchored":
        return anchored_plan(n, T)
    if kind == "anchored-sorted":
        return anchored_sorted_plan(n, T)
    if kind == "multidiffusion":
        return multidiffusion_plan(n, T, stride)
    if kind == "independent":
        return independent_plan(n, T)
    raise AnchorfaceError(f"unknown merge strategy '{kind}'; choose one of {', '.join(KINDS)}")



# ------------------------------------------------------------------------------------------------------------------
# Multi-shot videos (§5: "multiple anchors"): one plan per shot
# ------------------------------------------------------------------------------------------------------------------

@dataclass
class ShotPlans:
    """One plan per shot of a multi-shot driving video (§5, "multiple anchors"): shot s covers the timeline frames
    [start, end) = `shots[s]` and `plans[s]` indexes them locally (0 = the shot's first frame), so each shot has its
    own central anchor and no sequence spans a cut. A single-shot video has one entry, the plain plan."""

    kind: str
    num_frames: int
    shots: list[tuple[int, int]]
    plans: list[SequencePlan]

    @property
    def num_sequences(self) -> int:
        return sum(p.num_sequences for p in self.plans)

    @property
    def anchors(self) -> list[int | None]:
        """The anchor of each shot as a timeline frame index (None for plans without one)."""
        return [None if p.anchor is None else a + p.anchor for (a, _), p in zip(self.shots, self.plans)]

    def timeline_slots(self) -> list[np.ndarray]:
        """Each shot's slots [B_s, T] as timeline frame indices."""
        return [p.slots + a for (a, _), p in zip(self.shots, self.plans)]

    def validate(self) -> "ShotPlans":
        """The shots tile [0, N) in order and each plan covers its shot (ValueError otherwise)."""
        edges = [a for a, _ in self.shots] + [self.shots[-1][1]] if self.shots else []
        if not self.shots or edges[0] != 0 or edges[-1] != self.num_frames or \
                any(b != a for (_, b), (a, _) in zip(self.shots[:-1], self.shots[1:])) or \
                any(b <= a for a, b in self.shots):
            raise ValueError(f"shot plans: shots {self.shots} do not tile {self.num_frames} frames")
        if len(self.plans) != len(self.shots) or any(p.num_frames != b - a for (a, b), p in zip(self.shots, self.plans)):
            raise ValueError("shot plans: each plan must cover its shot")
        return self


def make_shot_plans(kind: str, shots: list[tuple[int, int]], T: int, stride: int | None = None) -> ShotPlans:
    """`make_plan` for each shot [start, end) (`DrivingClip.shots`): each shot's anchor is its central frame."""
    shots = [(int(a), int(b)) for a, b in shots]
    n = shots[-1][1] if shots else 0
    _check(n, T)
    return ShotPlans(kind, n, shots, [make_plan(kind, b - a, T, stride) for a, b in shots]).validate()


# ------------------------------------------------------------------------------------------------------------------
# Many processes: which sequences each rank runs
# ------------------------------------------------------------------------------------------------------------------

@dataclass
class RankSplit:
    """How `world` processes share one plan's sequences (pure data; executed by `sampler.anchored_diffusion` and
    `anchored.ranks`).

    `assigned[r]`: the rows rank r renders; every row goes to exactly one rank, row 0 (the anchor's donor) to rank
    0, the others in contiguous blocks. `rows[r]`: the rows rank r runs: its own and, for an anchored plan, row 0
    again, recomputed (deterministic) so that its anchor tokens can be replayed locally (Alg. 1 with no donor from
    another process). `frames[r]`: the frames rank r renders (owner slots in `assigned[r]`).
    `imports[r]`: frames its rows read but no row it runs owns: in this project's column layout windows of one side
    overlap (see the module docstring), so a sequence may read a frame its neighbour renders; their latents are
    sent after every step by the rank that renders them (`exports[q]`, ascending: a few frames per block boundary).
    Multidiffusion averages the windows of a frame at every step: it is not split (rank 0 runs it all)."""

    world: int
    assigned: list[np.ndarray]
    rows: list[np.ndarray]
    frames: list[np.ndarray]
    imports: list[np.ndarray]
    exports: list[np.ndarray]

    @property
    def exchanges(self) -> bool:
        """Whether any latent has to be sent between ranks during sampling."""
        return any(len(x) for x in self.imports)


def split_rows(plan: SequencePlan, world: int) -> RankSplit:
    """Split `plan`'s sequences across `world` ranks (`RankSplit`): rows 1..B-1 in contiguous blocks as even as
    possible, so each rank runs 1 + about (B-1)/world sequences per step."""
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    B = plan.num_sequences
    if plan.kind == "multidiffusion" or world == 1:
        blocks = [np.arange(B)] + [np.zeros(0, np.int64)] * (world - 1)
    else:
        rest = np.array_split(np.arange(1, B, dtype=np.int64), world)
        blocks = [np.concatenate([[0], rest[0]]).astype(np.int64)] + [r.astype(np.int64) for r in rest[1:]]
    runs = [np.union1d([0], b).astype(np.int64) if len(b) and plan.anchor is not None else b for b in blocks]
    owner_rank = np.full(plan.num_frames, -1, np.int64)
    frames = []
    for r, block in enumerate(blocks):
        own = plan.owner[block] if len(block) else np.zeros((0, plan.frames_per_sequence), bool)
        f = np.unique(plan.slots[block][own]) if len(block) else np.zeros(0, np.int64)
        owner_rank[f] = r
        frames.append(f.astype(np.int64))
    imports = []
    for run in runs:
        reads = np.unique(plan.slots[run]) if len(run) else np.zeros(0, np.int64)
        done = np.unique(plan.slots[run][plan.owner[run]]) if len(run) else np.zeros(0, np.int64)
        imports.append(np.setdiff1d(reads, done).astype(np.int64))
    wanted = np.unique(np.concatenate(imports)) if imports else np.zeros(0, np.int64)
    exports = [wanted[owner_rank[wanted] == r].astype(np.int64) for r in range(world)]
    return RankSplit(world, blocks, runs, frames, imports, exports)
