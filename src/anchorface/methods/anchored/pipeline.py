"""`AnchorFacePipeline`: the Python API of `anchorface reenact` (one photo + a driving video -> a video).

    pipe = AnchorFacePipeline.from_pretrained("runs/tiny/checkpoint-0006000")
    pipe.reenact("me.jpg", "driving.mp4", "out.mp4", merge="anchored", steps=50)

The flow keeps only O(N) small arrays in memory (crop boxes, landmarks, latents), never the frames of the video:

1. validate every input before any output exists (source image and its face, driving video);
2. pass 1 over the driving video (streamed, `faces.track_video`): crop boxes (App. B), then MediaPipe landmarks
   on crops of `landmarks.landmark_crop_size(resolution)` px (§3.1);
   relative motion (landmarks re-targeted onto the source face, supp. §1) or the driving landmarks as they are;
3. G = the global encoder on the source crop (§3.1), or CLIP text for text-to-video, or a mix for editing (§4.4);
4. Anchored Diffusion (§3.2, Alg. 1) over the plan of the chosen merge strategy (`anchorface.methods.anchored.sampler`);
5. pass 2 over the driving video: decode the generated crops in small batches in timeline order (Alg. 1 steps
   4-5), optionally paste them back into the full frames, and write the video with the driving clip's frame rate
   and audio, atomically (no partial file on failure).
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from anchorface.faces import detect as faces, landmarks
from anchorface.diffusion.sampling import SAMPLERS
from anchorface.methods.anchored.sampler import anchored_diffusion
from anchorface.frozen.codecs import decode_to_uint8, to_pixels
from anchorface.config import Config
from anchorface.devices import resolve_device
from anchorface.errors import AnchorfaceError, NoFaceError
from anchorface.methods.anchored.plans import KINDS, make_plan
from anchorface.io.video import VideoInfo, VideoWriter, iter_frames, load_image, probe_video

OUTPUT_SUFFIXES = (".mp4", ".mov", ".mkv")  # containers the H.264 output is written into (`VideoWriter`)
DECODE_BATCH = 8  # generated frames decoded at once in pass 2
COMPARE_HEIGHT = 256  # panel height of the --compare video (driving crop | anchored | multidiffusion)
COMPARE_PANELS = ("driving", "anchored", "multidiffusion")
TEXT_NEEDS_CLIP = "--text needs a checkpoint trained with the CLIP global encoder"
EDIT_NEEDS_CLIP = "--edit needs a checkpoint trained with the CLIP global encoder"


@dataclass
class ReenactResult:
    output: Path
    compare: Path | None
    num_frames: int
    fps: Fraction
    has_audio: bool
    frames_without_face: int  # driving frames whose landmarks were filled from the nearest frame with a face
    merge: str
    num_sequences: int  # B of the plan
    seconds: float


def check_output_path(path: str | Path, what: str = "output") -> Path:
    """AnchorfaceError unless a video can be written at `path`: an H.264 container suffix (`OUTPUT_SUFFIXES`), not a
    directory, in an existing writable folder."""
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise AnchorfaceError(f"{what} {path}: unsupported video format '{path.suffix}'; use one of "
                              f"{', '.join(OUTPUT_SUFFIXES)}")
    if path.is_dir():
        raise AnchorfaceError(f"{what} {path} is a directory")
    folder = path.parent
    if not folder.is_dir():
        raise AnchorfaceError(f"{what} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise AnchorfaceError(f"{what} {path}: folder {folder} is not writable")
    return path


def check_inputs(source: str | Path | np.ndarray | None, driving: str | Path, output: str | Path,
                 compare_path: str | Path | None = None, edit_weight: float = 0.5
                 ) -> tuple[VideoInfo, np.ndarray | None]:
    """The checks of `reenact` that need no model (the CLI runs them before loading one): the output paths, the
    edit weight, the source image (read here) and the driving video (probed). Returns (driving VideoInfo, the source
    image or None)."""
    output, driving = check_output_path(output), Path(driving)
    outputs = [output]
    if compare_path is not None:
        outputs.append(check_output_path(compare_path, "--compare"))
        if outputs[1].resolve() == output.resolve():
            raise AnchorfaceError("--compare must be a different file from the output")
    for out in outputs:
        if out.exists() and out.resolve() == driving.resolve():
            raise AnchorfaceError(f"the output {out} would overwrite the driving video")
    if not 0.0 <= edit_weight <= 1.0:
        raise AnchorfaceError(f"--edit-weight must be in [0, 1], got {edit_weight}")
    image = None
    if source is not None:
        image = source if isinstance(source, np.ndarray) else load_image(source)  # ImageError
    return probe_video(driving), image  # VideoError: missing / corrupt / empty


def full_frame_box(hw: tuple[int, int]) -> faces.Box:
    """`crop=False`: the whole frame as the crop (a centred square; a non-square frame is padded by its edges)."""
    h, w = hw
    return faces.Box.square(w / 2, h / 2, float(max(h, w)))


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

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> "AnchorFacePipeline":
        """Load a checkpoint directory (`checkpoint.load_checkpoint`), its codec and its global encoder (the
        learned one from the checkpoint, CLIP from `data.encoder_path`). `device`: as `devices.resolve_device`
        (`auto`, `cpu`, `cuda`, `cuda:N`; AnchorfaceError when this machine has no such device)."""
        from anchorface.methods.anchored.checkpoint import load_checkpoint
        from anchorface.frozen.codecs import load_codec
        from anchorface.methods.anchored.global_encoder import load_encoder

        device = resolve_device(device)
        cfg, sdit, encoder = load_checkpoint(directory, device=device, dtype=dtype)
        if encoder is None:
            encoder = load_encoder(cfg.data, cfg.model.global_dim)
        if encoder is not None:
            encoder = encoder.to(device).eval()
        codec = load_codec(cfg.data).to(device)
        return cls(cfg, sdit, codec, encoder, device)

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
                 seed: int = 0, micro_batch: int | None = None, guidance: str = "both", progress: bool = True,
                 callback: Callable | None = None) -> torch.Tensor:
        """Latents [N, C, h, w] (timeline order) for landmarks [N, 478, 3] (crop coordinates) and G [1, Dg].
        Unset (None) options come from the checkpoint's `sample` config."""
        s = self.config.sample
        lmk = np.asarray(lmk, np.float32)
        if lmk.ndim != 3 or lmk.shape[1:] != (landmarks.NUM_LANDMARKS, 3):
            raise AnchorfaceError(f"expected landmarks [N, {landmarks.NUM_LANDMARKS}, 3], got {lmk.shape}")
        plan = make_plan(s.merge if merge is None else merge, len(lmk), self.num_frames)
        return anchored_diffusion(
            self.sdit, self.diffusion, plan, g, landmarks.landmark_vector(lmk),
            sampler=s.sampler if sampler is None else sampler, steps=s.steps if steps is None else steps,
            guidance_scale=s.guidance_scale if guidance_scale is None else guidance_scale,
            micro_batch=s.micro_batch if micro_batch is None else micro_batch, seed=seed,
            latent_shape=self.latent_shape, guidance=guidance, progress=progress, callback=callback)

    def check_sampling(self, merge: str | None = None, sampler: str | None = None, steps: int | None = None,
                       guidance_scale: float | None = None, micro_batch: int | None = None) -> None:
        """AnchorfaceError for sampling options this checkpoint cannot run (None = the checkpoint's default), so
        that `reenact` fails before any work instead of after the first pass."""
        s = self.config.sample
        merge, sampler = s.merge if merge is None else merge, s.sampler if sampler is None else sampler
        steps, micro_batch = s.steps if steps is None else steps, s.micro_batch if micro_batch is None else micro_batch
        guidance_scale = s.guidance_scale if guidance_scale is None else guidance_scale
        if merge not in KINDS:
            raise AnchorfaceError(f"unknown merge strategy '{merge}'; choose one of {', '.join(KINDS)}")
        if sampler not in SAMPLERS:
            raise AnchorfaceError(f"unknown sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}")
        if not 1 <= steps <= self.diffusion.num_timesteps:
            raise AnchorfaceError(f"steps must be in [1, {self.diffusion.num_timesteps}], got {steps}")
        if micro_batch < 1:
            raise AnchorfaceError(f"micro-batch must be >= 1, got {micro_batch}")
        if guidance_scale != 1.0 and getattr(self.sdit, "mapping", None) is None:
            raise AnchorfaceError(f"guidance scale {guidance_scale:g} needs a conditional model (global_dim > 0); "
                                  "this checkpoint is unconditional: use 1")

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
                edit_weight: float = 0.5, progress: bool = True) -> ReenactResult:
        """Animate `source` (a photo path or uint8 image) with the motion of `driving`; write `output`.

        relative: re-target the driving motion onto the source face (default when a source is given); False uses
        the driving landmarks as they are (the default for text-to-video, which has no source face).
        crop=False: the frames are already face crops (used whole). paste_back: write full driving frames with
        the generated face pasted into the crop box, else the crops. compare_path: also write a side-by-side
        video driving crop | anchored | multidiffusion. text: text-to-video (instead of `source`); edit: a text
        mixed into the source's G with weight `edit_weight` (§4.4)."""
        start = time.time()
        merge = self.config.sample.merge if merge is None else merge
        # ---- 1. validate everything before any output exists
        if text is not None and source is not None:
            raise AnchorfaceError("give either a source image or --text (use --edit to combine a photo and a text)")
        if text is None and source is None:
            raise AnchorfaceError("a source image is needed (or --text for text-to-video)")
        if edit is not None and source is None:
            raise AnchorfaceError("--edit needs a source image to edit")
        if relative is None:
            relative = source is not None
        if relative and source is None:
            raise AnchorfaceError("relative motion needs a source face; use absolute motion with --text")
        if (text is not None or edit is not None) and self.config.data.encoder != "clip":
            raise AnchorfaceError(TEXT_NEEDS_CLIP if text is not None else EDIT_NEEDS_CLIP)
        self.check_sampling(merge, sampler, steps, guidance_scale, micro_batch)
        output, driving = Path(output), Path(driving)
        info, image = check_inputs(source, driving, output, compare_path, edit_weight)
        src_crop = src_lmk = None
        if source is not None:
            name = "the source image" if isinstance(source, np.ndarray) else f"the source image {source}"
            box = faces.source_crop_box(image, name) if crop else full_frame_box(image.shape[:2])
            src_crop = faces.crop(image, box, self.resolution)
            src_lmk = faces.source_landmarks(image, box, self.resolution)
            if src_lmk is None and relative:
                raise NoFaceError(f"no face landmarks found in {name}")

        # ---- 2. pass 1 over the driving video (streamed): crop boxes, then landmarks on the crops
        whole = None if crop else full_frame_box((info.height, info.width))
        track = faces.track_video(driving, self.resolution, fixed_box=whole, progress=progress)
        lmk, found, boxes, n = track.landmarks, track.found, track.boxes, len(track.landmarks)
        motion = landmarks.relative_motion(lmk, src_lmk, reference=0) if relative else lmk

        # ---- 3-4. G, then Anchored Diffusion (and the baselines for --compare)
        g = self.global_signal(src_crop, text=text, edit=edit, edit_weight=edit_weight)
        opts = dict(sampler=sampler, steps=steps, guidance_scale=guidance_scale, seed=seed, micro_batch=micro_batch,
                    progress=progress)
        latents = {merge: self.generate(g, motion, merge=merge, **opts)}
        if compare_path is not None:
            for kind in ("anchored", "multidiffusion"):
                if kind not in latents:
                    latents[kind] = self.generate(g, motion, merge=kind, **opts)

        # ---- 5. pass 2: decode in timeline order, paste back or write crops, with the driving clip's audio
        written = 0
        with ExitStack() as stack:
            writer = stack.enter_context(VideoWriter(output, info.fps, audio_from=driving))
            cmp = stack.enter_context(VideoWriter(compare_path, info.fps, audio_from=driving)) if compare_path \
                else None
            streams = [self.decode_frames(latents[merge])]
            if cmp is not None:
                streams += [self.decode_frames(latents["anchored"]), self.decode_frames(latents["multidiffusion"])]
            bar = tqdm(total=n, desc="writing", unit="frame", disable=not progress)
            for frame, box, gen in zip(iter_frames(driving), boxes, zip(*streams)):
                box = faces.Box.from_array(box)
                writer.write(faces.paste_back(frame, gen[0], box) if paste_back else gen[0])
                if cmp is not None:
                    panels = [faces.crop(frame, box, COMPARE_HEIGHT)] + [_resize(x, COMPARE_HEIGHT) for x in gen[1:]]
                    cmp.write(np.concatenate([_label(p, name) for p, name in zip(panels, COMPARE_PANELS)], axis=1))
                written += 1
                bar.update()
            bar.close()
            if written != n:
                raise AnchorfaceError(f"the driving video gave {written} frames in the second pass, expected {n}")
        return ReenactResult(output=output, compare=Path(compare_path) if compare_path else None, num_frames=n,
                             fps=info.fps, has_audio=info.has_audio, frames_without_face=int((~found).sum()),
                             merge=merge, num_sequences=make_plan(merge, n, self.num_frames).num_sequences,
                             seconds=time.time() - start)


def _label(img: np.ndarray, text: str) -> np.ndarray:
    """The panel with its name in the top-left corner (white on a dark outline, readable on any background)."""
    out = np.ascontiguousarray(img).copy()
    for color, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(out, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, thickness, cv2.LINE_AA)
    return out


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size:
        return img
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC if size > img.shape[0] else cv2.INTER_AREA)
