"""The sampling options of Anchored Diffusion and their one validation (§3.2, Alg. 1; supp. §4 and Table 1).

One vocabulary for every command and API that samples: merge strategies (`MERGES`, the plans of Fig. 3), samplers
(`SAMPLERS`, the diffusers schedulers of `diffusion/sampling.py`) and condition subsets (`CONDITION_SUBSETS`). A
condition subset names the signals of the sDiT (§3.1: the global signal G and the landmarks L) that an option acts
on; two options use it:

- `conditions`: the signals *given* at sampling, the others replaced by the model's learned null embeddings in
  every forward pass (supp. Table 1, "Guidance" column: none / landmarks / global / both);
- `guidance`: the signals classifier-free guidance *guides*, i.e. those its unconditional pass drops (supp. §4:
  both, jointly; "none" turns guidance off).

`check_sampling` is the only place these options are validated: the CLI, `AnchorFacePipeline`, the sampler and
`anchorface evaluate` all call it, so a bad value gets the same one-line `AnchorfaceError` everywhere.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from anchorface.diffusion.sampling import SAMPLERS  # noqa: F401  (re-exported: the diffusers schedulers)
from anchorface.errors import AnchorfaceError
from anchorface.methods.anchored.plans import KINDS

MERGES = KINDS  # how the sequences form the long video (Fig. 3): anchored, multidiffusion, independent
SIGNALS = ("global", "landmarks")  # the sDiT's conditions (§3.1): G and L
CONDITION_SUBSETS = {"both": SIGNALS, "landmarks": ("landmarks",), "global": ("global",), "none": ()}
CONDITIONS = tuple(CONDITION_SUBSETS)  # names of the subsets, in the order of supp. Table 1's rows
MAX_GUIDANCE_SCALE = 100.0  # |CFG scale| above this only saturates the frames (the paper uses 1-8)


def dropped_signals(conditions: str = "both", guidance: str | None = None) -> tuple[str, ...]:
    """The signals a forward pass drops: those not in `conditions`, plus (in classifier-free guidance's
    unconditional pass) the `guidance` subset."""
    given = CONDITION_SUBSETS[conditions]
    guided = CONDITION_SUBSETS[guidance] if guidance is not None else ()
    return tuple(s for s in SIGNALS if s not in given or s in guided)


def _choice(what: str, value, choices) -> None:
    if value not in choices:
        raise AnchorfaceError(f"unknown {what} '{value}'; choose one of {', '.join(choices)}")


def check_sampling(*, merge: str | None = None, sampler: str | None = None, steps: int | None = None,
                   guidance_scale: float | None = None, micro_batch: int | None = None, guidance: str | None = None,
                   conditions: str | None = None, num_timesteps: int | None = None,
                   conditional: bool | None = None) -> None:
    """One-line AnchorfaceError for a sampling option no sampler can run; None = not given (not checked).

    `num_timesteps` (the diffusion's T) bounds `steps`; `conditional` (whether the model has the mapping network
    of the global and landmark signals) is needed for classifier-free guidance and for a condition subset other
    than "both". The guidance scale must be finite with |scale| <= MAX_GUIDANCE_SCALE: NaN, inf or 1e30 would
    otherwise sample black frames without any error."""
    if merge is not None:
        _choice("merge strategy", merge, MERGES)
    if sampler is not None:
        _choice("sampler", sampler, SAMPLERS)
    if guidance is not None:
        _choice("guidance", guidance, CONDITIONS)
    if conditions is not None:
        _choice("conditions", conditions, CONDITIONS)
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, Integral):
            raise AnchorfaceError(f"steps must be an integer, got {steps!r}")
        if num_timesteps is not None and not 1 <= steps <= num_timesteps:
            raise AnchorfaceError(f"steps must be in [1, {num_timesteps}], got {steps}")
        if steps < 1:
            raise AnchorfaceError(f"steps must be >= 1, got {steps}")
    if micro_batch is not None:
        if isinstance(micro_batch, bool) or not isinstance(micro_batch, Integral):
            raise AnchorfaceError(f"micro-batch must be an integer, got {micro_batch!r}")
        if micro_batch < 1:
            raise AnchorfaceError(f"micro-batch must be >= 1, got {micro_batch}")
    if guidance_scale is not None:
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, Real):
            raise AnchorfaceError(f"guidance scale must be a number, got {guidance_scale!r}")
        if not math.isfinite(guidance_scale):
            raise AnchorfaceError(f"guidance scale must be a finite number, got {guidance_scale}")
        if abs(guidance_scale) > MAX_GUIDANCE_SCALE:
            raise AnchorfaceError(f"guidance scale must be in [-{MAX_GUIDANCE_SCALE:g}, {MAX_GUIDANCE_SCALE:g}], "
                                  f"got {guidance_scale:g}")
    if conditional is False:
        if guidance_scale is not None and guidance_scale != 1.0 and guidance != "none":
            raise AnchorfaceError(f"guidance scale {guidance_scale:g} needs a conditional model (global_dim > 0); "
                                  "this checkpoint is unconditional: use 1")
        if conditions is not None and conditions != "both":
            raise AnchorfaceError(f"sampling with conditions '{conditions}' needs a conditional model "
                                  "(global_dim > 0)")
