"""Video I/O with PyAV: streaming decode, H.264 encode with the driving clip's audio.

Frames handed between modules are `numpy uint8 [H, W, 3]` RGB (docs/design.md). Decoding is streaming: a
10-minute clip never sits in memory. Outputs are atomic (`io.atomic`): a failed run never leaves a half-written
file. Every PyAV/OSError failure is translated into a one-line VideoError by `av_errors`.
"""

from __future__ import annotations

import functools
import itertools
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from anchorface.errors import VideoError, one_line
from anchorface.io.atomic import atomic_output

_AV_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError)
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")  # what `list_videos` takes from a folder
REMUX_AUDIO_CODECS = ("aac", "mp3")  # copied into the output as they are; anything else is transcoded to AAC
AUDIO_BITRATE = 192_000  # bits/s when audio has to be transcoded to AAC


@contextmanager
def av_errors(message: str, what: str = "") -> Iterator[None]:
    """PyAV's and the OS's errors in the block as one line: `VideoError("{message}: {what} (reason)")`, or
    `"{message}: reason"` without `what`. Every read and write of a media file goes through it."""
    try:
        yield
    except _AV_ERRORS as e:
        reason = f"{what} ({one_line(e)})" if what else one_line(e)
        raise VideoError(f"{message}: {reason}") from None


# ----------------------------------------------------------------------------------------------------- reading
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
    with av_errors(f"cannot read video {path}", "not a video or corrupt"):
        container = av.open(str(path), mode="r")
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
        with av_errors(f"cannot read video {path}", "corrupt video stream"):
            first = next(container.decode(stream), None)
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
    with av_errors(f"cannot read video {path}", "corrupt file"), av.open(str(path)) as c:
        return sum(1 for p in c.demux(c.streams[index]) if p.size > 0)


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
            with av_errors(f"cannot decode {path} at frame {i}"):
                frame = next(frames, None)
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


# ----------------------------------------------------------------------------------------------------- writing
def _as_fraction(fps) -> Fraction:
    fps = Fraction(fps).limit_denominator(1_000_000) if isinstance(fps, float) else Fraction(fps)
    if fps <= 0:
        raise VideoError(f"frame rate must be positive, got {fps}")
    return fps


@functools.lru_cache(maxsize=1)
def x264_options() -> dict[str, str]:
    """libx264 options that make the same frames give the same video on every run.

    x264's AVX-512 macroblock-tree code reads uninitialised memory when the width is not a multiple of 128 px
    (8 macroblocks): the bytes, and the decoded pixels (by up to ~30 at 64x64), then depend on what the heap
    held. Where x264 would use AVX-512 (F, CD, BW, DQ and VL), its assembly is capped at AVX2, which is exact:
    widths that were deterministic encode to the same bytes as before."""
    if sys.platform.startswith(("linux", "win")) and _cpu_features().get("AVX512_SKX"):
        return {"x264-params": "asm=SSE2Fast,AVX2"}
    return {}


def _cpu_features() -> dict:
    """The CPU features numpy detected at import (its private table; {} where numpy has none)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__  # numpy >= 2
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return {}
    return dict(__cpu_features__)


class AudioTrack:
    """The first audio stream of `source`, copied into the output container `out` as the video is written:
    AAC/MP3 packets remuxed without re-encoding (other codecs transcoded to AAC), aligned to `source`'s video
    start and trimmed to the output's duration. `AudioTrack.open` gives None for a file without audio."""

    def __init__(self, source_container, out):
        self._in, self._out = source_container, out
        a = source_container.streams.audio[0]
        video = source_container.streams.video[0] if source_container.streams.video else None
        start = video.start_time if video else a.start_time
        tb = video.time_base if video else a.time_base
        self._shift = float(start * tb) if start is not None and tb else 0.0  # source time of output time 0
        self._pending = None  # the next packet, not yet written
        self._transcoder = None
        try:
            if a.codec_context.name in REMUX_AUDIO_CODECS:
                self._stream = out.add_stream_from_template(a)
                self._packets = (p for p in source_container.demux(a)
                                 if p.pts is not None and p.dts is not None and p.size > 0)
                return
        except ValueError:  # the output format cannot hold this codec: transcode
            pass
        layout = "mono" if a.channels == 1 else "stereo"
        self._stream = out.add_stream("aac", rate=a.rate, layout=layout)
        self._stream.bit_rate = AUDIO_BITRATE
        self._transcoder = av.AudioResampler(format=self._stream.format.name, layout=layout, rate=a.rate)
        self._packets = self._transcoded(a)

    @classmethod
    def open(cls, source: Path, out, stack: ExitStack) -> "AudioTrack | None":
        """Open `source` (closed by `stack`); None when it has no audio (a silent output)."""
        with av_errors(f"cannot read audio from {source}", "not a media file or corrupt"):
            container = av.open(str(source))
        stack.callback(_close_quietly, container)
        return cls(container, out) if container.streams.audio else None

    def _transcoded(self, a) -> Iterator[av.Packet]:
        """Decode, resample, re-encode the source audio from the video start on; yields AAC packets."""
        frames = (f for f in self._in.decode(a) if f.pts is None or float(f.pts * f.time_base) >= self._shift)
        pts = 0
        for frame in itertools.chain(frames, [None]):  # None flushes the resampler
            for rf in self._transcoder.resample(frame):
                rf.pts, rf.time_base = pts, Fraction(1, a.rate)
                pts += rf.samples
                yield from self._stream.encode(rf)

    def write_until(self, t_end: float) -> None:
        """Mux the audio up to output time `t_end` (seconds): interleaves audio with the video as it is written."""
        while self._packets is not None:
            if self._pending is None:
                self._pending = next(self._packets, None)
                if self._pending is None:
                    self._packets = None
                    return
            p = self._pending
            shift = 0.0 if self._transcoder is not None else self._shift
            if float(p.pts * p.time_base) - shift >= t_end:
                return
            if shift:
                d = round(shift / p.time_base)
                p.pts, p.dts = p.pts - d, p.dts - d
            p.stream = self._stream
            self._out.mux(p)
            self._pending = None

    def finish(self, duration: float) -> None:
        """The audio up to `duration` (the video's), then the encoder's last packets, trimmed like the rest."""
        self.write_until(duration)
        if self._transcoder is not None:
            self._out.mux([p for p in self._stream.encode(None) if float(p.pts * p.time_base) < duration])


class VideoWriter:
    """Write `uint8 [H, W, 3]` RGB frames as an H.264 (libx264, yuv420p, +faststart) video that plays everywhere.

    - The frame rate is kept exactly: `fps` (a Fraction, e.g. `VideoInfo.fps`) is the codec time base's inverse
      and frame i has pts i.
    - yuv420p needs even sizes: an odd width/height is padded by one row/column replicating the edge pixels
      (nothing is lost; the file is 1 px larger than the frames).
    - `audio_from`: a media file whose first audio stream is copied in (`AudioTrack`). A file without audio
      simply gives a silent video.
    - Deterministic: the same frames give the same file (`x264_options`).
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
        self._audio: AudioTrack | None = None

    def _errors(self):
        return av_errors(f"cannot write video {self.path}")

    def _guarded(self, step) -> None:
        """`step()` with PyAV errors as one line; on any failure the temporary output is removed first."""
        try:
            with self._errors():
                step()
        except BaseException as e:
            self._stack.__exit__(type(e), e, e.__traceback__)
            raise

    # -- context management
    def __enter__(self) -> "VideoWriter":
        if self.audio_from is not None and not self.audio_from.is_file():
            raise VideoError(f"cannot read audio from {self.audio_from}: file not found")
        self._stack = ExitStack()
        self._guarded(self._open)
        return self

    def _open(self) -> None:
        tmp = self._stack.enter_context(atomic_output(self.path, VideoError, "video ", translate=False))
        opts = {"movflags": "+faststart"} if self.path.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
        self._out = av.open(str(tmp), mode="w", options=opts)
        self._stack.callback(_close_quietly, self._out)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._stack.__exit__(exc_type, exc, tb)  # removes the temporary file, re-raises nothing itself
            return False
        self._guarded(self._finish)
        with self._errors():
            self._stack.__exit__(None, None, None)  # closes the file and renames it into place
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
        with self._errors():
            if self._size is None:
                self._start_video(*frame.shape[:2])
            h, w = self._size
            if h % 2 or w % 2:
                frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = self.num_frames
            self._out.mux(self._video.encode(vf))
            self.num_frames += 1
            if self._audio is not None:
                self._audio.write_until(float(self.num_frames / self.fps))

    def _start_video(self, h: int, w: int) -> None:
        self._size = (h, w)
        options = {"crf": str(self.crf), "preset": self.preset} | x264_options()
        s = self._out.add_stream("libx264", rate=self.fps, options=options)
        s.width, s.height = w + w % 2, h + h % 2
        s.pix_fmt = "yuv420p"
        s.codec_context.time_base = 1 / self.fps
        s.time_base = 1 / self.fps
        self._video = s
        if self.audio_from is not None:  # after the video stream, so that video is stream 0
            self._audio = AudioTrack.open(self.audio_from, self._out, self._stack)

    def _finish(self) -> None:
        if self.num_frames == 0:
            raise VideoError(f"cannot write video {self.path}: no frames were written")
        self._out.mux(self._video.encode(None))
        if self._audio is not None:
            self._audio.finish(float(self.num_frames / self.fps))
        self._out.close()  # writes the trailer (and moves the index to the front: +faststart)


def _close_quietly(container) -> None:
    """Cleanup after a failure (or a second close): the error that matters has already been raised."""
    try:
        container.close()
    except _AV_ERRORS:
        pass
