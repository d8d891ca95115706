"""The anchored sampler: Algorithm 1 of the paper (§3.2) in one function, micro-batched with anchor replay.

Our formulation. Latents are held per *timeline frame*, z [N, C, h, w], not per (sequence, position) slot.
Every diffusion step gathers z into the B sequences of the plan, runs the sDiT on them and merges the
predictions back onto the frames. The anchor's latent is thus one tensor, identical in all sequences by
construction, with a shared initial noise (the paper's "Override" of the anchor, kept after every update).

- Alg. 1, Q'_{k-1} = sDiT(C, Q_k): the sequences are run in micro-batches of `micro_batch` sequences. Anchored
  plans pass `AnchorOverride`: the micro-batch holding sequence 0 records sequence 0's anchor tokens after the
  embedding, after every block and at the output (for this step); later micro-batches replay them as donors. So
  every sequence attends to the very tokens of sequence 0's anchor, in all layers, and the result equals one big
  batch of B sequences while peak memory depends on the micro-batch only.
- Alg. 1, Override(Q'_{k-1}): each frame takes the prediction of its owner slot (with the hook this is the
  override: the anchor's owner is sequence 0); multidiffusion averages the slots of a frame (Fig. 3a).
- Alg. 1, DiffusionUpdateStep: one step of the diffusers scheduler (`GaussianDiffusion.make_scheduler`,
  `diffusion.sampling.FrameSolver`), applied frame-wise. A frame is updated as soon as the last sequence that
  reads it has been run in this step (owners, duplicates and the anchor included), so the only O(N) state is z
  itself (and the per-frame history of a multistep solver, DPM-Solver++(2M) or UniPC, which keeps their results
  independent of micro-batching too). The scheduler's noise for frame f at step k comes from a generator seeded by
  (seed, k, f): results do not depend on micro-batching or on which frames are updated together.
- Classifier-free guidance (scale != 1): a second, unconditional pass per micro-batch with the guided signals
  dropped (`guidance`: both / landmarks / global); the anchor is recorded and replayed separately in that pass,
  so it is handled consistently there too.
- Condition subsets (supp. Table 1, "Guidance" column): `conditions` names the signals given at sampling; every
  forward pass drops the others (the sDiT's learned null embeddings, `drop_global` / `drop_landmarks`).

Decoding and reordering to the timeline (Alg. 1 steps 4-5) are streamed by `anchorface.methods.anchored.pipeline`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from anchorface.errors import AnchorfaceError
from anchorface.methods.anchored.options import SIGNALS, check_sampling, dropped_signals
from anchorface.methods.anchored.plans import SequencePlan


@dataclass
class SamplerEvent:
    """What `callback` sees. kind "batch": after the sDiT ran on the sequences `rows` (inputs = their gathered
    latents [b, T, C, h, w], outputs = merged cond/uncond predictions [b, T, C_out, h, w], anchor / anchor_uncond =
    the AnchorOverride hooks used). kind "step": after every frame was updated (latents = z [N, C, h, w])."""

    kind: str
    step: int
    timestep: int
    latents: torch.Tensor
    rows: np.ndarray | None = None
    inputs: torch.Tensor | None = None
    outputs: torch.Tensor | None = None
    anchor: object | None = None
    anchor_uncond: object | None = None


def frame_generators(seed: int, step: int, frames) -> list[torch.Generator]:
    """CPU generators for the noise of `frames` at `step` (step 0 = the initial noise), seeded by
    (seed, step, frame) so the noise of a frame does not depend on which frames are drawn together."""
    gens = []
    for f in np.asarray(frames).reshape(-1).tolist():
        state = np.random.SeedSequence([int(seed), int(step), int(f)]).generate_state(2, np.uint32)
        gens.append(torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1))
    return gens


def initial_noise(seed: int, num_frames: int, latent_shape, scale: float = 1.0, device=None,
                  frame_offset: int = 0) -> torch.Tensor:
    """Q_K: one noise tensor per timeline frame [N, C, h, w] (the anchor's noise is shared by every sequence),
    times `scale`; drawn frame by frame on the host (CPU generators) and moved to `device` in one copy, not one
    synchronising copy per frame. Frame f is seeded as timeline frame `frame_offset + f` (a shot of a multi-shot
    video draws the noise its frames have in the whole video)."""
    z = torch.empty((num_frames, *latent_shape))
    for f in range(num_frames):
        torch.randn(tuple(latent_shape), generator=frame_generators(seed, 0, [frame_offset + f])[0], out=z[f])
    return z.mul_(scale).to(device)


def micro_batches(num_sequences: int, micro_batch: int) -> list[np.ndarray]:
    """Rows of each forward pass: [0, mb), [mb, 2mb), ... (sequence 0, the anchor donor, comes first)."""
    return [np.arange(s, min(s + micro_batch, num_sequences)) for s in range(0, num_sequences, micro_batch)]


class FrameConditions:
    """C = Mapping(G, L) (§3.1) computed once per video and reused at every step (it does not depend on t).

    The mapping network is frame-wise, so C is computed per timeline frame, [N, D], once for each set of dropped
    signals (the conditional pass and, with guidance, the unconditional one), and gathered into the sequences of a
    micro-batch. `reuse` turns the keyword arguments of one of the sampler's forward passes (g, lmk and drop flags,
    which the sampler sets for whole micro-batches) into `cond=C`, keyed by the names of the flags, so no tensor
    is read back from the device. A model without `condition` gets its keyword arguments as they are."""

    _SIGNALS = ("g", "lmk", "drop", "drop_global", "drop_landmarks")

    def __init__(self, model, plan: SequencePlan, g: torch.Tensor | None, lmk: torch.Tensor):
        self.model, self.plan, self.g, self.lmk = model, plan, g, lmk
        self.enabled = callable(getattr(model, "condition", None)) and g is not None
        self.cache: dict[tuple, torch.Tensor] = {}

    def reuse(self, index: torch.Tensor, kwargs: dict) -> dict:
        """`index`: the timeline frames of the micro-batch's slots [b, T], on the model's device."""
        if not self.enabled or "g" not in kwargs or any(k not in self._SIGNALS for k in kwargs):
            return kwargs
        key = tuple(sorted(k for k, v in kwargs.items() if k.startswith("drop") and v is not None))
        if key not in self.cache:
            device = kwargs["lmk"].device
            flags = {k: torch.ones(1, dtype=torch.bool, device=device) for k in key}
            self.cache[key] = self.model.condition(self.g[:1], self.lmk[None].to(device), **flags)[0]  # [N, D]
        c = self.cache[key]
        return dict(cond=c[index])


class _FrameMerge:
    """Override / average per-slot predictions onto timeline frames; a frame becomes ready once the last
    micro-batch that reads it has run (so z can be updated in place without disturbing later gathers).

    Vectorised: for each micro-batch the host precomputes which output slots feed which frames, so merging is one
    gather (plus weighted adds for frames with several slots, in row order as a sequential sum would do them);
    only frames that a later micro-batch still reads (the anchor, window overlaps) are carried between batches."""

    def __init__(self, plan: SequencePlan, batches: list[np.ndarray], device=None):
        self.plan, w = plan, plan.weights
        last = np.full(plan.num_frames, -1, np.int64)  # -1: no slot with weight here (another process renders it)
        weighted = np.zeros(plan.num_frames, bool)
        for m, rows in enumerate(batches):
            last[np.unique(plan.slots[rows])] = m
            weighted[plan.slots[rows][w[rows] > 0]] = True
        last[~weighted] = -1
        self.ready_after = [np.flatnonzero(last == m) for m in range(len(batches))]
        self.pending: dict[int, torch.Tensor] = {}
        self._batches, seen = [], np.zeros(0, np.int64)
        for m, rows in enumerate(batches):
            i, t = np.nonzero(w[rows])  # local row, position of every slot with weight, in row-major order
            frames, weight = self.plan.slots[rows][i, t], w[rows][i, t]
            src = i * plan.slots.shape[1] + t  # row of the batch output folded to [b * T, ...]
            touched, first = np.unique(frames, return_index=True)  # sorted frames, first slot of each
            dst = np.searchsorted(touched, frames)
            k = np.zeros(len(frames), np.int64)  # occurrence of the frame within this batch, in row order
            for j in range(1, len(frames)):
                k[j] = np.count_nonzero(frames[:j] == frames[j])
            passes = []
            for o in range(1, int(k.max(initial=0)) + 1):
                sel = np.flatnonzero(k == o)
                passes.append((torch.as_tensor(src[sel], device=device), torch.as_tensor(dst[sel], device=device),
                               _weights(weight[sel], device)))
            ready = self.ready_after[m]
            in_batch = np.isin(ready, touched)
            carry_in = np.flatnonzero(np.isin(touched, seen))  # frames with slots in earlier batches too
            seen = np.union1d(seen, touched)
            self._batches.append(dict(
                src=torch.as_tensor(src[first], device=device), w=_weights(weight[first], device), passes=passes,
                ready=ready, ready_in_batch=in_batch, frames=torch.as_tensor(ready, device=device),
                ready_local=torch.as_tensor(np.searchsorted(touched, ready[in_batch]), device=device),
                ready_rows=torch.as_tensor(np.flatnonzero(in_batch), device=device),
                all_ready_in_order=bool(len(ready) == len(touched) and in_batch.all()),
                carry_in=[(int(j), int(touched[j])) for j in carry_in],
                keep=[(int(f), int(np.searchsorted(touched, f))) for f in np.setdiff1d(touched, ready)]))

    def reset(self) -> "_FrameMerge":
        """Ready for the next diffusion step (the index plan is the same at every step)."""
        if self.pending:
            raise RuntimeError("frames left unmerged at the end of a step")
        return self

    def frame_index(self, m: int) -> torch.Tensor:
        """The frames ready after micro-batch m, as an index tensor on the latents' device."""
        return self._batches[m]["frames"]

    def add(self, m: int, rows: np.ndarray, out: torch.Tensor) -> tuple[np.ndarray, torch.Tensor | None]:
        """Merge micro-batch m's predictions [b, T, C_out, h, w]; return the ready frames and their predictions."""
        spec = self._batches[m]
        flat = out.reshape(-1, *out.shape[2:])
        acc = flat[spec["src"]]  # a gather: a copy, so the batch output can be freed
        if spec["w"] is not None:
            acc.mul_(spec["w"])
        for j, f in spec["carry_in"]:  # frames with slots in earlier batches (few: window overlaps)
            acc[j] += self.pending.pop(f)
        for src, dst, wt in spec["passes"]:  # further slots of a frame in this batch, in row order
            acc.index_add_(0, dst, flat[src] if wt is None else flat[src] * wt)
        for f, j in spec["keep"]:
            self.pending[f] = acc[j].clone()
        frames = spec["ready"]
        if len(frames) == 0:
            return frames, None
        if spec["all_ready_in_order"]:
            return frames, acc
        pred = acc.new_empty((len(frames), *acc.shape[1:]))
        pred[spec["ready_rows"]] = acc[spec["ready_local"]]
        for j in np.flatnonzero(~spec["ready_in_batch"]).tolist():  # carried frames read for the last time
            pred[j] = self.pending.pop(int(frames[j]))
        return frames, pred


def _draws_noise(scheduler) -> bool:
    """Whether a scheduler step draws noise (DDPM); DDIM with eta = 0 does not, so no generators are built."""
    from diffusers import DDPMScheduler

    return isinstance(scheduler, DDPMScheduler)


def _weights(w: np.ndarray, device) -> torch.Tensor | None:
    """Per-slot weights as a [n, 1, 1, 1] float32 tensor, or None when all are 1 (owner-based plans)."""
    if np.all(w == 1.0):
        return None
    return torch.as_tensor(w, dtype=torch.float32, device=device).view(-1, 1, 1, 1)


def anchored_diffusion(model, diffusion, plan: SequencePlan, g, landmark_vectors, *, sampler: str = "ddpm",
                       steps: int = 250, guidance_scale: float = 1.0, micro_batch: int = 4, seed: int = 0,
                       latent_shape: tuple[int, int, int], guidance: str = "both", conditions: str = "both",
                       progress: bool = True, callback: Callable[[SamplerEvent], None] | None = None,
                       rows: np.ndarray | None = None, frame_offset: int = 0,
                       exchange: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Algorithm 1: sample latents [N, C, h, w] (timeline order, float32) for the plan's N driving frames.

    g: [Dg] or [1, Dg] global signal G; landmark_vectors: [N, Dl] per-frame L (numpy or torch). `sampler` and
    `steps` choose the diffusers scheduler; `guidance_scale` != 1 enables classifier-free guidance on the
    `guidance` signals; `conditions` are the signals given at all (`options.CONDITION_SUBSETS`). Options are
    checked by `options.check_sampling`. See the module docstring for the formulation.

    One process of many (`plans.RankSplit`): `rows` are the sequences this process runs (ascending, row 0 first
    for an anchored plan: its anchor tokens are recomputed here, not received); only the frames they render are
    updated, and `exchange(z)`, called after every step, fills the frames they read but do not render. Noise is
    seeded per timeline frame `frame_offset + f` and step, so the result does not depend on the split."""
    from anchorface.diffusion.sampling import FrameSolver, guided, learns_sigma
    from anchorface.methods.anchored.sdit import AnchorOverride

    conditional = getattr(model, "mapping", None) is not None
    check_sampling(sampler=sampler, steps=steps, guidance_scale=guidance_scale, micro_batch=micro_batch,
                   guidance=guidance, conditions=conditions, num_timesteps=diffusion.num_timesteps,
                   conditional=conditional)
    param = next(itertools.chain(model.parameters(), model.buffers()))
    device, dtype = param.device, param.dtype
    N, slots = plan.num_frames, torch.as_tensor(plan.slots, device=device)
    lmk = torch.as_tensor(np.asarray(landmark_vectors, dtype=np.float32) if not torch.is_tensor(landmark_vectors)
                          else landmark_vectors)
    if lmk.shape[0] != N:
        raise AnchorfaceError(f"got landmarks for {lmk.shape[0]} frames but the plan has {N}")
    g = None if g is None else torch.as_tensor(g).reshape(1, -1).to(device, dtype)
    cfg = guidance_scale != 1.0 and guidance != "none"
    # the sDiT's drop flags of the conditional and the unconditional pass: both signals -> `drop` (joint dropout)
    flags = {}
    for uncond in (False, True):
        dropped = dropped_signals(conditions, guidance if uncond else None)
        flags[uncond] = ["drop"] if dropped == SIGNALS else [f"drop_{s}" for s in dropped]

    def sdit(x, t, rows, index, uncond: bool, donor):
        """One forward pass over sequences `rows` (their slots' frames: `index`, on the device), with the anchoring
        hook (record when donor is None). Everything per pass stays on the device: no host synchronisation."""
        b = len(rows)
        kwargs = {}
        if conditional:
            kwargs = dict(g=None if g is None else g.expand(b, -1), lmk=lmk_device[index])
        for name in flags[uncond]:
            kwargs[name] = torch.ones(b, dtype=torch.bool, device=device)
        kwargs = cond_cache.reuse(index, kwargs)  # C = Mapping(G, L) from the per-video cache
        hook = None
        if plan.anchor is not None:  # positions stay on the host: the hook resolves them without a device sync
            hook = AnchorOverride(positions=torch.as_tensor(plan.anchor_positions[rows]), donor=donor)
        out = model(x.to(dtype), torch.full((b,), int(t), device=device), anchor=hook, **kwargs)
        return out.float(), hook

    lmk_device = lmk.to(device, dtype)  # [N, Dl]: moved once, gathered per pass on the device
    cond_cache = FrameConditions(model, plan, g, lmk)
    scheduler = diffusion.make_scheduler(sampler, int(steps), learned_sigma=learns_sigma(model))
    if rows is None:
        batches = micro_batches(plan.num_sequences, int(micro_batch))
    else:
        rows = np.asarray(rows, np.int64)
        batches = [rows[i:i + int(micro_batch)] for i in range(0, len(rows), int(micro_batch))]
        if plan.anchor is not None and len(rows) and rows[0] != 0:
            raise ValueError("an anchored plan's rows must start with row 0, the anchor's donor")
    z = initial_noise(seed, N, tuple(latent_shape), float(scheduler.init_noise_sigma), device, frame_offset)  # Q_K
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            stochastic, solver = _draws_noise(scheduler), FrameSolver(scheduler, N)
            gathers = [slots[torch.as_tensor(rows, device=device)] for rows in batches]
            merge = _FrameMerge(plan, batches, device)  # the index plan is the same at every step
            for k, t in enumerate(tqdm(scheduler.timesteps, desc="denoising", unit="step", disable=not progress)):
                merge.reset()
                donor = donor_uncond = None  # sequence 0's anchor tokens at this step (cond / uncond pass)
                for m, rows in enumerate(batches):
                    x = scheduler.scale_model_input(z[gathers[m]], t)  # gather Q_k: [b, T, C, h, w]
                    out, hook = sdit(x, t, rows, gathers[m], False, donor)  # Q'_{k-1}, anchor overridden in all layers
                    hook_u = None
                    if cfg:
                        out_u, hook_u = sdit(x, t, rows, gathers[m], True, donor_uncond)
                        out = guided(out, out_u, guidance_scale, z.shape[1])
                    if hook is not None and donor is None:
                        donor = hook.recorded
                        donor_uncond = hook_u.recorded if hook_u is not None else None
                    if callback is not None:
                        callback(SamplerEvent("batch", k, int(t), z, rows, x, out, hook, hook_u))
                    frames, pred = merge.add(m, rows, out)  # Override(Q'_{k-1}) onto timeline frames
                    if pred is not None:  # DiffusionUpdateStep for the frames no later sequence reads
                        idx = merge.frame_index(m)
                        gens = frame_generators(seed, k + 1, frames + frame_offset) if stochastic else None
                        z[idx] = solver.step(k, t, idx, pred, z[idx], generator=gens)  # per-frame solver state
                if exchange is not None:
                    exchange(z)  # frames read here but rendered by another process, as they are after this step
                if callback is not None:
                    callback(SamplerEvent("step", k, int(t), z))
    finally:
        model.train(was_training)
    return z
