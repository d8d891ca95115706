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
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from anchorface.evaluation import metrics
from anchorface.faces import detect as faces, landmarks
from anchorface.data.dataset import furthest_end
from anchorface.devices import resolve_device
from anchorface.methods.anchored.plans import KINDS
from anchorface.errors import AnchorfaceError, ImageError, NoFaceError, require

PROTOCOLS = ("self", "cross", "consistency", "ablation")
SELF_FRAMES = 8  # §4.3.1: "a random 8-frame sequence in its original order"
DEFAULT_LENGTHS = (8, 16, 32, 64)  # consistency study (Fig. 5)
ABLATION_SCALES = (1.0, 2.0, 4.0, 8.0)  # supp. Table 1, CFG column
# supp. Table 1, "Guidance" column: which conditions are given at sampling -> (drop global, drop landmarks)
CONDITIONS = {"both": (False, False), "landmarks": (True, False), "global": (False, True), "none": (True, True)}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
GRID_FRAMES = 8  # columns of a frame grid
GRID_CELL = 128  # pixels per grid cell


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
# Generation with a checkpoint


class GivenConditions(nn.Module):
    """Sampling with only some conditions given (supp. Table 1, "Guidance" column): the dropped signals are
    replaced by the model's learned null embeddings in every forward pass (`drop_global` / `drop_landmarks` of
    the sDiT), so "none" samples unconditionally and "landmarks" / "global" give one signal only."""

    def __init__(self, sdit: nn.Module, drop_global: bool, drop_landmarks: bool):
        super().__init__()
        self.sdit, self.drop_global_all, self.drop_landmarks_all = sdit, drop_global, drop_landmarks
        self.mapping = sdit.mapping
        self.config = getattr(sdit, "config", None)  # learn_sigma picks the sampler's variance

    def forward(self, x, t, g=None, lmk=None, drop=None, drop_global=None, drop_landmarks=None, anchor=None):
        ones = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        if self.drop_global_all:
            drop_global = ones if drop_global is None else drop_global | ones
        if self.drop_landmarks_all:
            drop_landmarks = ones if drop_landmarks is None else drop_landmarks | ones
        return self.sdit(x, t, g=g, lmk=lmk, drop=drop, drop_global=drop_global, drop_landmarks=drop_landmarks,
                         anchor=anchor)


@dataclass
class Settings:
    merge: str
    steps: int
    guidance_scale: float
    conditions: str = "both"
    seed: int = 0


def target_motion(case: Case, relative: bool) -> np.ndarray:
    """The landmarks a model is conditioned on, and scored against: the driving ones, or (--relative) the driving
    motion re-targeted to the source face."""
    if relative and case.src_lmk is None:
        raise NoFaceError(f"no face landmarks in the source of {case.name} (needed by --relative)")
    return landmarks.relative_motion(case.drv_lmk, case.src_lmk) if relative else case.drv_lmk


# Two trivial "generators" that frame every other column: copying the driving crops is perfect motion with the
# driving identity (LMSE's floor at that resolution unless --relative re-targets the motion; CSIM of the wrong face
# in cross-reenactment), holding the source crop still is perfect identity with no motion at all.
BASELINES = {
    "copy driving": lambda case, res: case.driving_crops(res),
    "still source": lambda case, res: np.repeat(case.source_crop(res)[None], len(case.frames), axis=0),
}
BASELINE_COLUMN = "baseline"


def generate(pipe, case: Case, s: Settings, relative: bool) -> tuple[np.ndarray, np.ndarray]:
    """Generated crops [n, res, res, 3] and the landmarks the model was conditioned on [n, 478, 3]."""
    motion = target_motion(case, relative)
    g = pipe.global_signal(case.source_crop(pipe.resolution))
    drop_global, drop_landmarks = CONDITIONS[s.conditions]
    sdit = pipe.sdit
    if drop_global or drop_landmarks:
        if sdit.mapping is None:
            raise AnchorfaceError("the conditions ablation needs a conditional model (global_dim > 0)")
        pipe.sdit = GivenConditions(sdit, drop_global, drop_landmarks)
    try:
        latents = pipe.generate(g, motion, merge=s.merge, steps=s.steps, guidance_scale=s.guidance_scale,
                                seed=s.seed, progress=False)
    finally:
        pipe.sdit = sdit
    return np.stack(list(pipe.decode_frames(latents))), np.asarray(motion, np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Scoring


class Scorer:
    """Per-video metrics (§4.2) of generated crops against a case, plus features for FID / FVD."""

    def __init__(self, embedder=None, inception=None, i3d=None):
        self.embedder, self.inception, self.i3d = embedder, inception, i3d

    def embed(self, frames) -> np.ndarray | None:
        return None if self.embedder is None else metrics.embed_frames(self.embedder, frames)

    def score(self, case: Case, gen: np.ndarray, target_lmk: np.ndarray, with_reference: bool) -> dict:
        res = gen.shape[1]
        real = case.driving_crops(res)
        size = landmarks.landmark_crop_size(res)
        big = [x if res == size else cv2.resize(x, (size, size), interpolation=cv2.INTER_CUBIC) for x in gen]
        try:
            gen_lmk, gen_found = landmarks.track_landmarks(big, progress=False)
        except NoFaceError:
            gen_lmk, gen_found = np.zeros_like(target_lmk), np.zeros(len(gen), bool)
        out = {"video": case.name, "frames": len(gen),
               **metrics.motion_metrics(gen_lmk, gen_found, target_lmk, drv_found=case.drv_found)}
        e_gen = self.embed(gen)
        if e_gen is not None:
            e_src, e_drv = self.embed(case.source_crop(res)[None]), self.embed(real)
            out.update(csim=metrics.csim(e_src[0], e_gen), self_csim=metrics.self_csim(e_gen, e_drv),
                       first_frame_csim=metrics.first_frame_csim(e_gen))
        out["appearance_drift"] = metrics.appearance_drift(gen)
        if with_reference:
            out.update(psnr=metrics.psnr(gen, real), ssim=metrics.ssim(gen, real))
        feats = {}
        if self.inception is not None:
            feats.update(fid_fake=self.inception(gen), fid_real=self.inception(real))
        if self.i3d is not None:
            feats.update(fvd_fake=self.i3d([gen]), fvd_real=self.i3d([real]))
        return {"metrics": out, "features": feats}


PER_VIDEO = ("lmse", "e_lmse", "face_found_rate", "csim", "self_csim", "first_frame_csim", "appearance_drift",
             "psnr", "ssim")


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
# Report


TABLE_ROWS = [("FID ↓", "fid"), ("FVD ↓", "fvd"), ("LMSE ↓", "lmse"), ("Expressive-LMSE ↓", "e_lmse"),
              ("CSIM ↑", "csim"), ("Self-CSIM ↓", "self_csim"), ("PSNR ↑", "psnr"), ("SSIM ↑", "ssim"),
              ("face found (generated)", "face_found_rate")]


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) >= 100 else f"{v:.{digits}f}".rstrip("0").rstrip(".") or "0"
    return str(v)


def jsonable(obj):
    """NaN -> null, ±inf -> "inf"/"-inf", numpy -> Python (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else v)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def table1_markdown(results: dict, columns: list[tuple[str, str]]) -> str:
    """Table 1 of the paper: metrics x (checkpoint, merge), cells "self / cross"."""
    head = "| Metric | " + " | ".join(f"{c} / {m}" for c, m in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 1)]
    for title, key in TABLE_ROWS:
        cells = []
        for c, m in columns:
            vals = [results.get(p, {}).get(c, {}).get(m, {}).get(key) for p in ("self", "cross")]
            cells.append(" / ".join(fmt(v) for v in vals))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_consistency(rows: list[dict], path: Path) -> None:
    """Fig. 5: Self-CSIM (and the two extra consistency measures) against video length, one line per strategy."""
    Figure = require("matplotlib.figure", "eval", "evaluate's plots").Figure

    panels = [("self_csim", "Self-CSIM ↓ (Fig. 5)"), ("first_frame_csim", "min cos(first, later) ↑"),
              ("appearance_drift", "appearance drift ↓ (0-255)")]
    fig = Figure(figsize=(4.2 * len(panels), 3.6), dpi=100)
    series = sorted({(r["checkpoint"], r["merge"]) for r in rows}, key=lambda cm: (cm[0], KINDS.index(cm[1])))
    lengths = sorted({r["length"] for r in rows})
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for ckpt, merge in series:
            pts = sorted((r["length"], r.get(key)) for r in rows if (r["checkpoint"], r["merge"]) == (ckpt, merge))
            pts = [(x, y) for x, y in pts if y is not None and not math.isnan(y)]
            if pts:
                label = merge if len({c for c, _ in series}) == 1 else f"{ckpt}: {merge}"
                ax.plot(*zip(*pts), marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(L) for L in lengths])
        ax.minorticks_off()
        ax.set_xlabel("video length (frames)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def frame_grid(source: np.ndarray, driving: np.ndarray, generated: dict[str, np.ndarray], path: Path,
               title: str) -> None:
    """A PNG grid: row 1 = source | driving frames; one row per strategy = its generated frames."""
    Figure = require("matplotlib.figure", "eval", "evaluate's plots").Figure

    n = len(driving)
    cols = np.unique(np.linspace(0, n - 1, min(n, GRID_FRAMES)).round().astype(int))

    def cell(img):
        return cv2.resize(img, (GRID_CELL, GRID_CELL), interpolation=cv2.INTER_AREA if img.shape[0] > GRID_CELL
                          else cv2.INTER_CUBIC)

    blank = np.full((GRID_CELL, GRID_CELL, 3), 255, np.uint8)
    rows = [np.concatenate([cell(source)] + [cell(driving[i]) for i in cols], axis=1)]
    names = ["source | driving"]
    for merge, gen in generated.items():
        rows.append(np.concatenate([blank] + [cell(gen[i]) for i in cols], axis=1))
        names.append(merge)
    grid = np.concatenate(rows, axis=0)
    fig = Figure(figsize=(grid.shape[1] / 100 + 1.4, grid.shape[0] / 100 + 0.8), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(grid)
    ax.set_yticks([GRID_CELL * (k + 0.5) for k in range(len(names))], names, fontsize=8)
    ax.set_xticks([GRID_CELL * (k + 1.5) for k in range(len(cols))], [f"t={int(c)}" for c in cols], fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


# ---------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class Options:
    checkpoints: list[Path]
    driving: list[str]
    output: Path
    sources: Path | None = None
    merges: tuple[str, ...] = KINDS
    protocols: tuple[str, ...] = PROTOCOLS
    steps: int | None = None  # None: each checkpoint's sample.steps
    guidance_scale: float | None = None  # None: each checkpoint's sample.guidance_scale
    frames: int = SELF_FRAMES
    max_videos: int | None = 8
    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    ablation_steps: tuple[int, ...] | None = None  # None: (steps, 2 x steps)
    ablation_scales: tuple[float, ...] = ABLATION_SCALES
    ablation_conditions: tuple[str, ...] = ("none", "landmarks", "global", "both")
    clip: str | None = None
    inception: str | None = None
    i3d: str | None = None
    relative: bool = False
    baselines: bool = True  # Table 1 gets the "copy driving" and "still source" columns (BASELINES)
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    notes: list[str] = field(default_factory=list)


def _check_options(o: Options) -> None:
    bad = [m for m in o.merges if m not in KINDS]
    if bad:
        raise AnchorfaceError(f"unknown merge strategy {bad[0]!r}; choose from {', '.join(KINDS)}")
    bad = [p for p in o.protocols if p not in PROTOCOLS]
    if bad:
        raise AnchorfaceError(f"unknown protocol {bad[0]!r}; choose from {', '.join(PROTOCOLS)}")
    bad = [c for c in o.ablation_conditions if c not in CONDITIONS]
    if bad:
        raise AnchorfaceError(f"unknown ablation condition {bad[0]!r}; choose from {', '.join(CONDITIONS)}")
    if o.frames < 2:
        raise AnchorfaceError(f"--frames must be >= 2, got {o.frames}")
    if any(L < 2 for L in o.lengths):
        raise AnchorfaceError(f"--lengths must all be >= 2, got {list(o.lengths)}")
    if o.max_videos is not None and o.max_videos < 1:
        raise AnchorfaceError(f"--max-videos must be >= 1, got {o.max_videos}")
    if o.steps is not None and o.steps < 1:
        raise AnchorfaceError(f"--steps must be >= 1, got {o.steps}")
    if o.ablation_steps is not None and (not o.ablation_steps or min(o.ablation_steps) < 1):
        raise AnchorfaceError(f"--ablation-steps must all be >= 1, got {list(o.ablation_steps)}")
    if {"cross", "ablation"} & set(o.protocols) and o.sources is None:
        raise AnchorfaceError("the cross and ablation protocols need --sources DIR (photos of other identities)")
    out = Path(o.output)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "report.json").exists())):
        raise AnchorfaceError(f"--output {out} exists and is not an earlier evaluation report; choose a new "
                              "directory")


def _load_embedder(o: Options, pipes: dict):
    """CSIM's embedding: CLIP from --clip (the paper's), else the first checkpoint's own global encoder (named)."""
    if o.clip:
        from anchorface.frozen.encoders import CLIPGlobalEncoder

        return CLIPGlobalEncoder(o.clip).to(o.device), f"CLIP ({o.clip})"
    for name, pipe in pipes.items():
        if pipe.encoder is not None:
            kind = pipe.config.data.encoder
            what = f"CLIP ({pipe.config.data.encoder_path})" if kind == "clip" else \
                f"the learned global encoder of checkpoint {name} (not CLIP: pass --clip DIR for the paper's CSIM)"
            return pipe.encoder, what
    return None, "none (no global encoder available: pass --clip DIR)"


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
        pipe.check_sampling(o.merges[0], steps=st, guidance_scale=scale)
        if cond != "both" and getattr(pipe.sdit, "mapping", None) is None:
            raise AnchorfaceError("the conditions ablation needs a conditional model (global_dim > 0)")
    return rows


def _unique_names(paths: list[Path]) -> list[str]:
    names = [p.resolve().name for p in paths]  # ("baseline" names the BASELINES' column)
    return [n if names.count(n) == 1 and n != BASELINE_COLUMN else f"{n}#{i}" for i, n in enumerate(names)]


def run_evaluation(o: Options) -> dict:
    """Run the selected protocols and write report.md, report.json, plots and grids under `o.output`."""
    from anchorface.methods.anchored.pipeline import AnchorFacePipeline
    from anchorface.io.video import atomic_output, list_videos, load_image, probe_video

    _check_options(o)
    require("matplotlib", "eval", "evaluate")  # the plots come last: fail before any work
    o = dataclasses.replace(o, device=resolve_device(o.device))  # (the notes list is shared with the caller's)
    t0 = time.time()
    rng_seed = o.seed
    videos = list_videos(o.driving, "driving video")
    if o.max_videos is not None:
        videos = videos[:o.max_videos]
    notes = o.notes
    inception = metrics.InceptionFeatures(o.inception, device=o.device) if o.inception else None
    i3d = metrics.I3DFeatures(o.i3d, device=o.device) if o.i3d else None
    names = _unique_names(o.checkpoints)
    pipes = {n: AnchorFacePipeline.from_pretrained(p, device=o.device) for n, p in zip(names, o.checkpoints)}
    for pipe in pipes.values():  # the requested sampling runs on every checkpoint: fail before any work
        pipe.check_sampling(steps=o.steps, guidance_scale=o.guidance_scale)
    abl_rows = ablation_settings(o, pipes[names[0]]) if "ablation" in o.protocols else []
    embedder, embedder_name = _load_embedder(o, pipes)
    lmk_res = max(p.resolution for p in pipes.values())  # landmark crops: landmark_crop_size(lmk_res) px
    if inception is None:
        notes.append("FID not computed: pass --inception PATH/inception-2015-12-05.pt")
    if i3d is None:
        notes.append("FVD not computed: pass --i3d PATH/i3d_torchscript.pt")
    scorer = Scorer(embedder, inception, i3d)

    def settings(pipe, merge, seed, steps=None, guidance_scale=None, conditions="both") -> Settings:
        """Explicit values, else the command line's, else the checkpoint's (None = unset; 0 is a value)."""
        s = pipe.config.sample
        return Settings(merge=merge, steps=_first_set(steps, o.steps, s.steps),
                        guidance_scale=_first_set(guidance_scale, o.guidance_scale, s.guidance_scale),
                        conditions=conditions, seed=seed)

    # ---- driving windows (one per video and length), self sources, cross sources
    infos = {v: probe_video(v) for v in videos}
    lengths_needed = sorted({o.frames} | (set(o.lengths) if "consistency" in o.protocols else set()))
    windows: dict[tuple[Path, int], tuple[list[int], int]] = {}
    for v in videos:
        for L in lengths_needed:
            w = self_window(infos[v].num_frames, L, random.Random(f"{rng_seed}:{v.name}:{L}"))
            if w is None:
                notes.append(f"{v.name}: {infos[v].num_frames} frames, too short for a {L}-frame window plus a "
                             "source frame; skipped at that length")
            else:
                windows[(v, L)] = w

    cases: dict[tuple[Path, int], Case | None] = {}

    def self_case(v: Path, L: int) -> Case | None:
        """The self-reenactment case of video `v` at window length L (cached; None with a note if unusable)."""
        if (v, L) not in cases:
            cases[(v, L)] = None
            if (v, L) in windows:
                idx, src = windows[(v, L)]
                got = read_frames(v, idx + [src])
                if len(got) < len(idx) + 1:
                    notes.append(f"{v.name}: decoded fewer frames than its header states; skipped at length {L}")
                    return None
                try:
                    cases[(v, L)] = make_case(f"{v.stem}[{idx[0]}:{idx[-1] + 1}]<-f{src}", v, [got[i] for i in idx],
                                              got[src], f"frame {src} of {v.name}", resolution=lmk_res)
                except NoFaceError as e:
                    notes.append(f"{v.name} ({L} frames): skipped, {e}")
        return cases[(v, L)]

    self_cases = [c for v in videos if (c := self_case(v, o.frames)) is not None] \
        if {"self", "cross", "ablation"} & set(o.protocols) else []
    cross_cases: list[Case] = []
    if {"cross", "ablation"} & set(o.protocols):
        photos = list_photos(o.sources)
        found: dict[Path, tuple[np.ndarray, faces.Box] | None] = {}

        def has_face(p: Path) -> bool:
            image = load_image(p)
            try:
                found[p] = image, faces.source_crop_box(image, f"source photo {p.name}")
            except NoFaceError:
                found[p] = None
            return found[p] is not None

        usable = [v for v in videos if cases.get((v, o.frames)) is not None]
        pairs, pair_notes = pair_sources(usable, photos, has_face, rng_seed)
        notes.extend(pair_notes)
        for v, photo in pairs.items():
            base, (image, box) = cases[(v, o.frames)], found[photo]
            cross_cases.append(Case(f"{base.name.split('<-')[0]}<-{photo.stem}", v.name, photo.name, base.frames,
                                    base.boxes, base.drv_lmk, base.drv_found, image, box,
                                    faces.source_landmarks(image, box, lmk_res)))

    results: dict = {"self": {}, "cross": {}}
    grids: dict[str, dict] = {}
    jobs = []
    for proto, proto_cases in (("self", self_cases), ("cross", cross_cases)):
        if proto in o.protocols:
            jobs += [(proto, n, m, ci, c) for n in pipes for m in o.merges for ci, c in enumerate(proto_cases)]
    consistency_lengths = list(o.lengths) if "consistency" in o.protocols else []
    consistency_total = sum((v, L) in windows for L in consistency_lengths for v in videos) * len(pipes) * \
        len(o.merges)
    ablation_jobs = []
    if "ablation" in o.protocols:
        abl_cases = cross_cases or self_cases
        if not cross_cases:
            notes.append("ablation: no cross-identity pairs, ran on the self-reenactment cases instead")
        first, merge = names[0], o.merges[0]
        ablation_jobs = [(row, first, merge, ci, c) for row in abl_rows for ci, c in enumerate(abl_cases)]

    total = len(jobs) + consistency_total + len(ablation_jobs)
    if total == 0:
        raise AnchorfaceError("nothing to evaluate: " + ("; ".join(dict.fromkeys(notes[-3:])) if notes else
                                                         "no usable driving video"))
    bar = tqdm(total=total, desc="evaluate", unit="video", disable=not o.progress)
    scored: dict[tuple, list] = {}
    for proto, n, m, ci, c in jobs:
        gen, target = generate(pipes[n], c, settings(pipes[n], m, o.seed + ci), o.relative)
        scored.setdefault((proto, n, m), []).append(scorer.score(c, gen, target, with_reference=proto == "self"))
        if ci == 0 and n == names[0]:
            g = grids.setdefault(proto, {"case": c, "gen": {}})
            g["gen"][m] = gen
        bar.update()
    for (proto, n, m), sc in scored.items():
        results[proto].setdefault(n, {})[m] = aggregate(sc, notes, f"{proto}/{n}/{m}")
    if o.baselines:  # at the first checkpoint's resolution
        res = pipes[names[0]].resolution
        for proto, proto_cases in (("self", self_cases), ("cross", cross_cases)):
            if proto not in o.protocols or not proto_cases:
                continue
            for label, make in BASELINES.items():
                sc = [scorer.score(c, make(c, res), target_motion(c, o.relative), with_reference=proto == "self")
                      for c in proto_cases]
                results[proto].setdefault(BASELINE_COLUMN, {})[label] = dict(
                    aggregate(sc, notes, f"{proto}/baseline/{label}"), resolution=res)

    consistency_rows = []
    cons_scored: dict[tuple, list] = {}
    for L in consistency_lengths:  # one window length at a time: long windows are freed after use
        for v in videos:
            c = self_case(v, L)
            for n in pipes:
                for m in o.merges:
                    if c is not None:
                        gen, target = generate(pipes[n], c, settings(pipes[n], m, o.seed), o.relative)
                        cons_scored.setdefault((L, n, m), []).append(scorer.score(c, gen, target,
                                                                                  with_reference=True))
                    bar.update(int((v, L) in windows))
            if L != o.frames:
                cases.pop((v, L), None)
    for (L, n, m), sc in cons_scored.items():
        agg = aggregate(sc, notes, f"consistency/{n}/{m}/{L}")
        consistency_rows.append({"length": L, "checkpoint": n, "merge": m, **agg})

    ablation_rows = []
    abl_scored: dict[tuple, list] = {}
    for row, n, m, ci, c in ablation_jobs:
        st, scale, cond = row
        gen, target = generate(pipes[n], c, settings(pipes[n], m, o.seed + ci, steps=st, guidance_scale=scale,
                                                     conditions=cond), o.relative)
        abl_scored.setdefault(row, []).append(scorer.score(c, gen, target, with_reference=False))
        bar.update()
    for row, sc in abl_scored.items():
        st, scale, cond = row
        ablation_rows.append({"steps": st, "guidance_scale": scale, "conditions": cond,
                              "checkpoint": ablation_jobs[0][1], "merge": ablation_jobs[0][2],
                              **aggregate(sc, notes, f"ablation/{row}")})
    bar.close()

    report = {
        "settings": {k: v for k, v in vars(o).items() if k != "notes"},
        "checkpoints": {n: str(p) for n, p in zip(names, o.checkpoints)},
        "csim_embedding": embedder_name,
        "lmse_unit": f"squared pixels of a {int(metrics.LMSE_CROP_PX)}-px face crop (mean over frames and points "
                     "of the squared XYZ distance)",
        "videos": [v.name for v in videos],
        "results": results,
        "consistency": consistency_rows,
        "ablation": ablation_rows,
        "notes": list(dict.fromkeys(notes)),
        "seconds": time.time() - t0,
    }
    with atomic_output(Path(o.output)) as tmp:
        tmp.mkdir(parents=True)
        images = []
        if consistency_rows:
            plot_consistency(consistency_rows, tmp / "consistency.png")
            images.append("consistency.png")
        for proto, g in grids.items():
            c = g["case"]
            res = next(iter(g["gen"].values())).shape[1]
            name = f"grid-{proto}.png"
            frame_grid(c.source_crop(res), c.driving_crops(res), g["gen"], tmp / name, f"{proto}: {c.name}")
            images.append(name)
        report["images"] = images
        (tmp / "report.json").write_text(json.dumps(jsonable(report), indent=2, allow_nan=False))
        (tmp / "report.md").write_text(render_markdown(report, names, o))
    return report


def render_markdown(report: dict, names: list[str], o: Options) -> str:
    out = ["# anchorface evaluation", ""]
    motion = "re-targeted to the source face (--relative)" if o.relative else "driving landmarks as they are (paper)"
    out += ["- checkpoints: " + ", ".join(f"`{n}` ({p})" for n, p in report["checkpoints"].items()),
            f"- driving videos: {len(report['videos'])} ({', '.join(report['videos'])})",
            f"- CSIM / Self-CSIM embedding: {report['csim_embedding']}",
            f"- LMSE unit: {report['lmse_unit']}",
            f"- motion: {motion}",
            f"- steps: {o.steps or 'checkpoint default'}, CFG scale: "
            f"{o.guidance_scale if o.guidance_scale is not None else 'checkpoint default'}, seed: {o.seed}",
            f"- time: {report['seconds']:.0f} s", ""]
    res = report["results"]
    columns = [(n, m) for n in names for m in o.merges if any(m in res.get(p, {}).get(n, {}) for p in res)]
    baselines = [(BASELINE_COLUMN, b) for b in BASELINES if any(b in res.get(p, {}).get(BASELINE_COLUMN, {})
                                                                 for p in res)]
    if columns:
        out += ["## Same- / cross-identity reenactment (§4.3, Table 1)", "",
                "Cells are *self / cross*; PSNR and SSIM exist for self-reenactment only (the driving frames are the "
                "ground truth)."]
        if baselines:
            res_px = next(r["resolution"] for p in res.values() for r in p.get(BASELINE_COLUMN, {}).values())
            floor = "the re-targeted motion is the target, so not LMSE's floor" if o.relative else \
                "LMSE's floor at that resolution"
            out += [f"The *baseline* columns are not models: *copy driving* outputs the driving crops at {res_px} px "
                    f"(perfect motion, the driving identity; {floor}), *still source* repeats the source crop "
                    "(perfect identity, no motion)."]
        out += ["", table1_markdown(res, columns + baselines), ""]
        for p in ("self", "cross"):
            if f"grid-{p}.png" in report.get("images", []):
                out += [f"![{p}](grid-{p}.png)", ""]
    if report["consistency"]:
        out += ["## Consistency vs. video length (Fig. 5)", "",
                "Self-CSIM (lower is better, the paper's measure), min cosine between the first generated frame and "
                "every later one (higher is better) and the appearance drift (8x8 area-averaged mean absolute "
                "difference from the first frame, 0-255; lower is better).", "",
                "| length | checkpoint | merge | videos | Self-CSIM ↓ | min cos(first, later) ↑ | drift ↓ |",
                "|---|---|---|---|---|---|---|"]
        for r in sorted(report["consistency"], key=lambda r: (r["length"], r["checkpoint"], KINDS.index(r["merge"]))):
            out.append(f"| {r['length']} | {r['checkpoint']} | {r['merge']} | {r['videos']} | "
                       f"{fmt(r.get('self_csim'))} | {fmt(r.get('first_frame_csim'))} | "
                       f"{fmt(r.get('appearance_drift'))} |")
        out += ["", "![consistency](consistency.png)", ""]
    if report["ablation"]:
        r0 = report["ablation"][0]
        out += ["## Inference ablation (supp. Table 1)", "",
                f"Checkpoint `{r0['checkpoint']}`, {r0['merge']} merge. *Conditions* = the signals given at sampling "
                "(the others replaced by the model's null embeddings).", "",
                "| steps | CFG | conditions | FID ↓ | LMSE ↓ | CSIM ↑ | face found |", "|---|---|---|---|---|---|---|"]
        for r in report["ablation"]:
            out.append(f"| {r['steps']} | {fmt(r['guidance_scale'])} | {r['conditions']} | {fmt(r.get('fid'))} | "
                       f"{fmt(r.get('lmse'))} | {fmt(r.get('csim'))} | {fmt(r.get('face_found_rate'))} |")
        out.append("")
    if report["notes"]:
        out += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(out)
