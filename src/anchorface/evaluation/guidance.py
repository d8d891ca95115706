"""The guidance study of §4.5.2 (Fig. 7): how much each guidance signal helps the sDiT recover x0, per timestep.

The paper trains four models (no guidance, landmarks, CLIP, both) and plots each guided model's improvement in
recovering x0 over the unguided one across timesteps. We measure the same quantity with ONE model whose signals
can be dropped at sampling (its learned null embeddings, §3.1; trained with per-signal dropout,
`data.signal_dropout`, so every subset is in distribution): for a real driving sequence x0 (the codec latents of
T consecutive face crops), a timestep t and a fixed noise, x_t = q(x0, t) and

    MSE_s(t) = mean |x0_hat(x_t, t; signals s) - x0|^2,   improvement_s(t) = MSE_none(t) - MSE_s(t),

for s in landmarks, global, both. One model with dropped signals is not four models trained apart (the report
says so): it isolates what each signal contributes to the same network.
"""

from __future__ import annotations

import numpy as np
import torch

from anchorface.evaluation.stats import bootstrap_ci
from anchorface.faces.landmarks import landmark_vector
from anchorface.frozen.codecs import to_pixels
from anchorface.methods.anchored.options import CONDITIONS, dropped_signals

GUIDANCE_TIMESTEPS = 20  # points of the curve, evenly spaced over [0, T_max)
GUIDED = ("landmarks", "global", "both")


def study_timesteps(num_timesteps: int, points: int = GUIDANCE_TIMESTEPS) -> list[int]:
    """Evenly spaced timesteps from the middle of the first bin to the last (e.g. 25, 75, ..., 975)."""
    step = num_timesteps / points
    return [int(step * (i + 0.5)) for i in range(points)]


def _noise(seed: int, case: int, t: int, shape) -> torch.Tensor:
    state = np.random.SeedSequence([int(seed), 7, int(case), int(t)]).generate_state(1, np.uint64)[0]
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(state) >> 1))


@torch.no_grad()
def recovery_errors(pipe, sequences, timesteps: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    """MSE of x0_hat against x0 [cases, timesteps] for every condition subset (`options.CONDITIONS`).

    sequences: (crops uint8 [T, R, R, 3] at the model's resolution, G [1, D] or None, landmarks [T, 478, 3]) per
    case, T = the model's frames per sequence. The noise of (case, t) is the same for every subset."""
    sdit, diffusion, device = pipe.sdit, pipe.diffusion, pipe.device
    if getattr(sdit, "mapping", None) is None:
        from anchorface.errors import AnchorfaceError

        raise AnchorfaceError("the guidance study needs a conditional model (global_dim > 0)")
    dtype = next(sdit.parameters()).dtype
    out = {s: np.zeros((len(sequences), len(timesteps))) for s in CONDITIONS}
    for ci, (crops, g, lmk) in enumerate(sequences):
        x0 = pipe.codec.encode(to_pixels(crops).to(device))[None]  # [1, T, C, h, w]
        C = x0.shape[2]
        lv = torch.as_tensor(landmark_vector(np.asarray(lmk, np.float32)))[None].to(device, dtype)
        gg = g.to(device, dtype) if g is not None else None
        for ti, t in enumerate(timesteps):
            tt = torch.full((1,), int(t), device=device, dtype=torch.long)
            x_t = diffusion.q_sample(x0, tt, _noise(seed, ci, t, x0.shape).to(device))
            for subset in CONDITIONS:
                dropped = dropped_signals(subset)
                flags = {f"drop_{s}": torch.ones(1, dtype=torch.bool, device=device) for s in dropped}
                pred = sdit(x_t.to(dtype), tt, g=gg, lmk=lv, **flags).float()[:, :, :C]
                x0_hat = diffusion.x0_from_prediction(pred, x_t, tt)
                out[subset][ci, ti] = float(((x0_hat - x0) ** 2).mean())
    return out


def summarize(errors: dict[str, np.ndarray], timesteps: list[int], seed: int = 0) -> list[dict]:
    """Per timestep: each subset's mean MSE, and for each guided subset the improvement over `none` (absolute and
    relative to MSE_none, in %) with a 95% bootstrap interval over the cases."""
    rows = []
    base = errors["none"]
    for ti, t in enumerate(timesteps):
        row = {"t": int(t), "mse": {s: float(errors[s][:, ti].mean()) for s in errors}}
        for s in GUIDED:
            gain = base[:, ti] - errors[s][:, ti]
            rel = 100.0 * gain / np.maximum(base[:, ti], 1e-12)
            m, lo, hi = bootstrap_ci(gain, seed=seed)
            rm, rlo, rhi = bootstrap_ci(rel, seed=seed)
            row[s] = {"improvement": m, "ci": [lo, hi], "relative_pct": rm, "relative_ci": [rlo, rhi]}
        rows.append(row)
    return rows
