"""The video flow every reenactment method shares (`anchorface reenact`, `AnchorFacePipeline.reenact`).

It keeps only O(N) small arrays in memory (crop boxes, landmarks, a method's latents), never the frames:

1. validate every input before any output exists: the request (source photo / text, motion), the method's options
   (`Reenactor.check`), the output paths, the source image (read) and the driving video (probed);
2. the source: its face crop box (App. B) and, for methods that follow landmarks, its MediaPipe landmarks (§3.1);
3. pass 1 over the driving video (streamed, `faces.track_video`): crop boxes (App. B), then landmarks on crops of
   `landmarks.landmark_crop_size(resolution)` px, and the target motion: the driving landmarks re-targeted onto the
   source face (supp. §1) or as they are. A method that needs no landmarks gets the crop boxes only;
4. the method renders (`Reenactor.render`, e.g. Anchored Diffusion, §3.2 / Alg. 1), plus its `--compare` variants;
5. pass 2 over the driving video: the rendered crops in timeline order, optionally pasted back into the full
   frames, written with the driving clip's frame rate and audio, atomically (no partial file on failure).
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from anchorface.devices import World
from anchorface.errors import AnchorfaceError, NoFaceError
from anchorface.faces import detect as faces, landmarks
from anchorface.io.images import load_image, resize
from anchorface.io.shots import CutDetector
from anchorface.io.video import VideoInfo, VideoWriter, iter_frames, probe_video
from anchorface.methods.base import DrivingClip, Reenactor, Rendered, Source

OUTPUT_SUFFIXES = (".mp4", ".mov", ".mkv")  # containers the H.264 output is written into (`VideoWriter`)
COMPARE_HEIGHT = 256  # panel height of the --compare video (driving crop | the method's variants)
SHOTS = ("auto", "off")  # --shots: detect cuts and treat each shot on its own (§5), or one shot


@dataclass
class ReenactResult:
    output: Path
    compare: Path | None
    num_frames: int
    fps: Fraction
    has_audio: bool
    frames_without_face: int  # driving frames whose landmarks were filled from the nearest frame with a face
    merge: str | None  # Anchored Diffusion: the merge strategy (None for a method without one)
    num_sequences: int | None  # Anchored Diffusion: B of the plan
    seconds: float
    method: str = "anchored"
    summary: str = ""  # how the frames were made, e.g. "anchored over 5 sequences"
    num_shots: int = 1  # shots found in the driving video (`--shots auto`)
    note: str = ""  # a hint for the user: the model was trained on other stills (`personalize_hint`)


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
    """The checks that need no model (the CLI runs them before loading one): the output paths, the edit weight, the
    source image (read here) and the driving video (probed). Returns (driving VideoInfo, the source image or None)."""
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


def check_request(method: Reenactor, source, text: str | None, edit: str | None, relative: bool | None) -> bool:
    """The source / text / motion combination `method` can run (AnchorfaceError otherwise); returns `relative`
    with its default: re-targeted motion when there is a source face and the method follows landmarks."""
    if text is not None and source is not None:
        raise AnchorfaceError("give either a source image or --text (use --edit to combine a photo and a text)")
    if text is None and source is None:
        if "text" in method.needs:
            raise AnchorfaceError("a source image is needed (or --text for text-to-video)")
        if "source_image" in method.needs:
            raise AnchorfaceError(f"method {method.name} needs a source image")
    if edit is not None and source is None:
        raise AnchorfaceError("--edit needs a source image to edit")
    if relative is None:
        relative = source is not None and "landmarks" in method.needs
    if relative and source is None:
        raise AnchorfaceError("relative motion needs a source face; use absolute motion with --text")
    return relative


def load_source(image: np.ndarray | None, source, resolution: int, *, crop: bool = True, find_landmarks: bool = True,
                relative: bool = False, text: str | None = None, edit: str | None = None,
                edit_weight: float = 0.5) -> Source:
    """The source's crop box (App. B; the whole image with crop=False) and landmarks (NoFaceError when relative
    motion needs them and there are none)."""
    src = Source(text=text, edit=edit, edit_weight=edit_weight)
    if image is None:
        return src
    src.image = image
    src.name = name = "the source image" if isinstance(source, np.ndarray) else f"the source image {source}"
    src.box = faces.source_crop_box(image, name) if crop else full_frame_box(image.shape[:2])
    if find_landmarks:
        src.landmarks = faces.source_landmarks(image, src.box, resolution)
        if src.landmarks is None and relative:
            raise NoFaceError(f"no face landmarks found in {name}")
    return src


def track_driving(driving: str | Path, info: VideoInfo, resolution: int, *, crop: bool = True,
                  find_landmarks: bool = True, relative: bool = False, source_landmarks: np.ndarray | None = None,
                  progress: bool = True, shots: str = "auto") -> DrivingClip:
    """Pass 1 (streamed): crop boxes, and with `find_landmarks` the landmarks on the crops and the target motion
    (re-targeted to `source_landmarks` when `relative`, supp. §1). `shots` (`SHOTS`): "auto" detects shot cuts
    (`io.shots`) in this pass; the crop track, its smoothing, the landmark tracker and the relative motion's
    reference frame (each shot's first) restart at every cut; "off" treats the video as one shot."""
    if shots not in SHOTS:
        raise AnchorfaceError(f"--shots must be one of {', '.join(SHOTS)}, got '{shots}'")
    detect = shots == "auto"
    whole = None if crop else full_frame_box((info.height, info.width))
    clip = DrivingClip(frames=lambda: iter_frames(driving), boxes=np.zeros((0, 4)), fps=info.fps)
    if find_landmarks:
        track = faces.track_video(driving, resolution, fixed_box=whole, progress=progress, shots=detect,
                                  fps=float(info.fps))
        clip.boxes, clip.landmarks, clip.found, clip.cuts = track.boxes, track.landmarks, track.found, track.cuts
        clip.motion = track.landmarks
        if relative:
            clip.motion = np.concatenate([landmarks.relative_motion(track.landmarks[a:b], source_landmarks, 0)
                                          for a, b in clip.shots])
    else:
        detector = CutDetector(float(info.fps)) if detect else None
        if whole is None:
            clip.boxes = faces.track_crop_boxes(iter_frames(driving), progress=progress, shots=detector)
        else:
            boxes = []
            for frame in iter_frames(driving):
                if detector is not None:
                    detector.feed(frame)
                boxes.append(whole.as_array())
            clip.boxes = np.stack(boxes)
        clip.cuts = tuple(detector.cuts) if detector is not None else ()
    return clip


def write_video(driving: str | Path, clip: DrivingClip, output: str | Path, stream, *, paste_back: bool = False,
                compare_path: str | Path | None = None, panels: list[tuple[str, object]] = (),
                progress: bool = True) -> int:
    """Pass 2: write the crops of `stream` (pasted back into the driving frames with `paste_back`), and with
    `compare_path` a side-by-side video of the driving crop and the `panels` (label, stream); with the driving
    clip's frame rate and audio, atomically. Returns the number of frames written."""
    n, written = len(clip), 0
    with ExitStack() as stack:
        writer = stack.enter_context(VideoWriter(output, clip.fps, audio_from=driving))
        cmp = stack.enter_context(VideoWriter(compare_path, clip.fps, audio_from=driving)) if compare_path \
            else None
        streams = [stream] + ([s for _, s in panels] if cmp is not None else [])
        labels = ["driving"] + [label for label, _ in panels]
        bar = tqdm(total=n, desc="writing", unit="frame", disable=not progress)
        for frame, box, gen in zip(clip.frames(), clip.boxes, zip(*streams)):
            box = faces.Box.from_array(box)
            writer.write(faces.paste_back(frame, gen[0], box) if paste_back else gen[0])
            if cmp is not None:
                tiles = [faces.crop(frame, box, COMPARE_HEIGHT)] + [resize(x, COMPARE_HEIGHT) for x in gen[1:]]
                cmp.write(np.concatenate([_label(p, name) for p, name in zip(tiles, labels)], axis=1))
            written += 1
            bar.update()
        bar.close()
        if written != n:
            raise AnchorfaceError(f"the driving video gave {written} frames in the second pass, expected {n}")
    return written


def reenact(method: Reenactor, source: str | Path | np.ndarray | None, driving: str | Path, output: str | Path, *,
            relative: bool | None = None, crop: bool = True, paste_back: bool = False,
            compare_path: str | Path | None = None, text: str | None = None, edit: str | None = None,
            edit_weight: float = 0.5, seed: int = 0, progress: bool = True, shots: str = "auto",
            world: World | None = None, **options) -> ReenactResult:
    """Animate `source` (a photo path or uint8 image; or `text`) with the motion of `driving` using `method`, and
    write `output` (the steps of the module docstring). `options` are the method's (e.g. merge, steps). `shots`:
    `track_driving`'s. `world`: a multi-process launch, where every rank runs passes 1 and 4 (the method splits its
    work) and only rank 0 writes (pass 2)."""
    start = time.time()
    world = world or World()
    progress = progress and world.is_main
    # ---- 1. validate everything before any output exists
    relative = check_request(method, source, text, edit, relative)
    if shots not in SHOTS:
        raise AnchorfaceError(f"--shots must be one of {', '.join(SHOTS)}, got '{shots}'")
    options = method.resolve_options(options)
    method.check(text=text, edit=edit, **options)
    output, driving = Path(output), Path(driving)
    info, image = check_inputs(source, driving, output, compare_path, edit_weight)
    if "source_image" not in method.needs and "text" not in method.needs:
        image = None  # read (a bad file is still an error) but not used
    # ---- 2-3. the source, then pass 1 over the driving video
    follows = "landmarks" in method.needs
    src = load_source(image, source, method.resolution, crop=crop, find_landmarks=follows, relative=relative,
                      text=text, edit=edit, edit_weight=edit_weight)
    clip = track_driving(driving, info, method.resolution, crop=crop, find_landmarks=follows, relative=relative,
                         source_landmarks=src.landmarks, progress=progress, shots=shots)
    # ---- 4. render (and the --compare variants, rendering each distinct option set once)
    rendered = method.render(src, clip, seed=seed, progress=progress, **options)
    panels: list[tuple[str, Rendered]] = []
    if compare_path is not None:
        done = [(options, rendered)]
        for label, opts in method.compare_variants(options):
            r = next((r for o, r in done if o == opts), None)
            if r is None:
                r = method.render(src, clip, seed=seed, progress=progress, **opts)
                done.append((opts, r))
            panels.append((label, r))
    note = personalize_hint(method, src, source)
    # ---- 5. pass 2 (rank 0 of a multi-process launch)
    if not world.is_main:
        return ReenactResult(output=output, compare=None, num_frames=len(clip), fps=info.fps,
                             has_audio=info.has_audio, frames_without_face=0, merge=rendered.info.get("merge"),
                             num_sequences=rendered.info.get("num_sequences"), seconds=time.time() - start,
                             method=method.name, summary=rendered.summary, num_shots=len(clip.shots))
    n = write_video(driving, clip, output, rendered.frames(), paste_back=paste_back, compare_path=compare_path,
                    panels=[(label, r.frames()) for label, r in panels], progress=progress)
    return ReenactResult(output=output, compare=Path(compare_path) if compare_path else None, num_frames=n,
                         fps=info.fps, has_audio=info.has_audio,
                         frames_without_face=0 if clip.found is None else int((~clip.found).sum()),
                         merge=rendered.info.get("merge"), num_sequences=rendered.info.get("num_sequences"),
                         seconds=time.time() - start, method=method.name, summary=rendered.summary,
                         num_shots=len(clip.shots), note=note)


def personalize_hint(method: Reenactor, src: Source, source) -> str:
    """Issue 14: a model trained on stills (the demo's one portrait) draws those faces whatever the photo; when
    `src` is none of them, the one line that says how to make a model of this photo (else "")."""
    import shlex

    what = method.unseen_photo(src)
    if what is None:
        return ""
    photo = shlex.quote(str(source)) if isinstance(source, (str, Path)) else "photo.jpg"
    return (f"this model was trained on {what} only and draws that face; for your photo run: anchorface personalize "
            f"{photo} -o my-model, then reenact with --checkpoint my-model")


def _label(img: np.ndarray, text: str) -> np.ndarray:
    """The panel with its name in the top-left corner (white on a dark outline, readable on any background)."""
    out = np.ascontiguousarray(img).copy()
    for color, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(out, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, thickness, cv2.LINE_AA)
    return out

