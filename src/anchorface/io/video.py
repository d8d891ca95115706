"""Video and image I/O with PyAV and Pillow: streaming decode, H.264 encode with the driving clip's audio,
robust image loading, and atomic outputs.

Frames handed between modules are `numpy uint8 [H, W, 3]` RGB (docs/design.md). Decoding is streaming: a
10-minute clip never sits in memory. Every output is written to a temporary file beside the target and renamed
into place only when it is complete (`atomic_output`), so a failed run never leaves a half-written file.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from anchorface.errors import ImageError, VideoError

_AV_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError)
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")  # what `list_videos` takes from a folder
REMUX_AUDIO_CODECS = ("aac", "mp3")  # copied into the output as they are; anything else is transcoded to AAC
AUDIO_BITRATE = 192_000  # bits/s when audio has to be transcoded to AAC


# ----------------------------------------------------------------------------------------------- atomic outputs
@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, so formats are still picked by extension); rename it
    onto `path` when the block succeeds, delete it when the block raises. Works for files and directories
    (an existing directory at `path` is replaced only once the new one is complete). Parent folders are created."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VideoError(f"cannot write {path}: cannot create its folder ({_one_line(e)})") from None
    tmp = path.with_name(f".{path.stem}.tmp-{secrets.token_hex(4)}{path.suffix}")
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if not tmp.exists():
        raise FileNotFoundError(f"atomic_output: nothing was written to the temporary path for {path}")
    try:
        _rename_into_place(tmp, path)
    except OSError as e:
        _remove(tmp)
        what = "it is a directory" if path.is_dir() and not tmp.is_dir() else _one_line(e)
        raise VideoError(f"cannot write {path}: {what}") from None


def _rename_into_place(tmp: Path, path: Path) -> None:
    """os.replace, except that a directory replaces an existing directory too (the old one is moved aside and
    put back if the new one cannot take its place)."""
    if not (tmp.is_dir() and path.is_dir()):
        os.replace(tmp, path)
        return
    old = path.with_name(f".{path.name}.old-{secrets.token_hex(4)}")
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except OSError:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------- images
def load_image(path: str | Path) -> np.ndarray:
    """Read any Pillow-readable image as `uint8 [H, W, 3]` RGB, as it is meant to be displayed: EXIF orientation
    applied, transparency composited onto white, grayscale / palette / CMYK / 16-bit converted."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except FileNotFoundError:
        raise ImageError(f"cannot read image {path}: file not found") from None
    except IsADirectoryError:
        raise ImageError(f"cannot read image {path}: is a directory") from None
    except UnidentifiedImageError:
        raise ImageError(f"cannot read image {path}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image {path}: {_one_line(e)}") from None


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grayscale: scale, do not clip
        g = (np.asarray(im, dtype=np.float64) / 257.0).round().clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=-1))
    has_alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def save_image(path: str | Path, img: np.ndarray, quality: int = 95) -> None:
    """Write a `uint8 [H, W, 3]` RGB (or `[H, W]` gray) image atomically; the format follows the extension."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ValueError(f"save_image expects uint8 [H, W, 3] or [H, W], got {img.dtype} {img.shape}")
    path = Path(path)
    try:
        with atomic_output(path) as tmp:
            kwargs = {"quality": quality} if path.suffix.lower() in (".jpg", ".jpeg", ".webp") else {}
            Image.fromarray(img).save(tmp, **kwargs)
    except VideoError as e:  # from atomic_output: the folder or the final rename
        raise ImageError(str(e).replace("cannot write", "cannot write image", 1)) from None
    except (OSError, ValueError, KeyError) as e:
        raise ImageError(f"cannot write image {path}: {_one_line(e)}") from None


# ----------------------------------------------------------------------------------------------------- videos
@dataclass(frozen=True)
class VideoInfo:
    width: int  # as displayed, i.e. after rotation
    height: int
    fps: Fraction
    num_frames: int
    duration: float  # seconds
    has_audio: bool
    rotation: int  # counter-clockwise degrees (0, 90, 180, 270) applied to decoded frames for display


def _open_input(path: str | Path):
    """Open a media file and its first video stream; VideoError for anything a user can get wrong."""
    path = Path(path)
    if not path.exists():
        raise VideoError(f"cannot read video {path}: file not found")
    if path.is_dir():
        raise VideoError(f"cannot read video {path}: is a directory")
    if path.stat().st_size == 0:
        raise VideoError(f"cannot read video {path}: the file is empty")
    try:
        container = av.open(str(path), mode="r")
    except _AV_ERRORS as e:
        raise VideoError(f"cannot read video {path}: not a video or corrupt ({_one_line(e)})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"cannot read video {path}: it has no video stream")
    return container, container.streams.video[0]


def _rotation(frame: av.VideoFrame, stream) -> int:
    """Counter-clockwise display rotation of a decoded frame, in {0, 90, 180, 270}: the display matrix side data,
    else the legacy `rotate` tag (clockwise degrees)."""
    deg = frame.rotation
    if not deg:
        try:
            deg = -int(float(stream.metadata.get("rotate", 0)))
        except ValueError:
            deg = 0
    return int(round(deg / 90.0)) % 4 * 90


def _display(frame: av.VideoFrame, stream) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    k = _rotation(frame, stream) // 90
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def probe_video(path: str | Path) -> VideoInfo:
    """Size (after rotation), exact frame rate, frame count, duration, audio presence and rotation of a video.
    Decodes only the first frame (and demuxes the file once when the container does not store a frame count)."""
    container, stream = _open_input(path)
    try:
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not fps or fps <= 0:
            raise VideoError(f"cannot read video {path}: the video stream has no frame rate")
        fps = Fraction(fps)
        has_audio = bool(container.streams.audio)
        try:
            first = next(container.decode(stream), None)
        except _AV_ERRORS as e:
            raise VideoError(f"cannot read video {path}: corrupt video stream ({_one_line(e)})") from None
        if first is None:
            raise VideoError(f"cannot read video {path}: it has no frames (empty or truncated file?)")
        rotation = _rotation(first, stream)
        num_frames = stream.frames or _count_packets(path, stream.index)
        if num_frames <= 0:
            raise VideoError(f"cannot read video {path}: it has no frames (empty or truncated file?)")
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        else:
            duration = float(num_frames / fps)
        w, h = first.width, first.height
        if rotation in (90, 270):
            w, h = h, w
        return VideoInfo(w, h, fps, int(num_frames), duration, has_audio, rotation)
    finally:
        container.close()


def _count_packets(path: str | Path, index: int) -> int:
    """Count the video packets by demuxing only (no decoding), for containers without a frame count."""
    try:
        with av.open(str(path)) as c:
            return sum(1 for p in c.demux(c.streams[index]) if p.size > 0)
    except _AV_ERRORS as e:
        raise VideoError(f"cannot read video {path}: corrupt file ({_one_line(e)})") from None


def iter_frames(path: str | Path, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Decode a video frame by frame (streaming): `uint8 [H, W, 3]` RGB with the rotation metadata applied, at
    most `max_frames` frames. The file is opened here, so a missing or corrupt file raises VideoError at the
    call; a decoding failure midway raises VideoError from the iterator."""
    container, stream = _open_input(path)
    stream.thread_type = "AUTO"
    return _decoded(container, stream, path, max_frames)


def expected_frames(stream) -> int | None:
    """The frame count a video stream's container declares (its index / header), or estimates from the stream's
    duration and frame rate; None when it says neither."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if stream.duration and stream.time_base and rate:
        return int(round(float(stream.duration * stream.time_base * rate)))
    return None


def ended_early(decoded: int, expected: int | None) -> bool:
    """Whether a decode that stopped after `decoded` frames fell short of the `expected` count: by more than 2
    frames and 2 % (edit lists may legitimately hide a few frames). A file whose index sits at the front and whose
    data was cut (an interrupted download or copy) decodes without an error but ends early."""
    return expected is not None and expected - decoded > max(2, 0.02 * expected)


def _decoded(container, stream, path, max_frames: int | None) -> Iterator[np.ndarray]:
    i = 0
    expected = expected_frames(stream)
    try:
        frames = container.decode(stream)
        while max_frames is None or i < max_frames:
            try:
                frame = next(frames, None)
            except _AV_ERRORS as e:
                raise VideoError(f"cannot decode {path} at frame {i}: {_one_line(e)}") from None
            if frame is None:
                break
            yield _display(frame, stream)
            i += 1
        if i == 0 and max_frames != 0:
            raise VideoError(f"cannot read video {path}: it has no frames (empty or truncated file?)")
        if (max_frames is None or i < max_frames) and ended_early(i, expected):
            raise VideoError(f"cannot read video {path}: decoding stopped at frame {i} of the {expected} the file "
                             "declares (truncated or corrupt file?)")
    finally:
        container.close()


def list_videos(items, what: str = "video") -> list[Path]:
    """Video files: each of `items` (one path or several) is a folder, giving its files with a `VIDEO_SUFFIXES`
    suffix sorted by name, or a file, taken as it is. VideoError, naming `what`, when an item does not exist or
    nothing is found."""
    items = [items] if isinstance(items, (str, Path)) else list(items)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES)
        elif p.exists():
            out.append(p)
        else:
            raise VideoError(f"{what} or folder not found: {p}")
    if not out:
        raise VideoError(f"no {what}s ({', '.join(VIDEO_SUFFIXES)}) found in {' '.join(map(str, items))}")
    return out


def _as_fraction(fps) -> Fraction:
    fps = Fraction(fps).limit_denominator(1_000_000) if isinstance(fps, float) else Fraction(fps)
    if fps <= 0:
        raise VideoError(f"frame rate must be positive, got {fps}")
    return fps


class VideoWriter:
    """Write `uint8 [H, W, 3]` RGB frames as an H.264 (libx264, yuv420p, +faststart) video that plays everywhere.

    - The frame rate is kept exactly: `fps` (a Fraction, e.g. `VideoInfo.fps`) is the codec time base's inverse
      and frame i has pts i.
    - yuv420p needs even sizes: an odd width/height is padded by one row/column replicating the edge pixels
      (nothing is lost; the file is 1 px larger than the frames).
    - `audio_from`: a media file whose first audio stream is copied in (AAC/MP3 packets remuxed without
      re-encoding, other codecs transcoded to AAC), aligned to that file's video start and trimmed to this
      video's duration. A file without audio simply gives a silent video.
    - Atomic: frames go to a temporary file beside `path` that is renamed into place on a successful close.
      If the `with` block raises (or nothing was written) no output and no temporary file remain.
    """

    def __init__(self, path: str | Path, fps, audio_from: str | Path | None = None, crf: int = 18,
                 preset: str = "medium"):
        self.path = Path(path)
        self.fps = _as_fraction(fps)
        self.audio_from = Path(audio_from) if audio_from is not None else None
        self.crf = crf
        self.preset = preset
        self.num_frames = 0
        self._stack: ExitStack | None = None
        self._out = self._video = None
        self._size: tuple[int, int] | None = None  # (h, w) of the frames given
        self._audio_in = self._audio_out = self._audio_iter = None
        self._pending = None  # the next audio packet, not yet written
        self._audio_shift = 0.0
        self._transcoder = None

    # -- context management
    def __enter__(self) -> "VideoWriter":
        if self.audio_from is not None and not self.audio_from.is_file():
            raise VideoError(f"cannot read audio from {self.audio_from}: file not found")
        self._stack = ExitStack()
        try:
            tmp = self._stack.enter_context(atomic_output(self.path))
            opts = {"movflags": "+faststart"} if self.path.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
            self._out = av.open(str(tmp), mode="w", options=opts)
            self._stack.callback(_close_quietly, self._out)
        except BaseException as e:
            self._stack.__exit__(type(e), e, e.__traceback__)
            if isinstance(e, _AV_ERRORS):
                raise VideoError(f"cannot write video {self.path}: {_one_line(e)}") from None
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self._finish()
            except BaseException as e:
                self._stack.__exit__(type(e), e, e.__traceback__)
                if isinstance(e, _AV_ERRORS):
                    raise VideoError(f"cannot write video {self.path}: {_one_line(e)}") from None
                raise
            try:
                self._stack.__exit__(None, None, None)  # closes the file and renames it into place
            except _AV_ERRORS as e:  # (atomic_output raises VideoError itself)
                raise VideoError(f"cannot write video {self.path}: {_one_line(e)}") from None
            return False
        self._stack.__exit__(exc_type, exc, tb)  # removes the temporary file, re-raises nothing itself
        return False

    # -- frames
    def write(self, frame: np.ndarray) -> None:
        if self._out is None:
            raise RuntimeError("VideoWriter must be used as a context manager: `with VideoWriter(...) as w:`")
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise VideoError(f"video frames must be uint8 [H, W, 3] RGB, got {frame.dtype} {frame.shape}")
        if self._size is not None and frame.shape[:2] != self._size:
            raise VideoError(f"frame {self.num_frames} is {frame.shape[1]}x{frame.shape[0]}, but the video is "
                             f"{self._size[1]}x{self._size[0]}")
        try:
            if self._size is None:
                self._start_video(*frame.shape[:2])
            h, w = self._size
            if h % 2 or w % 2:
                frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = self.num_frames
            self._out.mux(self._video.encode(vf))
            self.num_frames += 1
            self._write_audio_until(float(self.num_frames / self.fps))
        except _AV_ERRORS as e:
            raise VideoError(f"cannot write video {self.path}: {_one_line(e)}") from None

    def _start_video(self, h: int, w: int) -> None:
        self._size = (h, w)
        s = self._out.add_stream("libx264", rate=self.fps, options={"crf": str(self.crf), "preset": self.preset})
        s.width, s.height = w + w % 2, h + h % 2
        s.pix_fmt = "yuv420p"
        s.codec_context.time_base = 1 / self.fps
        s.time_base = 1 / self.fps
        self._video = s
        if self.audio_from is not None:  # after the video stream, so that video is stream 0
            self._open_audio()

    def _finish(self) -> None:
        if self.num_frames == 0:
            raise VideoError(f"cannot write video {self.path}: no frames were written")
        self._out.mux(self._video.encode(None))
        duration = float(self.num_frames / self.fps)
        self._write_audio_until(duration)
        if self._transcoder is not None:  # the encoder's last packets, trimmed like the rest
            self._out.mux([p for p in self._audio_out.encode(None) if float(p.pts * p.time_base) < duration])
        self._out.close()  # writes the trailer (and moves the index to the front: +faststart)

    # -- audio
    def _open_audio(self) -> None:
        src = self.audio_from
        try:
            self._audio_in = av.open(str(src))
        except _AV_ERRORS as e:
            raise VideoError(f"cannot read audio from {src}: not a media file or corrupt ({_one_line(e)})") from None
        self._stack.callback(_close_quietly, self._audio_in)
        if not self._audio_in.streams.audio:
            self._audio_in = None  # silent driving video: a silent output
            return
        a = self._audio_in.streams.audio[0]
        start = self._audio_in.streams.video[0].start_time if self._audio_in.streams.video else a.start_time
        tb = self._audio_in.streams.video[0].time_base if self._audio_in.streams.video else a.time_base
        self._audio_shift = float(start * tb) if start is not None and tb else 0.0
        name = a.codec_context.name
        try:
            if name in REMUX_AUDIO_CODECS:
                self._audio_out = self._out.add_stream_from_template(a)
                self._audio_iter = (p for p in self._audio_in.demux(a)
                                    if p.pts is not None and p.dts is not None and p.size > 0)
                return
        except ValueError:  # the output format cannot hold this codec: transcode
            pass
        layout = "mono" if a.channels == 1 else "stereo"
        self._audio_out = self._out.add_stream("aac", rate=a.rate, layout=layout)
        self._audio_out.bit_rate = AUDIO_BITRATE
        self._transcoder = av.AudioResampler(format=self._audio_out.format.name, layout=layout, rate=a.rate)
        self._audio_iter = self._transcoded_audio(a)

    def _transcoded_audio(self, a) -> Iterator[av.Packet]:
        """Decode, resample, re-encode the source audio from the video start on; yields AAC packets."""
        frames = (f for f in self._audio_in.decode(a)
                  if f.pts is None or float(f.pts * f.time_base) >= self._audio_shift)
        pts = 0
        for frame in itertools.chain(frames, [None]):  # None flushes the resampler
            for rf in self._transcoder.resample(frame):
                rf.pts, rf.time_base = pts, Fraction(1, a.rate)
                pts += rf.samples
                yield from self._audio_out.encode(rf)

    def _write_audio_until(self, t_end: float) -> None:
        """Mux the source audio up to output time `t_end` (seconds): interleaves audio with video as it is
        written, and trims the audio to the video's duration at the end."""
        if self._audio_iter is None:
            return
        while True:
            if self._pending is None:
                self._pending = next(self._audio_iter, None)
                if self._pending is None:
                    self._audio_iter = None
                    return
            p = self._pending
            shift = 0.0 if self._transcoder is not None else self._audio_shift
            if float(p.pts * p.time_base) - shift >= t_end:
                return
            if shift:
                d = round(shift / p.time_base)
                p.pts, p.dts = p.pts - d, p.dts - d
            p.stream = self._audio_out
            self._out.mux(p)
            self._pending = None


def _close_quietly(container) -> None:
    """Cleanup after a failure (or a second close): the error that matters has already been raised."""
    try:
        container.close()
    except _AV_ERRORS:
        pass


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
