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
  `diffusion.scheduler_step`), applied frame-wise. A frame is updated as soon as the last sequence that reads it
  has been run in this step (owners, duplicates and the anchor included), so the only O(N) state is z itself. The scheduler's noise for frame f at
  step k comes from a generator seeded by (seed, k, f): results do not depend on micro-batching or on which
  frames are updated together.
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


def initial_noise(seed: int, num_frames: int, latent_shape, scale: float = 1.0, device=None) -> torch.Tensor:
    """Q_K: one noise tensor per timeline frame [N, C, h, w] (the anchor's noise is shared by every sequence),
    times `scale`; filled frame by frame in place (no second O(N) copy)."""
    z = torch.empty((num_frames, *latent_shape), device=device)
    for f in range(num_frames):
        z[f] = torch.randn(tuple(latent_shape), generator=frame_generators(seed, 0, [f])[0]).mul_(scale)
    return z


def micro_batches(num_sequences: int, micro_batch: int) -> list[np.ndarray]:
    """Rows of each forward pass: [0, mb), [mb, 2mb), ... (sequence 0, the anchor donor, comes first)."""
    return [np.arange(s, min(s + micro_batch, num_sequences)) for s in range(0, num_sequences, micro_batch)]


class _FrameMerge:
    """Override / average per-slot predictions onto timeline frames; a frame becomes ready once the last
    micro-batch that reads it has run (so z can be updated in place without disturbing later gathers)."""

    def __init__(self, plan: SequencePlan, batches: list[np.ndarray]):
        self.plan, self.weights = plan, plan.weights
        last = np.zeros(plan.num_frames, np.int64)
        for m, rows in enumerate(batches):
            last[np.unique(plan.slots[rows])] = m
        self.ready_after = [np.flatnonzero(last == m) for m in range(len(batches))]
        self.pending: dict[int, torch.Tensor] = {}

    def add(self, m: int, rows: np.ndarray, out: torch.Tensor) -> tuple[np.ndarray, torch.Tensor | None]:
        """Merge micro-batch m's predictions [b, T, C_out, h, w]; return the ready frames and their predictions."""
        for i, b in enumerate(rows):
            for t in np.flatnonzero(self.weights[b]):
                f, w = int(self.plan.slots[b, t]), float(self.weights[b, t])
                pred = out[i, t].clone() if w == 1.0 else out[i, t] * w  # no view: frees the batch's output
                self.pending[f] = pred if f not in self.pending else self.pending[f] + pred
        frames = self.ready_after[m]
        if len(frames) == 0:
            return frames, None
        return frames, torch.stack([self.pending.pop(int(f)) for f in frames])


def anchored_diffusion(model, diffusion, plan: SequencePlan, g, landmark_vectors, *, sampler: str = "ddpm",
                       steps: int = 250, guidance_scale: float = 1.0, micro_batch: int = 4, seed: int = 0,
                       latent_shape: tuple[int, int, int], guidance: str = "both", conditions: str = "both",
                       progress: bool = True, callback: Callable[[SamplerEvent], None] | None = None) -> torch.Tensor:
    """Algorithm 1: sample latents [N, C, h, w] (timeline order, float32) for the plan's N driving frames.

    g: [Dg] or [1, Dg] global signal G; landmark_vectors: [N, Dl] per-frame L (numpy or torch). `sampler` and
    `steps` choose the diffusers scheduler; `guidance_scale` != 1 enables classifier-free guidance on the
    `guidance` signals; `conditions` are the signals given at all (`options.CONDITION_SUBSETS`). Options are
    checked by `options.check_sampling`. See the module docstring for the formulation."""
    from anchorface.diffusion.sampling import guided, learns_sigma, scheduler_step
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

    def sdit(x, t, rows, uncond: bool, donor):
        """One forward pass over sequences `rows`, with the anchoring hook (record when donor is None)."""
        b = len(rows)
        kwargs = {}
        if conditional:
            kwargs = dict(g=None if g is None else g.expand(b, -1), lmk=lmk[plan.slots[rows]].to(device, dtype))
        for name in flags[uncond]:
            kwargs[name] = torch.ones(b, dtype=torch.bool, device=device)
        hook = None
        if plan.anchor is not None:
            hook = AnchorOverride(positions=torch.as_tensor(plan.anchor_positions[rows], device=device), donor=donor)
        out = model(x.to(dtype), torch.full((b,), int(t), device=device), anchor=hook, **kwargs)
        return out.float(), hook

    scheduler = diffusion.make_scheduler(sampler, int(steps), learned_sigma=learns_sigma(model))
    batches = micro_batches(plan.num_sequences, int(micro_batch))
    z = initial_noise(seed, N, tuple(latent_shape), float(scheduler.init_noise_sigma), device)  # Q_K
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for k, t in enumerate(tqdm(scheduler.timesteps, desc="denoising", unit="step", disable=not progress)):
                merge = _FrameMerge(plan, batches)
                donor = donor_uncond = None  # sequence 0's anchor tokens at this step (cond / uncond pass)
                for m, rows in enumerate(batches):
                    gather = slots[torch.as_tensor(rows, device=device)]
                    x = scheduler.scale_model_input(z[gather], t)  # gather Q_k: [b, T, C, h, w]
                    out, hook = sdit(x, t, rows, False, donor)  # Q'_{k-1}, anchor overridden in all layers
                    hook_u = None
                    if cfg:
                        out_u, hook_u = sdit(x, t, rows, True, donor_uncond)
                        out = guided(out, out_u, guidance_scale, z.shape[1])
                    if hook is not None and donor is None:
                        donor = hook.recorded
                        donor_uncond = hook_u.recorded if hook_u is not None else None
                    if callback is not None:
                        callback(SamplerEvent("batch", k, int(t), z, rows, x, out, hook, hook_u))
                    frames, pred = merge.add(m, rows, out)  # Override(Q'_{k-1}) onto timeline frames
                    if pred is not None:  # DiffusionUpdateStep for the frames no later sequence reads
                        idx = torch.as_tensor(frames, device=device)
                        gens = frame_generators(seed, k + 1, frames)
                        z[idx] = scheduler_step(scheduler, pred[None], t, z[idx][None], generator=gens)[0]
                if callback is not None:
                    callback(SamplerEvent("step", k, int(t), z))
    finally:
        model.train(was_training)
    return z
