"""DiffusionAct as a `Reenactor` (paper 003, §3.2, Fig. 2 right; supp. D): the registry's "diffusionact" method.

    method = DiffusionAct.from_pretrained("runs/diffusionact-tiny/checkpoint-0004000")
    anchorface reenact --method diffusionact --checkpoint CKPT photo.jpg driving.mp4 -o out.mp4

For a source crop x^s: z_s = E(x^s) and the stochastic subcode x_T^s by deterministic DDIM inversion (Eq. 3,
`inversion_steps` = 50). Then frame by frame, for the target motion of driving frame t (`DrivingClip.motion`:
MediaPipe's 478 points re-targeted onto the source face, the project's stand-in for EMOCA + gaze, supp. B):
z_r = E_r(x^s, landmark image of frame t) and the DDIM decodes (Eq. 1-2, `steps` = 20) from the same x_T^s.
DDIM with eta = 0 draws no noise, so the frames depend on the seed not at all. Frames are made `FRAME_BATCH` at a
time as the stream is read: memory does not grow with the video's length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from anchorface.config import Config
from anchorface.devices import resolve_device
from anchorface.errors import AnchorfaceError
from anchorface.methods.base import DrivingClip, Reenactor, Rendered, Source

FRAME_BATCH = 4  # frames decoded together


class DiffusionAct(Reenactor):
    """E, E_r and the DDIM of a DiffusionAct checkpoint. Options: steps (decoding steps T, default the
    checkpoint's `diffusionact.steps`, 20) and inversion_steps (T_xT, default 50)."""

    name = "diffusionact"
    needs = frozenset({"landmarks", "source_image"})
    OPTIONS = ("steps", "inversion_steps")

    def __init__(self, config: Config, encoder, unet, reenactment_encoder, device="cpu"):
        from anchorface.methods.diffusionact.diffae import DiffAE

        d = config.diffusionact
        self.config, self.device = config, torch.device(device)
        self.diffae = DiffAE(encoder, unet, d.num_timesteps, d.beta_start, d.beta_end).to(self.device).eval()
        self.reenactment_encoder = reenactment_encoder.to(self.device).eval()
        self.resolution = config.data.resolution
        self._source: tuple | None = None  # (source, steps, x_s, x_T) of the last render

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | torch.device = "cpu",
                        **_) -> "DiffusionAct":
        from anchorface.methods.diffusionact.checkpoint import load_checkpoint

        if path is None:
            raise AnchorfaceError("method diffusionact needs a checkpoint directory")
        device = resolve_device(device)
        cfg, encoder, unet, er = load_checkpoint(path, device=device)
        return cls(cfg, encoder, unet, er, device)

    def resolve_options(self, options: dict) -> dict:
        out = super().resolve_options(options)
        out.setdefault("steps", self.config.diffusionact.steps)
        out.setdefault("inversion_steps", self.config.diffusionact.inversion_steps)
        return out

    def check(self, *, text: str | None = None, edit: str | None = None, **options) -> None:
        if text is not None or edit is not None:
            raise AnchorfaceError("method diffusionact takes no text (--text / --edit)")
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise AnchorfaceError(f"method diffusionact takes no option {', '.join(unknown)} "
                                  f"(its options: {', '.join(self.OPTIONS)})")
        T = self.diffae.num_timesteps
        for key in self.OPTIONS:
            v = options.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= T):
                raise AnchorfaceError(f"method diffusionact: {key} must be an integer in [1, {T}], got {v!r}")

    @torch.no_grad()
    def invert_source(self, crop: np.ndarray, inversion_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x^s [1, 3, R, R], x_T^s): the source crop and its stochastic subcode (Eq. 3 with z_s = E(x^s))."""
        from anchorface.frozen.codecs import to_pixels

        x_s = to_pixels(crop)[None].to(self.device)
        return x_s, self.diffae.invert(x_s, self.diffae.encode(x_s), inversion_steps)

    @torch.no_grad()
    def reenact_frames(self, x_s: torch.Tensor, x_T: torch.Tensor, motion: np.ndarray, steps: int,
                       progress: bool = False) -> Iterator[np.ndarray]:
        """uint8 crops [R, R, 3] for the landmarks `motion` [N, 478, 3], streamed `FRAME_BATCH` at a time."""
        from tqdm.auto import tqdm

        from anchorface.faces.landmarks import landmark_image
        from anchorface.frozen.codecs import to_uint8

        R = self.resolution
        bar = tqdm(total=len(motion), desc="diffusionact", unit="frame", disable=not progress)
        try:
            for i in range(0, len(motion), FRAME_BATCH):
                lm = motion[i:i + FRAME_BATCH]
                y = torch.from_numpy(np.stack([landmark_image(m, R) for m in lm])).to(self.device)
                src = x_s.expand(len(lm), -1, -1, -1)
                z_r = self.reenactment_encoder(src, y)
                x = self.diffae.decode(x_T.expand(len(lm), -1, -1, -1), z_r, steps)
                yield from to_uint8(x.cpu())
                bar.update(len(lm))
        finally:
            bar.close()

    def render(self, source: Source, clip: DrivingClip, *, seed: int = 0, progress: bool = True,
               steps: int | None = None, inversion_steps: int | None = None, **options) -> Rendered:
        """x_T^s by inversion (once per source and step count, cached), then a stream decoding every frame of the
        clip's target motion from it."""
        if options:
            self.check(**options)
        if clip.motion is None:
            raise AnchorfaceError("DiffusionAct needs the target motion (landmarks) of the driving clip")
        steps = self.config.diffusionact.steps if steps is None else steps
        inversion_steps = self.config.diffusionact.inversion_steps if inversion_steps is None else inversion_steps
        self.check(steps=steps, inversion_steps=inversion_steps)
        if self._source is None or self._source[0] is not source or self._source[1] != inversion_steps:
            self._source = (source, inversion_steps, *self.invert_source(source.crop(self.resolution),
                                                                          inversion_steps))
        _, _, x_s, x_T = self._source
        motion = np.asarray(clip.motion, np.float32)
        return Rendered(lambda: self.reenact_frames(x_s, x_T, motion, steps, progress), len(motion),
                        {"steps": steps, "inversion_steps": inversion_steps},
                        summary=f"DiffusionAct, DDIM {inversion_steps} inversion / {steps} decoding steps")
