"""One raw video -> its curated segments (§3.3, steps 2-4): the unit of work of `curation.runner`.

1. Selection: the resolution is read from the container, without decoding; videos whose shorter side is below
   `min_height` (720p by default; the shorter side, so portrait 720x1280 counts as 720p) are rejected, unreadable
   files too, each with its reason.
2. One streaming decoding pass (memory flat in the video's length): every frame goes to the shot detector
   (`curation.scenes`), to MediaPipe's face detector (on a copy shrunk to `detect_size` px) and to the tracker
   (`curation.tracks`). Whenever a track starts, its first frame is checked to be a human face (BlazeFace's
   confidence on the paper-framed crop, as `faces.detect.source_crop_box` does for photos: it also fires on animal
   faces) and embedded; every `sample_seconds` after that the tracked face is scored (`curation.filters`).
3. Each closed track becomes a segment, accepted or rejected with its reason: not a human face, shorter than
   `min_seconds`, identity or CLIP distance above the threshold, quality below `min_quality`.
4. With `write_clips`, a second decoding pass writes each accepted segment as its own H.264 file
   (full frames, no audio) into `OUT_DIR/clips/`, named `<video key>-<segment>.mp4`: what `anchorface prepare` takes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from anchorface.errors import AnchorfaceError, VideoError

CLIPS_DIR = "clips"


@dataclass(frozen=True)
class CurateOptions:
    """Thresholds and settings of a curation run (§3.3; defaults are the paper's where it gives them)."""

    min_height: int = 720  # px, shorter side of the video ("720p")
    min_face: float = 400.0  # px, face box width
    min_seconds: float = 2.0
    max_identity_distance: float = 0.6  # dlib's same-person threshold (the paper gives no value)
    max_clip_distance: float = 0.25  # 1 - cos, only with `clip`
    min_quality: float = 0.0  # laplacian_sharpness; 0 keeps everything
    clip: str | None = None  # CLIP model directory
    multiple: str = "largest"  # several faces in a frame: follow the largest, or "reject"
    max_gap: int = 2  # frames a face may be missing inside a track (interpolated)
    jump: float = 0.3  # box-centre step, in box widths, that ends a track
    scale_jump: float = 1.3  # box-width ratio between detections that ends a track
    sample_seconds: float = 0.5  # scoring period inside a track (the first frame is always scored)
    detect_size: int = 640  # px, longer side of the copy MediaPipe sees
    shot_threshold: float = 27.0  # PySceneDetect ContentDetector threshold
    human_face_score: float = 0.86  # faces.detect.FACE_SCORE_ON_CROP
    write_clips: bool = False

    def __post_init__(self):  # one type per field, so settings from the CLI and from Python compare equal
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", "float") and isinstance(v, (int, float)) and not isinstance(v, bool):
                object.__setattr__(self, f.name, int(v) if f.type == "int" else float(v))

    def params(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> None:
        from anchorface.curation.tracks import MULTIPLE

        if self.multiple not in MULTIPLE:
            raise AnchorfaceError(f"--multiple must be one of {', '.join(MULTIPLE)}, got {self.multiple!r}")
        for name in ("min_face", "min_seconds", "sample_seconds", "jump"):
            if not getattr(self, name) > 0:
                raise AnchorfaceError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.min_height < 0 or self.detect_size < 64 or self.max_gap < 0 or self.scale_jump <= 1:
            raise AnchorfaceError("invalid settings: need --min-height >= 0, detect_size >= 64, max_gap >= 0, "
                                  "scale_jump > 1")
        if self.clip is not None and not Path(self.clip).exists():
            raise AnchorfaceError(f"--clip: CLIP model directory not found: {self.clip}")


# ---------------------------------------------------------------------------------------------- per-process models
_MODELS: dict = {}


def _models(opts: CurateOptions):
    """MediaPipe's detector, the identity embedding and CLIP, loaded once per process (a Ray worker keeps them
    across the videos it is given)."""
    key = opts.clip
    if key not in _MODELS:
        from anchorface.curation.filters import ClipScorer
        from anchorface.faces.detect import FaceDetector
        from anchorface.faces.identity import IdentityEmbedder

        _MODELS.clear()
        _MODELS[key] = (FaceDetector(exhaustive=False), IdentityEmbedder(),
                        ClipScorer(opts.clip) if opts.clip else None)
    return _MODELS[key]


# ------------------------------------------------------------------------------------------------------ probing
def probe_container(path: str | Path) -> dict:
    """Size (as displayed), frame rate, frame count and duration from the container and codec headers, without
    decoding a frame. VideoError when the file cannot be opened as a video."""
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"not a file: {path}")
    if path.stat().st_size == 0:
        raise VideoError("the file is empty")
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoError("no video stream")
            s = c.streams.video[0]
            w, h = int(s.codec_context.width or 0), int(s.codec_context.height or 0)
            fps = s.average_rate or s.guessed_rate or s.base_rate
            if not w or not h or not fps:
                raise VideoError("the video stream has no size or frame rate")
            try:
                rot = int(float(s.metadata.get("rotate", 0))) % 180
            except ValueError:
                rot = 0
            if rot == 90:
                w, h = h, w
            duration = float(s.duration * s.time_base) if s.duration and s.time_base else \
                (c.duration / av.time_base if c.duration else None)
            fps = Fraction(fps)
            frames = int(s.frames) or (int(round(duration * fps)) if duration else 0)
            return {"width": w, "height": h, "fps": float(fps), "fps_exact": f"{fps.numerator}/{fps.denominator}",
                    "num_frames_header": frames, "duration_header": round(duration, 6) if duration else None}
    except VideoError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as e:
        msg = (str(e).splitlines() or [type(e).__name__])[0].replace(f": '{path}'", "")
        raise VideoError(f"not a video or corrupt ({msg})") from None


# ----------------------------------------------------------------------------------------------------- one video
def _shrunk(frame: np.ndarray, scale: float) -> np.ndarray:
    import cv2

    if scale >= 1:
        return frame
    h, w = frame.shape[:2]
    return cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def curate_video(path: str | Path, key: str, out_dir: str | Path, opts: CurateOptions) -> dict:
    """Curate one video (module doc). Returns its record: the video's facts, `status` ("curated" with at least one
    accepted segment, else "rejected"), `reason` and `segments` (accepted and rejected, in time order).
    Raises nothing for a bad video: its problem is the rejection reason."""
    from anchorface.curation.filters import SegmentScorer
    from anchorface.curation.scenes import ShotDetector
    from anchorface.curation.tracks import Tracker
    from anchorface.faces.detect import Box
    from anchorface.io.video import iter_frames

    rec: dict = {"key": key, "status": "rejected", "reason": None, "segments": []}
    try:
        info = probe_container(path)
    except VideoError as e:
        rec["reason"] = f"unreadable: {e}"
        return rec
    rec.update(info)
    short = min(info["width"], info["height"])
    if short < opts.min_height:
        rec["reason"] = f"resolution {info['width']}x{info['height']} below {opts.min_height}p (--min-height)"
        return rec

    detector, identity, clip = _models(opts)
    fps = info["fps"]
    shots = ShotDetector(fps, opts.shot_threshold)
    tracker = Tracker(opts.min_face, opts.multiple, opts.max_gap, opts.jump, opts.scale_jump)
    scale = min(1.0, opts.detect_size / max(info["width"], info["height"]))
    stride = max(1, int(round(opts.sample_seconds * fps)))
    tracks: list = []
    scored: dict[int, dict] = {}  # track start -> scores
    state: dict = {}  # the open track: scorer, next sampled frame, human-face score
    n = several = 0

    def close(closed):
        for t in closed:
            scored[t.start] = dict(state.pop("scorer").result(), human_face_score=state.pop("face_score"))
            tracks.append(t)
            state.clear()

    try:
        for i, frame in enumerate(iter_frames(path)):
            n = i + 1
            cut = shots.feed(frame)
            boxes = [b.as_array() / scale for b in detector.detect(_shrunk(frame, scale))]
            several += len(tracker.significant_faces(boxes)) > 1
            close(tracker.update(i, boxes, cut))
            box = tracker.current_box
            if tracker.started:
                state["scorer"] = SegmentScorer(identity, clip)
                state["face_score"] = round(detector.crop_score(frame, Box.from_array(box)), 4)
                state["scorer"].add(frame, box)
                state["next"] = i + stride
            elif box is not None and tracker.current_frame == i and i >= state["next"]:
                state["scorer"].add(frame, box)
                state["next"] = i + stride
        close(tracker.finish())
    except VideoError as e:
        rec.update(status="rejected", reason=f"undecodable: {e}", segments=[])
        return rec
    rec["num_frames"] = n
    rec["frames_with_several_faces"] = several
    rec["duration"] = round(n / fps, 6)
    if n == 0:
        rec["reason"] = "no frames"
        return rec

    for k, t in enumerate(sorted(tracks, key=lambda t: t.start)):
        s = scored[t.start]
        seconds = t.num_frames / fps
        reasons = []
        if s["human_face_score"] < opts.human_face_score:
            reasons.append(f"not a human face (BlazeFace score {s['human_face_score']:.2f} on its crop "
                           f"< {opts.human_face_score})")
        if seconds < opts.min_seconds:
            reasons.append(f"shorter than {opts.min_seconds:g} s ({seconds:.2f} s; ended by {t.end_reason})")
        if s["identity_max_distance"] > opts.max_identity_distance:
            reasons.append(f"identity distance {s['identity_max_distance']:.3f} > {opts.max_identity_distance:g}")
        if clip is not None and s["clip_max_distance"] > opts.max_clip_distance:
            reasons.append(f"CLIP distance {s['clip_max_distance']:.3f} > {opts.max_clip_distance:g}")
        q = s.get("laplacian_sharpness")
        if opts.min_quality > 0 and (q is None or q < opts.min_quality):
            reasons.append(f"laplacian sharpness {q} < {opts.min_quality:g}")
        w = t.boxes[:, 2] - t.boxes[:, 0]
        seg = {
            "id": f"{key}-{k:03d}", "start_frame": t.start, "end_frame": t.end, "num_frames": t.num_frames,
            "start_time": round(t.start / fps, 6), "end_time": round(t.end / fps, 6), "duration": round(seconds, 6),
            "end_reason": t.end_reason, "accepted": not reasons, "reason": "; ".join(reasons) or None,
            "face_width_median": round(float(np.median(w)), 2),
            "scores": s, "detected_frames": int(t.detected.sum()),
            "boxes": np.round(t.boxes, 1).tolist(), "clip": None,
        }
        rec["segments"].append(seg)

    accepted = [s for s in rec["segments"] if s["accepted"]]
    if accepted:
        rec["status"] = "curated"
    elif not rec["segments"] and several and opts.multiple == "reject":
        rec["reason"] = f"several faces ({several} of {n} frames; --multiple reject)"
    elif not rec["segments"]:
        rec["reason"] = f"no face at least {opts.min_face:g} px wide"
    else:
        rec["reason"] = f"no segment passed ({len(rec['segments'])} rejected)"
    if accepted and opts.write_clips:
        write_clips(path, accepted, Path(out_dir) / CLIPS_DIR, info["fps_exact"])
    return rec


def write_clips(path, segments: list[dict], clips_dir: Path, fps: str) -> None:
    """Second streaming pass: each segment's frames [start_frame, end_frame) to `clips_dir/<id>.mp4` (atomic)."""
    from anchorface.io.video import VideoWriter, iter_frames

    todo = sorted(segments, key=lambda s: s["start_frame"])
    j, writer = 0, None
    try:
        for i, frame in enumerate(iter_frames(path)):
            if j >= len(todo):
                break
            seg = todo[j]
            if i == seg["start_frame"]:
                writer = VideoWriter(clips_dir / f"{seg['id']}.mp4", Fraction(fps), preset="veryfast").__enter__()
            if writer is not None:
                writer.write(frame)
                if i == seg["end_frame"] - 1:
                    w, writer = writer, None
                    w.__exit__(None, None, None)
                    seg["clip"] = f"{CLIPS_DIR}/{seg['id']}.mp4"
                    j += 1
        if j < len(todo):
            raise VideoError(f"the second decoding ended before segment {todo[j]['id']} was complete")
    except BaseException as e:
        if writer is not None:
            writer.__exit__(type(e), e, e.__traceback__)
        raise
