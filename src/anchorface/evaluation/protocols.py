"""`anchorface evaluate`: the evaluation protocols of §4.3, the consistency study of Fig. 5 and the inference
ablation of supplement Table 1, written as a Markdown + JSON report with plots and frame grids.

Protocols (`--protocol`):
- `self` (§4.3.1): per driving video, a random window of `--frames` (8) consecutive frames, in their original
  order, is the driving video; the frame furthest in time from it is the source. LMSE, E-LMSE, CSIM, Self-CSIM,
  PSNR, SSIM (the driving frames are the ground truth), FID / FVD when the feature networks are given.
- `cross` (§4.3.2): the same driving windows, each paired with a photo of another identity from `--sources`
  (photos without a face, and photos named after the driving clip such as `drv_d12.jpg` for `d12.mp4`, are
  skipped with a note).
- `consistency` (Fig. 5): self-reenactment windows of growing length (`--lengths`, e.g. 8 16 32 64) generated
  with each merge strategy; Self-CSIM (the paper's measure), the min cosine between the first generated frame
  and every later one, and a landmark-free appearance drift, plotted against the length.
- `ablation` (supp. Table 1): on the cross-identity pairs, CFG scales, step counts and the conditions given at
  sampling (none / landmarks / global / both).
- `guidance` (§4.5.2, Fig. 7): on the self-reenactment windows, how much better the first anchored checkpoint
  recovers x0 from x_t with each subset of its signals than with none, per timestep (`evaluation/guidance.py`).

What is compared are Table 1's columns, laid out from the method registry (`methods.registry`, `--methods`):
each model method x checkpoint x variant (Anchored Diffusion's merge strategies, `--merge`), then one column per
baseline method ("copy driving", "still source"; `--no-baselines` leaves them out). The driving windows and sources
are tracked once (`Case`) and every method renders from them (`Reenactor.render`). Each protocol is one function
(`reenactment_protocol`, `consistency_protocol`, `ablation_protocol`); `evaluation/report.py` writes the report.

Everything is measured on face crops: the driving crop boxes are tracked and smoothed as in the pipeline
(`faces.track_video`), the model generates crops at its resolution, and the generated crops are compared with
the driving crops at that resolution (PSNR / SSIM, Self-CSIM, FID / FVD). Landmarks are MediaPipe's on crops
resized to `landmarks.landmark_crop_size(resolution)` px (256 for models up to 256 px, docs/design.md). The model is conditioned on the driving landmarks as they are (the paper's
setting; the supplement's limitations name the driving head shape leaking into cross-identity results), or on
the motion re-targeted to the source face with `--relative`; LMSE compares the generated landmarks with the
landmarks the model was conditioned on.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from anchorface.data.dataset import furthest_end
from anchorface.devices import resolve_device
from anchorface.errors import AnchorfaceError, ImageError, NoFaceError, require
from anchorface.evaluation import metrics
from anchorface.io.images import IMAGE_SUFFIXES, resize
from anchorface.evaluation.report import BASELINE_COLUMN, is_report_folder, jsonable, write_report  # noqa: F401
from anchorface.faces import detect as faces, landmarks
from anchorface.methods.anchored.options import CONDITIONS, MERGES, check_sampling
from anchorface.methods.base import DrivingClip, Source
from anchorface.methods.registry import MethodSpec, get_method, method_names

PROTOCOLS = ("self", "cross", "consistency", "ablation", "guidance")
SELF_FRAMES = 8  # §4.3.1: "a random 8-frame sequence in its original order"
DEFAULT_LENGTHS = (8, 16, 32, 64)  # consistency study (Fig. 5)
MAX_LENGTH = 100_000  # its longest video: over an hour at 25 fps (the frame indices of a window are held in memory)
ABLATION_SCALES = (1.0, 2.0, 4.0, 8.0)  # supp. Table 1, CFG column


# ---------------------------------------------------------------------------------------------------------------
# Selecting what to evaluate (pure functions)


def self_window(num_frames: int, length: int, rng: random.Random) -> tuple[list[int], int] | None:
    """§4.3.1: a random window of `length` consecutive frames and the frame furthest in time from it (the first
    or the last frame of the video). None when the video has no frame outside a window of that length."""
    if num_frames < length + 1:
        return None
    start = rng.randint(0, num_frames - length)
    window = list(range(start, start + length))
    return window, furthest_end(window[0], window[-1], num_frames)


def long_window(num_frames: int, length: int) -> tuple[list[int], int]:
    """A consistency window longer than the clip: the clip played forward and back (ping-pong) until `length`
    frames, so the motion stays continuous; the source is the clip's last frame (it lies inside the window)."""
    if num_frames < 2:
        return [0] * length, 0
    period = 2 * (num_frames - 1)
    idx = [i % period for i in range(length)]
    return [i if i < num_frames else period - i for i in idx], num_frames - 1


def same_identity(photo: Path, video: Path) -> bool:
    """A photo counts as the driving clip's identity when named after it (`d12.jpg`, `drv_d12.jpg`)."""
    return photo.stem == video.stem or photo.stem.endswith("_" + video.stem)


def pair_sources(videos: list[Path], photos: list[Path], has_face: Callable[[Path], bool], seed: int
                 ) -> tuple[dict[Path, Path], list[str]]:
    """§4.3.2: give each driving video a photo of another identity, in a seeded random rotation over the photos,
    skipping photos without a face (checked once each; `has_face` may raise ImageError for an unreadable photo,
    which is skipped too) and photos of the same identity. Returns (pairs, notes)."""
    order = list(photos)
    random.Random(seed).shuffle(order)
    notes, usable, pairs = [], {}, {}
    k = 0
    for video in videos:
        for _ in range(len(order)):
            photo = order[k % len(order)]
            k += 1
            if photo not in usable:
                try:
                    usable[photo], why = has_face(photo), "no face found"
                except ImageError as e:  # an unreadable photo is skipped like a faceless one
                    usable[photo], why = False, str(e)
                if not usable[photo]:
                    notes.append(f"cross-identity: skipped source photo {photo.name} ({why})")
            if usable[photo] and not same_identity(photo, video):
                pairs[video] = photo
                break
        else:
            notes.append(f"cross-identity: no usable photo of another identity for {video.name}")
    return pairs, notes


def read_cross_pairs(path: str | Path, videos: list[Path]) -> tuple[dict[Path, Path], list[str]]:
    """§4.3.2 with given pairs (`anchorface split`'s cross_pairs.tsv): lines `driving<TAB>photo`, paths relative to
    the file. Returns (pairs for those of `videos` listed, notes for the videos not listed)."""
    path = Path(path)
    try:
        lines = [ln.split("\t") for ln in path.read_text().splitlines() if ln.strip()]
    except OSError as e:
        raise AnchorfaceError(f"cannot read --cross-pairs {path}: {e.strerror or e}") from None
    if any(len(parts) != 2 for parts in lines):
        raise AnchorfaceError(f"--cross-pairs {path}: expected lines 'driving<TAB>photo'")
    table = {(path.parent / d).resolve(): path.parent / p for d, p in lines}
    pairs = {v: table[v.resolve()] for v in videos if v.resolve() in table}
    notes = [f"cross-identity: {v.name} has no pair in {path.name}" for v in videos if v not in pairs]
    return pairs, notes


def list_photos(directory: str | Path) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise AnchorfaceError(f"--sources must be a directory of photos, got {d}")
    photos = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        raise AnchorfaceError(f"no photos ({', '.join(IMAGE_SUFFIXES)}) found in {d}")
    return photos


# ---------------------------------------------------------------------------------------------------------------
# Cases: a source + a driving window, with their crops and landmarks (independent of the checkpoint)


@dataclass
class Case:
    name: str  # e.g. "d12[40:48]<-s3"
    video: str
    source_name: str
    frames: list[np.ndarray]  # driving window, full frames
    boxes: np.ndarray  # [n, 4] smoothed driving crop boxes
    drv_lmk: np.ndarray  # [n, 478, 3] on crops of landmark_crop_size(resolution) px
    drv_found: np.ndarray  # [n] bool
    source: np.ndarray  # full source image
    src_box: faces.Box
    src_lmk: np.ndarray | None  # [478, 3] or None

    def driving_crops(self, size: int) -> np.ndarray:
        return np.stack([faces.crop(f, b, size) for f, b in zip(self.frames, self.boxes)])

    def source_crop(self, size: int) -> np.ndarray:
        return faces.crop(self.source, self.src_box, size)


def read_frames(path: Path, indices: list[int]) -> dict[int, np.ndarray]:
    """The frames at `indices` of a video, decoding it once up to the last one."""
    from anchorface.io.video import iter_frames

    wanted, out = set(indices), {}
    for i, frame in enumerate(iter_frames(path, max_frames=max(indices) + 1)):
        if i in wanted:
            out[i] = frame
    return out


def make_case(name: str, video: Path, frames: list[np.ndarray], source: np.ndarray, source_name: str,
              src_box: faces.Box | None = None, resolution: int | None = None) -> Case:
    """Track the driving window's crop boxes and landmarks and find the source face (NoFaceError if none), as the
    pipeline does (`faces.track_video`, `faces.source_landmarks`; landmarks on crops of
    `landmark_crop_size(resolution)` px, `resolution` = the largest model resolution evaluated)."""
    track = faces.track_video(frames, resolution, progress=False)
    src_box = src_box or faces.source_crop_box(source, source_name)
    return Case(name, video.name, source_name, frames, track.boxes, track.landmarks, track.found, source, src_box,
                faces.source_landmarks(source, src_box, resolution))


# ---------------------------------------------------------------------------------------------------------------
# Generation with a method of the registry


def target_motion(case: Case, relative: bool) -> np.ndarray:
    """The landmarks a model is conditioned on, and scored against: the driving ones, or (--relative) the driving
    motion re-targeted to the source face."""
    if relative and case.src_lmk is None:
        raise NoFaceError(f"no face landmarks in the source of {case.name} (needed by --relative)")
    return landmarks.relative_motion(case.drv_lmk, case.src_lmk) if relative else case.drv_lmk


def generate(method, case: Case, options: dict, relative: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generated crops [n, res, res, 3] of a `Reenactor` for a case (its source and driving window, tracked once
    for all methods) and the landmarks it was conditioned on [n, 478, 3]."""
    motion = target_motion(case, relative)
    clip = DrivingClip.from_frames(case.frames, case.boxes, landmarks=case.drv_lmk, found=case.drv_found,
                                   motion=motion)
    source = Source(image=case.source, box=case.src_box, landmarks=case.src_lmk, name=case.source_name)
    gen = method.render(source, clip, seed=seed, progress=False, **options).array()
    return gen, np.asarray(motion, np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Scoring


EMBED_FRAMES = 32  # at most this many frames of a video are embedded (long videos: evenly spaced)


def embedded_frames(n: int, most: int = EMBED_FRAMES) -> list[int]:
    """The frames of an n-frame video whose embeddings the identity measures use: all of them up to `most`, else
    `most` evenly spaced ones that include the first, the central (the anchor, n // 2) and the last."""
    if n <= most:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, most - 1).round().astype(int).tolist()) | {n // 2})


class Scorer:
    """Per-video metrics (§4.2) of generated crops against a case, plus features for FID / FVD."""

    def __init__(self, embedder=None, inception=None, i3d=None):
        self.embedder, self.inception, self.i3d = embedder, inception, i3d
        self.distance = getattr(embedder, "distance", "cosine")
        self._references: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # (case, resolution, frames) -> src, drv

    def references(self, case: Case, res: int, idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The embeddings of the source crop and of the driving frames `idx` of a case, computed once for all the
        methods and variants scored on it."""
        key = (case.name, res, tuple(idx))
        if key not in self._references:
            self._references[key] = (self.embed(case.source_crop(res)[None]), self.embed(case.driving_crops(res)[idx]))
        return self._references[key]

    def embed(self, frames) -> np.ndarray | None:
        return None if self.embedder is None else self.embedder(frames)

    def score(self, case: Case, gen: np.ndarray, target_lmk: np.ndarray, with_reference: bool,
              consistency: bool = False) -> dict:
        """`consistency` adds the Fig. 5 study's drifts: identity distance of every frame to the first and to the
        central (anchor) frame, and the appearance drift outside the face."""
        res = gen.shape[1]
        real = case.driving_crops(res)
        size = landmarks.landmark_crop_size(res)
        big = [x if res == size else resize(x, size) for x in gen]
        try:
            gen_lmk, gen_found = landmarks.track_landmarks(big, progress=False)
        except NoFaceError:
            gen_lmk, gen_found = np.zeros_like(target_lmk), np.zeros(len(gen), bool)
        out = {"video": case.name, "frames": len(gen),
               **metrics.motion_metrics(gen_lmk, gen_found, target_lmk, drv_found=case.drv_found)}
        idx = embedded_frames(len(gen))
        e_gen = self.embed(gen[idx])
        if e_gen is not None:
            e_src, e_drv = self.references(case, res, idx)
            out.update(csim=metrics.csim(e_src[0], e_gen), self_csim=metrics.self_csim(e_gen, e_drv),
                       first_frame_csim=metrics.first_frame_csim(e_gen), embedded_frames=len(idx))
            if consistency:
                out["id_drift_first"], out["id_drift_first_max"] = metrics.drift_to(e_gen, 0, self.distance)
                out["id_drift_anchor"], _ = metrics.drift_to(e_gen, idx.index(len(gen) // 2), self.distance)
        out["appearance_drift"] = metrics.appearance_drift(gen)
        if consistency:
            out["background_drift"] = metrics.background_drift(gen, target_lmk)
        if with_reference:
            out.update(psnr=metrics.psnr(gen, real), ssim=metrics.ssim(gen, real))
        feats = {}
        if self.inception is not None:
            feats.update(fid_fake=self.inception(gen), fid_real=self.inception(real))
        if self.i3d is not None:
            feats.update(fvd_fake=self.i3d([gen]), fvd_real=self.i3d([real]))
        return {"metrics": out, "features": feats}


PER_VIDEO = ("lmse", "e_lmse", "face_found_rate", "csim", "self_csim", "first_frame_csim", "appearance_drift",
             "psnr", "ssim", "id_drift_first", "id_drift_first_max", "id_drift_anchor", "background_drift")
CONSISTENCY_MEASURES = ("self_csim", "id_drift_first", "id_drift_anchor", "background_drift", "appearance_drift",
                        "first_frame_csim")
STRIP_FRAMES = 12  # Fig. 4: frames of a long video shown side by side


def aggregate(scored: list[dict], notes: list[str], label: str) -> dict:
    """Mean of the per-video metrics (NaN-aware: LMSE is undefined for a video without any face), FID over all
    frames, FVD over all videos (each needs >= 2 samples per side)."""
    out: dict = {"videos": len(scored)}
    for key in PER_VIDEO:
        vals = np.array([s["metrics"][key] for s in scored if key in s["metrics"]], np.float64)
        if vals.size:
            finite = vals[~np.isnan(vals)]
            out[key] = float(finite.mean()) if finite.size else float("nan")
    for name, fake, real, unit in (("fid", "fid_fake", "fid_real", "frames"), ("fvd", "fvd_fake", "fvd_real",
                                                                                "videos")):
        parts = [s["features"] for s in scored if fake in s["features"]]
        if not parts:
            continue
        f = np.concatenate([p[fake] for p in parts])
        r = np.concatenate([p[real] for p in parts])
        if len(f) < 2:
            notes.append(f"{label}: {name.upper()} needs at least 2 {unit}, got {len(f)}")
            continue
        out[name] = metrics.fid_from_features(r, f)
        out[f"{name}_samples"] = int(len(f))
    out["per_video"] = [s["metrics"] for s in scored]
    return out


# ---------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class Options:
    checkpoints: list[Path]
    driving: list[str]
    output: Path
    sources: Path | None = None
    cross_pairs: Path | None = None  # driving<TAB>photo lines (`anchorface split`), instead of --sources' rotation
    merges: tuple[str, ...] = MERGES
    protocols: tuple[str, ...] = PROTOCOLS
    sampler: str | None = None  # None: each checkpoint's sample.sampler
    steps: int | None = None  # None: each checkpoint's sample.steps
    guidance_scale: float | None = None  # None: each checkpoint's sample.guidance_scale
    frames: int = SELF_FRAMES
    max_videos: int | None = 8
    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    ablation_steps: tuple[int, ...] | None = None  # None: (steps, 2 x steps)
    ablation_scales: tuple[float, ...] = ABLATION_SCALES
    ablation_conditions: tuple[str, ...] = ("none", "landmarks", "global", "both")  # `options.CONDITIONS`
    clip: str | None = None
    embedding: str | None = None  # `EMBEDDINGS` for CSIM / Self-CSIM / identity drift; None: clip with --clip, else identity
    inception: str | None = None
    i3d: str | None = None
    relative: bool = False
    baselines: bool = True  # False: leave out the registry's baseline methods ("copy driving", "still source")
    methods: tuple[str, ...] | None = None  # methods of the registry (None: all of them)
    seed: int = 0
    seeds: int = 1  # consistency study: seeds per (clip, length, strategy)
    consistency_conditions: tuple[str, ...] = ("both",)  # settings of the consistency study (`options.CONDITIONS`)
    device: str = "cpu"
    progress: bool = True
    notes: list[str] = field(default_factory=list)


def _check_options(o: Options) -> None:
    """Every option that needs no model, before any work (`options.check_sampling` for the sampling ones)."""
    for m in o.merges:
        check_sampling(merge=m)
    if o.embedding is not None and o.embedding not in EMBEDDINGS:
        raise AnchorfaceError(f"unknown embedding {o.embedding!r}; choose from {', '.join(EMBEDDINGS)}")
    if o.embedding == "clip" and not o.clip:
        raise AnchorfaceError("--embedding clip needs --clip DIR (a CLIP model directory)")
    bad = [p for p in o.protocols if p not in PROTOCOLS]
    if bad:
        raise AnchorfaceError(f"unknown protocol {bad[0]!r}; choose from {', '.join(PROTOCOLS)}")
    bad = [c for c in o.ablation_conditions + o.consistency_conditions if c not in CONDITIONS]
    if bad:
        raise AnchorfaceError(f"unknown ablation condition {bad[0]!r}; choose from {', '.join(CONDITIONS)}")
    for name in o.methods or ():
        get_method(name)
    if o.seeds < 1:
        raise AnchorfaceError(f"--seeds must be >= 1, got {o.seeds}")
    if o.frames < 2:
        raise AnchorfaceError(f"--frames must be >= 2, got {o.frames}")
    if any(not 2 <= L <= MAX_LENGTH for L in o.lengths):
        raise AnchorfaceError(f"--lengths must all be in 2..{MAX_LENGTH}, got {list(o.lengths)}")
    if o.max_videos is not None and o.max_videos < 1:
        raise AnchorfaceError(f"--max-videos must be >= 1, got {o.max_videos}")
    check_sampling(sampler=o.sampler, steps=o.steps, guidance_scale=o.guidance_scale)
    if o.ablation_steps is not None and (not o.ablation_steps or min(o.ablation_steps) < 1):
        raise AnchorfaceError(f"--ablation-steps must all be >= 1, got {list(o.ablation_steps)}")
    for scale in o.ablation_scales:
        check_sampling(guidance_scale=scale)
    if {"cross", "ablation"} & set(o.protocols) and o.sources is None and o.cross_pairs is None:
        raise AnchorfaceError("the cross and ablation protocols need --sources DIR (photos of other identities) "
                              "or --cross-pairs FILE")
    specs = selected_methods(o)
    if any(s.needs_checkpoint for s in specs) and not o.checkpoints:
        names = ", ".join(s.name for s in specs if s.needs_checkpoint)
        raise AnchorfaceError(f"method {names} needs --checkpoint DIR")
    out = Path(o.output)
    if out.is_symlink():
        raise AnchorfaceError(f"--output {out} is a symbolic link; give the folder itself (or a new one)")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_report_folder(out))):
        raise AnchorfaceError(f"--output {out} exists and is not an earlier evaluation report (only those are "
                              "replaced, when they hold nothing else); choose a new directory")


def selected_methods(o: Options) -> list[MethodSpec]:
    """The registry's specs of `o.methods`, without the baselines when `o.baselines` is False. When None: the
    methods the `--checkpoint`s were trained for (`config.method`; the first checkpointed method of the registry,
    Anchored Diffusion, when no checkpoint is given) and the baselines."""
    if o.methods:
        names = list(dict.fromkeys(o.methods))
    else:
        owned = {checkpoint_method(p) for p in o.checkpoints}
        models = [n for n in method_names(baselines=False) if get_method(n).needs_checkpoint]
        names = [n for n in method_names() if not get_method(n).needs_checkpoint or n in owned
                 or (not owned - {None} and n == models[0])]
    specs = [get_method(n) for n in names]
    specs = [s for s in specs if o.baselines or not s.baseline]
    if not specs:
        raise AnchorfaceError("no method to evaluate (--no-baselines left none of --methods)")
    return specs


EMBEDDINGS = ("identity", "clip", "learned")  # --embedding: what CSIM, Self-CSIM and the identity drift embed with


class IdentityEmbedding:
    """The face-recognition embedding (`faces/identity.py`: dlib's ResNet, 128-d, Euclidean; where the paper uses
    ArcFace): generated crops are embedded whole, upsampled by the embedder when small; where dlib's detector does
    not find the face the whole crop (the known face box) is used. `detected` / `measured` count the frames."""

    distance = "euclidean"

    def __init__(self):
        from anchorface.faces.identity import IdentityEmbedder

        self.model, self.measured, self.detected = IdentityEmbedder(), 0, 0
        self.name = f"face recognition ({self.model.name})"

    def __call__(self, frames) -> np.ndarray:
        m = self.model.measure(list(frames))
        self.measured += m.measured
        self.detected += int(m.detected.sum())
        return m.vectors


class EncoderEmbedding:
    """A global encoder G (CLIP, or a checkpoint's learned encoder) as CSIM's embedding (cosine)."""

    distance = "cosine"

    def __init__(self, encoder, name: str):
        self.encoder, self.name = encoder, name

    def __call__(self, frames) -> np.ndarray:
        return metrics.embed_frames(self.encoder, frames)


def _load_embedder(o: Options, pipes: dict):
    """CSIM's embedding, named (`--embedding`): the face-recognition embedding (default), CLIP from --clip, or a
    checkpoint's learned global encoder (asked for by name only: it is trained on the data it would judge)."""
    kind = o.embedding or ("clip" if o.clip else "identity")
    if kind == "identity":
        return IdentityEmbedding()
    if kind == "clip":
        from anchorface.frozen.encoders import CLIPGlobalEncoder

        return EncoderEmbedding(CLIPGlobalEncoder(o.clip).to(o.device), f"CLIP ({o.clip})")
    for name, pipe in pipes.items():  # the loaded models (e.g. `AnchoredDiffusion`: its checkpoint's encoder)
        if getattr(pipe, "encoder", None) is not None:
            kind = pipe.config.data.encoder
            what = f"CLIP ({pipe.config.data.encoder_path})" if kind == "clip" else \
                f"the learned global encoder of checkpoint {name} (not an identity embedding)"
            return EncoderEmbedding(pipe.encoder, what)
    raise AnchorfaceError("--embedding learned needs a checkpoint with a global encoder")


def _first_set(*values):
    return next(v for v in values if v is not None)


def ablation_settings(o: Options, pipe) -> list[tuple[int, float, str]]:
    """The (steps, CFG scale, conditions) rows of supp. Table 1 for checkpoint `pipe`: each CFG scale and each
    conditions subset at the base step count (--steps, else the checkpoint's), and each of --ablation-steps
    (default: the base and twice the base, at most the diffusion's timesteps) at CFG 1. Every row is checked
    against the checkpoint here, before any work."""
    base = _first_set(o.steps, pipe.config.sample.steps)
    steps_list = o.ablation_steps or (base, min(2 * base, pipe.diffusion.num_timesteps))
    rows = [(base, float(s), "both") for s in o.ablation_scales]
    rows += [(int(st), 1.0, "both") for st in steps_list]
    rows += [(base, 1.0, c) for c in o.ablation_conditions]
    rows = list(dict.fromkeys(rows))
    for st, scale, cond in rows:
        pipe.check_sampling(o.merges[0], steps=st, guidance_scale=scale, conditions=cond)
    return rows


def _unique_names(paths: list[Path]) -> list[str]:
    names = [p.resolve().name for p in paths]  # ("baseline" names the baselines' column group)
    return [n if names.count(n) == 1 and n != BASELINE_COLUMN else f"{n}#{i}" for i, n in enumerate(names)]


@dataclass
class Column:
    """One column of Table 1 (§4.3): a loaded method of the registry, under `group` (a checkpoint's name, or
    "baseline") with `label` (a variant such as a merge strategy, or the baseline's title), rendered with
    `options`."""

    group: str
    label: str
    spec: MethodSpec
    method: object  # a `Reenactor`
    options: dict


def checkpoint_method(path: Path) -> str | None:
    """The method a checkpoint was trained for (`config.method` of its anchorface.json), or None when unreadable."""
    from anchorface.io.manifest import read_json_object

    try:
        meta = read_json_object(Path(path) / "anchorface.json")
    except AnchorfaceError:
        return None
    cfg = meta.get("config")
    return cfg.get("method", "anchored") if isinstance(cfg, dict) else None


def checkpoint_owners(paths: list[Path], specs: list[MethodSpec]) -> dict[Path, str]:
    """Which selected checkpointed method loads each checkpoint: the one it was trained for (`config.method`), or
    with a single such method, that one. AnchorfaceError for a checkpoint no selected method can load, or a
    selected method left without a checkpoint."""
    names = [s.name for s in specs]
    owners = {}
    for p in paths:
        m = checkpoint_method(p)
        if len(names) == 1 and (m is None or m == names[0]):
            owners[p] = names[0]
        elif m in names:
            owners[p] = m
        else:
            raise AnchorfaceError(f"--checkpoint {p}: a checkpoint of method {m or 'unknown'}, not of "
                                  f"--methods {' '.join(names)}")
    missing = [n for n in names if n not in owners.values()]
    if missing:
        raise AnchorfaceError(f"no --checkpoint of method {', '.join(missing)} (each checkpointed method needs one)")
    return owners


def load_columns(o: Options, specs: list[MethodSpec]) -> tuple[dict[str, object], list[Column], list[Column]]:
    """Load every selected method and lay out Table 1's columns from the registry: each checkpointed method x
    checkpoint x variant (the merge strategies `o.merges` for Anchored Diffusion), then one column per baseline
    (at the first model's resolution). Every column's options are checked before any work. Returns
    (models by group name, model columns, baseline columns)."""
    models: dict[str, object] = {}
    columns: list[Column] = []
    checkpointed = [s for s in specs if s.needs_checkpoint]
    names = _unique_names(o.checkpoints)
    owners = checkpoint_owners(o.checkpoints, checkpointed)
    for spec in checkpointed:
        for name, path in zip(names, o.checkpoints):
            if owners[path] != spec.name:
                continue
            group = name if len(checkpointed) == 1 else f"{spec.name}:{name}"
            method = models[group] = spec.from_pretrained(path, device=o.device)
            shared = {k: v for k, v in (("sampler", o.sampler), ("steps", o.steps), ("guidance_scale", o.guidance_scale))
                      if v is not None and k in getattr(method, "OPTIONS", ())}
            variants = (o.merges if spec.variant_option == "merge" else spec.variants) or (None,)
            for v in variants:
                opts = dict(shared, **({spec.variant_option: v} if v is not None else {}))
                method.check(**opts)
                columns.append(Column(group, v or spec.title, spec, method, opts))
    res = next(iter(models.values())).resolution if models else None
    baselines = [Column(BASELINE_COLUMN, s.title, s, s.from_pretrained(None, device=o.device, resolution=res), {})
                 for s in specs if not s.needs_checkpoint]
    return models, columns, baselines


class Evaluation:
    """The state the protocols share: the driving windows and the cases (tracked once, for every method), the
    loaded columns, the scorer, the notes and the progress bar."""

    def __init__(self, o: Options, videos: list[Path], models: dict, columns: list[Column], baselines: list[Column],
                 scorer: Scorer):
        from anchorface.io.video import probe_video

        self.o, self.videos, self.models, self.columns, self.baselines = o, videos, models, columns, baselines
        self.scorer, self.notes = scorer, o.notes
        self.lmk_res = max(c.method.resolution for c in columns + baselines)  # landmark_crop_size(lmk_res) px
        self.cases: dict[tuple, Case | None] = {}  # (video, length[, "ping-pong"]) -> its case
        self.windows: dict[tuple[Path, int], tuple[list[int], int]] = {}
        infos = {v: probe_video(v) for v in videos}
        lengths = sorted({o.frames} | (set(o.lengths) if "consistency" in o.protocols else set()))
        self.pingpong: dict[tuple[Path, int], tuple[list[int], int]] = {}  # consistency windows longer than the clip
        for v in videos:
            for L in lengths:
                w = self_window(infos[v].num_frames, L, random.Random(f"{o.seed}:{v.name}:{L}"))
                if w is not None:
                    self.windows[(v, L)] = w
                    continue
                if "consistency" in o.protocols and L in o.lengths:
                    self.pingpong[(v, L)] = long_window(infos[v].num_frames, L)
                    self.notes.append(f"{v.name}: {infos[v].num_frames} frames; its {L}-frame consistency window "
                                      "plays it forward and back (ping-pong), source = its last frame")
                if (v, L) not in self.pingpong or L == o.frames:  # (self-reenactment needs a real window)
                    self.notes.append(f"{v.name}: {infos[v].num_frames} frames, too short for a {L}-frame window "
                                      f"plus a source frame; skipped at that length"
                                      f"{' for self-reenactment' if (v, L) in self.pingpong else ''}")
        self.bar = None

    def _case(self, key: tuple, v: Path, L: int, window: tuple[list[int], int] | None) -> Case | None:
        """The case of `window` of video `v` (cached under `key`; None with a note if unusable)."""
        if key not in self.cases:
            self.cases[key] = None
            if window is not None:
                idx, src = window
                got = read_frames(v, idx + [src])
                if len(got) < len(set(idx + [src])):
                    self.notes.append(f"{v.name}: decoded fewer frames than its header states; skipped at length {L}")
                    return None
                try:
                    self.cases[key] = make_case(f"{v.stem}[{idx[0]}:{idx[-1] + 1}]<-f{src}", v,
                                                [got[i] for i in idx], got[src], f"frame {src} of {v.name}",
                                                resolution=self.lmk_res)
                except NoFaceError as e:
                    self.notes.append(f"{v.name} ({L} frames): skipped, {e}")
        return self.cases[key]

    def self_case(self, v: Path, L: int) -> Case | None:
        """The self-reenactment case of video `v` at window length L (a real window of the clip)."""
        return self._case((v, L), v, L, self.windows.get((v, L)))

    def consistency_case(self, v: Path, L: int) -> Case | None:
        """The consistency study's case at length L: the self-reenactment window, or ping-pong past the clip's end."""
        if (v, L) in self.windows:
            return self.self_case(v, L)
        return self._case((v, L, "ping-pong"), v, L, self.pingpong.get((v, L)))

    def has_consistency_window(self, v: Path, L: int) -> bool:
        return (v, L) in self.windows or (v, L) in self.pingpong

    def self_cases(self) -> list[Case]:
        return [c for v in self.videos if (c := self.self_case(v, self.o.frames)) is not None]

    def cross_cases(self) -> list[Case]:
        """§4.3.2: the self cases' driving windows, each with a photo of another identity (`pair_sources`)."""
        from anchorface.io.images import load_image

        photos = list_photos(self.o.sources) if self.o.cross_pairs is None else []
        found: dict[Path, tuple[np.ndarray, faces.Box] | None] = {}

        def has_face(p: Path) -> bool:
            image = load_image(p)
            try:
                found[p] = image, faces.source_crop_box(image, f"source photo {p.name}")
            except NoFaceError:
                found[p] = None
            return found[p] is not None

        usable = [v for v in self.videos if self.self_case(v, self.o.frames) is not None]
        if self.o.cross_pairs is not None:
            pairs, pair_notes = read_cross_pairs(self.o.cross_pairs, usable)
            for v, photo in list(pairs.items()):
                try:
                    ok, why = has_face(photo), "no face found"
                except ImageError as e:
                    ok, why = False, str(e)
                if not ok:
                    pair_notes.append(f"cross-identity: skipped source photo {photo.name} ({why})")
                    del pairs[v]
        else:
            pairs, pair_notes = pair_sources(usable, photos, has_face, self.o.seed)
        self.notes.extend(pair_notes)
        out = []
        for v, photo in pairs.items():
            base, (image, box) = self.cases[(v, self.o.frames)], found[photo]
            out.append(Case(f"{base.name.split('<-')[0]}<-{photo.stem}", v.name, photo.name, base.frames, base.boxes,
                            base.drv_lmk, base.drv_found, image, box, faces.source_landmarks(image, box, self.lmk_res)))
        return out

    def score(self, column: Column, case: Case, seed: int, with_reference: bool, consistency: bool = False,
              **options) -> tuple[dict, np.ndarray]:
        gen, target = generate(column.method, case, {**column.options, **options}, self.o.relative, seed)
        return self.scorer.score(case, gen, target, with_reference=with_reference, consistency=consistency), gen

    def tick(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)


def reenactment_protocol(ev: Evaluation, proto: str, cases: list[Case]) -> tuple[dict, dict | None]:
    """§4.3.1 (`self`, with the driving frames as ground truth) or §4.3.2 (`cross`): every column on every case.
    Returns (results[group][label], the frame grid of the first case for every model column)."""
    results: dict = {}
    grid = None
    first = ev.columns[0].group if ev.columns else None
    for col in ev.columns:
        scored = []
        for ci, c in enumerate(cases):
            sc, gen = ev.score(col, c, ev.o.seed + ci, with_reference=proto == "self")
            scored.append(sc)
            if ci == 0:
                grid = grid or {"case": c, "gen": {}}
                label = col.label if col.group == first or col.label not in grid["gen"] else f"{col.group}/{col.label}"
                grid["gen"][label] = gen
            ev.tick()
        if scored:
            results.setdefault(col.group, {})[col.label] = aggregate(scored, ev.notes, f"{proto}/{col.group}/{col.label}")
    for col in ev.baselines:
        if cases:
            scored = [ev.score(col, c, ev.o.seed + ci, with_reference=proto == "self")[0] for ci, c in enumerate(cases)]
            results.setdefault(BASELINE_COLUMN, {})[col.label] = dict(
                aggregate(scored, ev.notes, f"{proto}/baseline/{col.label}"), resolution=col.method.resolution)
    return results, grid


def consistency_protocol(ev: Evaluation) -> tuple[list[dict], dict]:
    """Fig. 5 (and Fig. 4): self-reenactment windows of each length in `o.lengths`, every model column (merge
    strategy), `o.seeds` seeds, in each setting of `o.consistency_conditions` (the signals given: "both", or
    "landmarks" where G is dropped and only the merge strategy can hold the appearance). One length at a time (long
    windows are freed after use). Rows hold each measure's mean over clips x seeds and its 95% bootstrap interval
    (clips resampled whole), and each strategy's paired difference from anchored (`stats.paired_differences`,
    the same clips and seeds). Also returns Fig. 4's strips: for the longest length, the first clip and seed,
    `STRIP_FRAMES` frames of every strategy per setting."""
    from anchorface.evaluation.stats import bootstrap_ci, paired_differences

    o = ev.o
    scored: dict[tuple, list] = {}
    strips: dict[str, dict] = {}
    longest = max(o.lengths)
    for L in o.lengths:
        for v in ev.videos:
            c = ev.consistency_case(v, L)
            for cond in o.consistency_conditions:
                for k in range(o.seeds):
                    for col in ev.columns:
                        if c is None:
                            continue
                        takes = "conditions" in getattr(col.method, "OPTIONS", ())
                        if not takes and cond != "both":
                            continue  # (a method without condition subsets, e.g. DiffusionAct: full conditions)
                        sc, gen = ev.score(col, c, o.seed + k, with_reference=True, consistency=True,
                                           **({"conditions": cond} if takes else {}))
                        scored.setdefault((cond, L, col.group, col.label), []).append(sc)
                        strip = strips.setdefault(cond, {"video": c.name, "length": L, "frames": {}}) \
                            if L == longest and k == 0 else None
                        if strip is not None and strip["video"] == c.name:
                            pick = np.linspace(0, len(gen) - 1, min(STRIP_FRAMES, len(gen))).round().astype(int)
                            strip["frames"][col.label], strip["indices"] = gen[pick], pick.tolist()
                ev.tick(int(ev.has_consistency_window(v, L)) * o.seeds * len(ev.columns))
            if L != o.frames:
                ev.cases.pop((v, L), None)
            ev.cases.pop((v, L, "ping-pong"), None)
    rows = []
    for (cond, L, g, m), sc in scored.items():
        row = {"conditions": cond, "length": L, "checkpoint": g, "merge": m, "seeds": o.seeds,
               **aggregate(sc, ev.notes, f"consistency/{cond}/{g}/{m}/{L}"), "ci": {}}
        clips = [s["metrics"]["video"] for s in sc]
        for key in CONSISTENCY_MEASURES:
            vals = [s["metrics"].get(key, float("nan")) for s in sc]
            if any(np.isfinite(vals)):
                mean, lo, hi = bootstrap_ci(vals, groups=clips, seed=o.seed)
                row[key], row["ci"][key] = mean, [lo, hi]
        rows.append(row)
    paired_differences(rows, CONSISTENCY_MEASURES, reference="anchored", seed=o.seed)
    return rows, strips


def ablation_protocol(ev: Evaluation, column: Column, rows: list[tuple[int, float, str]],
                      cases: list[Case]) -> list[dict]:
    """Supp. Table 1 on the first model column: each (steps, CFG scale, conditions) row on every case."""
    out = []
    for row in rows:
        st, scale, cond = row
        scored = []
        for ci, c in enumerate(cases):
            scored.append(ev.score(column, c, ev.o.seed + ci, with_reference=False, steps=st, guidance_scale=scale,
                                   conditions=cond)[0])
            ev.tick()
        if scored:
            out.append({"steps": st, "guidance_scale": scale, "conditions": cond, "checkpoint": column.group,
                        "merge": column.label, **aggregate(scored, ev.notes, f"ablation/{row}")})
    return out


def guidance_protocol(ev: Evaluation, column: Column, cases: list[Case]) -> dict | None:
    """Fig. 7 on the first anchored column: x0-recovery error per timestep and condition subset, on the first T
    frames of every self-reenactment window (`evaluation.guidance`)."""
    from anchorface.evaluation.guidance import recovery_errors, study_timesteps, summarize

    pipe = column.method.pipe
    T, res = pipe.num_frames, pipe.resolution
    seqs = []
    for c in cases:
        if len(c.frames) < T:
            ev.notes.append(f"guidance: {c.name} has fewer than T={T} frames; skipped")
            continue
        seqs.append((c.driving_crops(res)[:T], pipe.global_signal(c.source_crop(res)),
                     target_motion(c, ev.o.relative)[:T]))
    ev.tick(len(cases))
    if not seqs:
        return None
    timesteps = study_timesteps(pipe.diffusion.num_timesteps)
    errors = recovery_errors(pipe, seqs, timesteps, seed=ev.o.seed)
    return {"checkpoint": column.group, "cases": len(seqs), "frames": T, "timesteps": timesteps,
            "rows": summarize(errors, timesteps, seed=ev.o.seed),
            "mse": {k: v.tolist() for k, v in errors.items()}}


def run_evaluation(o: Options) -> dict:
    """Run the selected protocols with the selected methods of the registry and write report.md, report.json,
    plots and grids under `o.output` (`evaluation.report`)."""
    from anchorface.io.video import list_videos

    _check_options(o)
    require("matplotlib", "eval", "evaluate")  # the plots come last: fail before any work
    lists = ("merges", "protocols", "lengths", "ablation_steps", "ablation_scales", "ablation_conditions",
             "consistency_conditions")  # (a value given twice is measured once: duplicates would double-count it)
    once = {k: tuple(dict.fromkeys(v)) for k in lists if (v := getattr(o, k)) is not None}
    o = dataclasses.replace(o, device=resolve_device(o.device), **once)  # (the notes list is shared with the caller's)
    t0 = time.time()
    specs = selected_methods(o)
    videos = list_videos(o.driving, "driving video")
    if o.max_videos is not None:
        videos = videos[:o.max_videos]
    notes = o.notes
    if o.checkpoints and not any(s.needs_checkpoint for s in specs):
        notes.append("--checkpoint given but no selected method uses a checkpoint")
    inception = metrics.InceptionFeatures(o.inception, device=o.device) if o.inception else None
    i3d = metrics.I3DFeatures(o.i3d, device=o.device) if o.i3d else None
    models, columns, baselines = load_columns(o, specs)
    anchored = [c for c in columns if hasattr(c.method, "pipe")]  # the ablation samples with Anchored Diffusion
    abl_rows = ablation_settings(o, anchored[0].method.pipe) if "ablation" in o.protocols and anchored else []
    if "ablation" in o.protocols and not anchored:
        notes.append("ablation: needs the anchored method; skipped")
    embedder = _load_embedder(o, models)
    if "consistency" in o.protocols and not columns:
        notes.append("consistency: needs a model method (the baselines generate nothing to compare); skipped")
    ev = Evaluation(o, videos, models, columns, baselines, Scorer(embedder, inception, i3d))

    self_cases = ev.self_cases() if {"self", "cross", "ablation", "guidance"} & set(o.protocols) else []
    cross_cases = ev.cross_cases() if {"cross", "ablation"} & set(o.protocols) else []
    abl_cases = cross_cases or self_cases
    if abl_rows and not cross_cases:
        notes.append("ablation: no cross-identity pairs, ran on the self-reenactment cases instead")
    consistency_lengths = list(o.lengths) if "consistency" in o.protocols else []
    total = sum(len(cs) * len(columns) for p, cs in (("self", self_cases), ("cross", cross_cases))
                if p in o.protocols)
    total += sum(ev.has_consistency_window(v, L) for L in consistency_lengths for v in videos) * len(columns) * \
        o.seeds * len(o.consistency_conditions)
    total += len(abl_rows) * len(abl_cases)
    guided = anchored[0] if "guidance" in o.protocols and anchored else None
    if "guidance" in o.protocols and not anchored:
        notes.append("guidance: needs the anchored method; skipped")
    total += len(self_cases) if guided is not None else 0
    total += sum(len(cs) * len(baselines) for p, cs in (("self", self_cases), ("cross", cross_cases))
                 if p in o.protocols)
    if total == 0:
        raise AnchorfaceError("nothing to evaluate: " + ("; ".join(dict.fromkeys(notes[-3:])) if notes else
                                                         "no usable driving video"))
    ev.bar = tqdm(total=total, desc="evaluate", unit="video", disable=not o.progress)
    results: dict = {"self": {}, "cross": {}}
    grids: dict[str, dict] = {}
    for proto, cases in (("self", self_cases), ("cross", cross_cases)):
        if proto in o.protocols:
            results[proto], grid = reenactment_protocol(ev, proto, cases)
            if grid is not None:
                grids[proto] = grid
            ev.tick(len(cases) * len(baselines))
    consistency_rows, strips = consistency_protocol(ev) if consistency_lengths else ([], {})
    ablation_rows = ablation_protocol(ev, anchored[0], abl_rows, abl_cases) if abl_rows else []
    guidance = guidance_protocol(ev, guided, self_cases) if guided is not None else None
    ev.bar.close()
    if not (any(results.values()) or consistency_rows or ablation_rows or guidance):  # (every case was skipped)
        raise AnchorfaceError("nothing was measured: " + ("; ".join(dict.fromkeys(notes[-3:])) if notes else
                                                          "every case was skipped"))
    if inception is None:
        notes.append("FID not computed: pass --inception PATH/inception-2015-12-05.pt")
    if i3d is None:
        notes.append("FVD not computed: pass --i3d PATH/i3d_torchscript.pt")
    if isinstance(embedder, IdentityEmbedding) and embedder.measured:
        notes.append(f"identity embedding: dlib's face detector found the face in {embedder.detected} of "
                     f"{embedder.measured} embedded frames; the others were embedded from the whole crop (the known "
                     "face box)")

    report = {
        "settings": {k: v for k, v in vars(o).items() if k != "notes"},
        "methods": [s.name for s in specs],
        "checkpoints": {n: str(p) for n, p in zip(_unique_names(o.checkpoints), o.checkpoints)},
        "columns": [[c.group, c.label] for c in columns + baselines],
        "csim_embedding": embedder.name,
        "lmse_unit": f"squared pixels of a {int(metrics.LMSE_CROP_PX)}-px face crop (mean over frames and points "
                     "of the squared XYZ distance)",
        "videos": [v.name for v in videos],
        "results": results,
        "consistency": consistency_rows,
        "ablation": ablation_rows,
        "guidance": guidance,
        "notes": list(dict.fromkeys(notes)),
        "seconds": time.time() - t0,
    }
    order = list(dict.fromkeys(c.label for c in columns))
    write_report(report, Path(o.output), [(c.group, c.label) for c in columns + baselines], grids,
                 [f"*{c.label}*: {c.spec.summary.removeprefix('baseline: ')}" for c in baselines], order, strips)
    return report
