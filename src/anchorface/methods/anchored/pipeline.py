"""`AnchorFacePipeline`: the model operations of Anchored Diffusion, and its `Reenactor` (`AnchoredDiffusion`).

    pipe = AnchorFacePipeline.from_pretrained("runs/tiny/checkpoint-0006000")
    pipe.reenact("me.jpg", "driving.mp4", "out.mp4", merge="anchored", steps=50)

The pipeline holds the checkpoint's sDiT, codec and global encoder and does what is specific to the method:
G = the global encoder on the source crop (§3.1), CLIP text for text-to-video, or a mix for editing (§4.4);
Anchored Diffusion (§3.2, Alg. 1) over the plan of the chosen merge strategy (`methods.anchored.sampler`); and
decoding the latents in small batches in timeline order (Alg. 1 steps 4-5). The video flow around it (validation,
source crop, pass 1 tracking and relative motion, pass 2 paste-back and writing with audio, --compare) is shared by
every method and lives in `anchorface.methods.flow`; `reenact` runs that flow with `AnchoredDiffusion`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from anchorface.config import Config
from anchorface.devices import World, resolve_device
from anchorface.errors import AnchorfaceError
from anchorface.faces import landmarks
from anchorface.frozen.codecs import decode_to_uint8, to_pixels
from anchorface.methods import flow
from anchorface.methods.anchored.options import MERGES, check_sampling as check_options
from anchorface.io.shots import shot_ranges
from anchorface.methods.anchored.plans import make_shot_plans, split_rows
from anchorface.methods.anchored.ranks import HaloExchange, gather_frames
from anchorface.methods.anchored.sampler import anchored_diffusion
from anchorface.methods.base import DrivingClip, Reenactor, Rendered, Source
from anchorface.methods.flow import (COMPARE_HEIGHT, OUTPUT_SUFFIXES, ReenactResult, check_inputs,  # noqa: F401
                                     check_output_path, full_frame_box)

DECODE_BATCH = 8  # generated frames decoded at once in pass 2
COMPARE_PANELS = ("driving", "anchored", "multidiffusion")  # the --compare video of Anchored Diffusion
TEXT_NEEDS_CLIP = "--text needs a checkpoint trained with the CLIP global encoder"
EDIT_NEEDS_CLIP = "--edit needs a checkpoint trained with the CLIP global encoder"


class AnchorFacePipeline:
    """Checkpoint + codec + global encoder + diffusion, with the reenactment flow of the module docstring."""

    def __init__(self, config: Config, sdit, codec, encoder=None, device: str | torch.device = "cpu"):
        from anchorface.diffusion.gaussian import GaussianDiffusion

        self.config, self.sdit, self.codec, self.encoder = config, sdit.eval(), codec.eval(), encoder
        self.device = torch.device(device)
        self.diffusion = GaussianDiffusion(config.diffusion)
        self.resolution = config.data.resolution
        self.latent_shape = codec.latent_shape(self.resolution)
        self.num_frames = config.model.num_frames  # T
        self.trained_on: dict | None = None  # what a checkpoint made from stills saw (`checkpoint.read_trained_on`)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> "AnchorFacePipeline":
        """Load a checkpoint directory (`checkpoint.load_checkpoint`), its codec and its global encoder (the
        learned one from the checkpoint, CLIP from `data.encoder_path`). `device`: as `devices.resolve_device`
        (`auto`, `cpu`, `cuda`, `cuda:N`; AnchorfaceError when this machine has no such device)."""
        from anchorface.methods.anchored.checkpoint import load_checkpoint, read_trained_on
        from anchorface.frozen.codecs import load_codec
        from anchorface.methods.anchored.global_encoder import load_encoder

        device = resolve_device(device)
        cfg, sdit, encoder = load_checkpoint(directory, device=device, dtype=dtype)
        if encoder is None:
            encoder = load_encoder(cfg.data, cfg.model.global_dim)
        if encoder is not None:
            encoder = encoder.to(device).eval()
        codec = load_codec(cfg.data).to(device)
        pipe = cls(cfg, sdit, codec, encoder, device)
        pipe.trained_on = read_trained_on(directory)
        return pipe

    # ------------------------------------------------------------------------------------------- building blocks
    def global_signal(self, image_crop: np.ndarray | None = None, text: str | None = None,
                      edit: str | None = None, edit_weight: float = 0.5) -> torch.Tensor | None:
        """G [1, global_dim] (§3.1, §4.4): the encoder's image embedding of the source crop; the CLIP text
        embedding for text-to-video; for editing, (1 - w) G_image + w G_text with G_text rescaled to the image
        embedding's norm, so the mix stays at the scale the model was trained on (CLIP image and text embeddings
        share a space but not a norm). None for a model without global conditioning."""
        if self.encoder is None:
            return None
        clip = self.config.data.encoder == "clip"
        if text is not None and not clip:
            raise AnchorfaceError(TEXT_NEEDS_CLIP)
        if edit is not None and not clip:
            raise AnchorfaceError(EDIT_NEEDS_CLIP)
        with torch.no_grad():
            if text is not None:
                return self.encoder.encode_text([text]).to(self.device).float()
            if image_crop is None:
                raise AnchorfaceError("a source image (or --text) is needed for the global signal G")
            g = self.encoder.encode_images(to_pixels(image_crop)[None].to(self.device)).float()
            if edit is not None:
                if not 0.0 <= edit_weight <= 1.0:
                    raise AnchorfaceError(f"--edit-weight must be in [0, 1], got {edit_weight}")
                g_text = self.encoder.encode_text([edit]).to(g.device).float()
                g_text = g_text * (g.norm(dim=-1, keepdim=True) / g_text.norm(dim=-1, keepdim=True).clamp_min(1e-8))
                g = (1 - edit_weight) * g + edit_weight * g_text
        return g

    def generate(self, g: torch.Tensor | None, lmk: np.ndarray, *, merge: str | None = None,
                 sampler: str | None = None, steps: int | None = None, guidance_scale: float | None = None,
                 seed: int = 0, micro_batch: int | None = None, guidance: str = "both", conditions: str = "both",
                 progress: bool = True, callback: Callable | None = None, cuts=(),
                 world: World | None = None) -> torch.Tensor | None:
        """Latents [N, C, h, w] (timeline order) for landmarks [N, 478, 3] (crop coordinates) and G [1, Dg].
        Unset (None) options come from the checkpoint's `sample` config; `conditions` = the signals given at
        sampling (`options.CONDITION_SUBSETS`, supp. Table 1).

        `cuts`: frames that start a new shot; each shot is planned and sampled on its own with its central frame
        as anchor (§5, "multiple anchors"; `plans.make_shot_plans`). `world`: this process among `world.size`
        (`devices.init_world`): each shot's sequences are split across the ranks (`plans.split_rows`), the
        latents are gathered on rank 0, which gets them all; the other ranks get None."""
        s = self.config.sample
        lmk = np.asarray(lmk, np.float32)
        if lmk.ndim != 3 or lmk.shape[1:] != (landmarks.NUM_LANDMARKS, 3):
            raise AnchorfaceError(f"expected landmarks [N, {landmarks.NUM_LANDMARKS}, 3], got {lmk.shape}")
        world = world or World()
        kind = s.merge if merge is None else merge
        shots = make_shot_plans(kind, shot_ranges(cuts, len(lmk)), self.num_frames)
        vectors = landmarks.landmark_vector(lmk)
        args = dict(sampler=s.sampler if sampler is None else sampler, steps=s.steps if steps is None else steps,
                    guidance_scale=s.guidance_scale if guidance_scale is None else guidance_scale,
                    micro_batch=s.micro_batch if micro_batch is None else micro_batch, seed=seed,
                    latent_shape=self.latent_shape, guidance=guidance, conditions=conditions,
                    progress=progress and world.is_main, callback=callback)
        parts, frames = [], []
        for (a, b), plan in zip(shots.shots, shots.plans):
            if world.size == 1:
                parts.append(anchored_diffusion(self.sdit, self.diffusion, plan, g, vectors[a:b], frame_offset=a,
                                                **args))
                continue
            split = split_rows(plan, world.size)
            rows = split.rows[world.rank]
            if not len(rows) and not split.exchanges:
                continue  # nothing to run or to send for this shot
            z = anchored_diffusion(self.sdit, self.diffusion, plan, g, vectors[a:b], frame_offset=a, rows=rows,
                                   exchange=HaloExchange(split, world.rank) if split.exchanges else None, **args)
            mine = split.frames[world.rank]
            parts.append(z[torch.as_tensor(mine, device=z.device)])
            frames.append(mine + a)
        if world.size == 1:
            return torch.cat(parts)
        if not parts:
            parts = [torch.zeros((0, *self.latent_shape), device=self.device)]
        return gather_frames(np.concatenate(frames) if frames else np.zeros(0, np.int64), torch.cat(parts),
                             len(lmk), world.rank, world.size)

    def check_sampling(self, merge: str | None = None, sampler: str | None = None, steps: int | None = None,
                       guidance_scale: float | None = None, micro_batch: int | None = None,
                       conditions: str | None = None) -> None:
        """AnchorfaceError for sampling options this checkpoint cannot run (None = the checkpoint's default), so
        that `reenact` fails before any work instead of after the first pass (`options.check_sampling`)."""
        s = self.config.sample
        check_options(merge=s.merge if merge is None else merge, sampler=s.sampler if sampler is None else sampler,
                      steps=s.steps if steps is None else steps,
                      guidance_scale=s.guidance_scale if guidance_scale is None else guidance_scale,
                      micro_batch=s.micro_batch if micro_batch is None else micro_batch, conditions=conditions,
                      num_timesteps=self.diffusion.num_timesteps,
                      conditional=getattr(self.sdit, "mapping", None) is not None)

    def decode_frames(self, latents: torch.Tensor, batch_size: int = DECODE_BATCH) -> Iterator[np.ndarray]:
        """Alg. 1 steps 4-5, streamed: uint8 [res, res, 3] crops in timeline order, decoded `batch_size` at once
        (`codecs.decode_to_uint8`: on CUDA through pinned memory, overlapping copies and decoding)."""
        yield from decode_to_uint8(self.codec, latents.to(self.device), batch_size)

    # ------------------------------------------------------------------------------------------- the whole flow
    def reenact(self, source: str | Path | np.ndarray | None, driving: str | Path, output: str | Path, *,
                merge: str | None = None, sampler: str | None = None, steps: int | None = None,
                guidance_scale: float | None = None, seed: int = 0, relative: bool | None = None,
                crop: bool = True, paste_back: bool = False, micro_batch: int | None = None,
                compare_path: str | Path | None = None, text: str | None = None, edit: str | None = None,
                edit_weight: float = 0.5, progress: bool = True, shots: str = "auto",
                world: World | None = None) -> ReenactResult:
        """Animate `source` (a photo path or uint8 image) with the motion of `driving`; write `output`
        (`methods.flow.reenact` with this pipeline as the method).

        relative: re-target the driving motion onto the source face (default when a source is given); False uses
        the driving landmarks as they are (the default for text-to-video, which has no source face).
        crop=False: the frames are already face crops (used whole). paste_back: write full driving frames with
        the generated face pasted into the crop box, else the crops. compare_path: also write a side-by-side
        video driving crop | anchored | multidiffusion. text: text-to-video (instead of `source`); edit: a text
        mixed into the source's G with weight `edit_weight` (§4.4). shots: "auto" plans each shot of a multi-shot
        driving video on its own (§5), "off" one shot. world: this process of a multi-process launch
        (`devices.init_world`); rank 0 writes the outputs."""
        return flow.reenact(AnchoredDiffusion(self, world), source, driving, output, relative=relative, crop=crop,
                            shots=shots, world=world,
                            paste_back=paste_back, compare_path=compare_path, text=text, edit=edit,
                            edit_weight=edit_weight, seed=seed, progress=progress, merge=merge, sampler=sampler,
                            steps=steps, guidance_scale=guidance_scale, micro_batch=micro_batch)


class AnchoredDiffusion(Reenactor):
    """Anchored Diffusion (§3) as a `Reenactor`: the registry's "anchored" method. Options: merge (the plan,
    Fig. 3), sampler, steps, guidance_scale (CFG), micro_batch, conditions (the signals given, supp. Table 1);
    unset ones come from the checkpoint's `sample` config."""

    name = "anchored"
    needs = frozenset({"landmarks", "source_image", "text"})
    OPTIONS = ("merge", "sampler", "steps", "guidance_scale", "micro_batch", "conditions")

    def __init__(self, pipe: AnchorFacePipeline, world: World | None = None):
        self.pipe, self.resolution = pipe, pipe.resolution
        self.world = world or World()  # a multi-process launch: this rank (`devices.init_world`)
        self._g: tuple | None = None  # (source, G) of the last render: the compare variants share G

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> "AnchoredDiffusion":
        if path is None:
            raise AnchorfaceError("method anchored needs a checkpoint directory")
        return cls(AnchorFacePipeline.from_pretrained(path, device=device, dtype=dtype))

    @property
    def config(self) -> Config:
        return self.pipe.config

    @property
    def encoder(self):
        return self.pipe.encoder

    @property
    def trained_on(self) -> dict | None:
        return self.pipe.trained_on

    def resolve_options(self, options: dict) -> dict:
        out = super().resolve_options(options)
        for key in ("merge", "sampler", "steps"):  # (the others' defaults depend on these: left to the sampler)
            out.setdefault(key, getattr(self.config.sample, key))
        return out

    def check(self, *, text: str | None = None, edit: str | None = None, **options) -> None:
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise AnchorfaceError(f"method anchored takes no option {', '.join(unknown)}")
        if (text is not None or edit is not None) and self.config.data.encoder != "clip":
            raise AnchorfaceError(TEXT_NEEDS_CLIP if text is not None else EDIT_NEEDS_CLIP)
        self.pipe.check_sampling(**options)

    def render(self, source: Source, clip: DrivingClip, *, seed: int = 0, progress: bool = True,
               merge: str | None = None, **options) -> Rendered:
        """G from the source (cached for the next render of the same source), Alg. 1 over the clip's target
        motion, and a stream that decodes the latents (steps 4-5) each time it is started."""
        if clip.motion is None:
            raise AnchorfaceError("Anchored Diffusion needs the target motion (landmarks) of the driving clip")
        if self._g is None or self._g[0] is not source:
            crop = source.crop(self.resolution) if source.image is not None else None
            self._g = (source, self.pipe.global_signal(crop, text=source.text, edit=source.edit,
                                                       edit_weight=source.edit_weight))
        merge = self.config.sample.merge if merge is None else merge
        latents = self.pipe.generate(self._g[1], clip.motion, merge=merge, seed=seed, progress=progress,
                                     cuts=clip.cuts, world=self.world, **options)
        n = len(clip)
        plans = make_shot_plans(merge, clip.shots, self.pipe.num_frames)
        b, shots = plans.num_sequences, len(plans.shots)
        summary = f"{merge} over {b} sequences" + (f" in {shots} shots" if shots > 1 else "")
        if self.world.size > 1:
            summary += f" on {self.world.size} processes"
        stream = (lambda: self.pipe.decode_frames(latents)) if latents is not None else (lambda: iter(()))
        return Rendered(stream, n, {"merge": merge, "num_sequences": b, "num_shots": shots}, summary=summary)

    def compare_variants(self, options: dict) -> list[tuple[str, dict]]:
        """--compare: the anchored and the multidiffusion merge (Fig. 3b vs 3a) with the same other options."""
        return [(kind, {**options, "merge": kind}) for kind in COMPARE_PANELS[1:]]


assert set(COMPARE_PANELS[1:]) <= set(MERGES)
