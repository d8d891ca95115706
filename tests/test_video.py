"""anchorface.io.video: real files written with PyAV / Pillow in tmp_path, plus the real driving clips when present."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from anchorface.errors import ImageError, VideoError
from anchorface.io.images import load_image, save_image
from anchorface.io import video
from anchorface.io.video import VideoInfo, VideoWriter, iter_frames, probe_video
from helpers import leftovers, one_line

FAST = "ultrafast"  # x264 preset for test outputs


# ------------------------------------------------------------------------------------------------ helpers
def frame_at(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth synthetic frame that moves with i (compresses well, so decoded ~= original)."""
    y, x = np.mgrid[0:h, 0:w]
    r = 128 + 100 * np.sin(2 * np.pi * (x + 2 * i) / w)
    g = 128 + 100 * np.cos(2 * np.pi * (y + i) / h)
    b = np.full_like(r, (40 + 10 * i) % 256)
    return np.stack([r, g, b], -1).astype(np.uint8)


def _sine_frames(stream, seconds: float, rate: int = 44100, freq: float = 440.0):
    n = int(seconds * rate)
    for start in range(0, n, 1024):
        t = np.arange(start, min(start + 1024, n)) / rate
        samples = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)[None]
        f = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        f.sample_rate, f.pts = rate, start
        yield f


def write_clip(path: Path, n: int, fps=Fraction(30000, 1001), h=48, w=64, audio: str | None = "aac",
               rotation: int | None = None, with_video=True) -> Path:
    """Write a test clip with PyAV directly (independent of VideoWriter): synthetic frames + a sine-wave track."""
    c = av.open(str(path), "w")
    if with_video:
        v = c.add_stream("libx264", rate=fps, options={"preset": FAST, "crf": "10"})
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        if rotation is not None:
            v.set_display_rotation(rotation)
    if audio:
        a = c.add_stream(audio, rate=44100, layout="mono")
    if with_video:
        for i in range(n):
            vf = av.VideoFrame.from_ndarray(frame_at(i, h, w), format="rgb24")
            vf.pts = i
            c.mux(v.encode(vf))
        c.mux(v.encode(None))
    if audio:
        for f in _sine_frames(a, float(n / fps) if with_video and n else 1.0):
            c.mux(a.encode(f))
        c.mux(a.encode(None))
    c.close()
    return path


# -------------------------------------------------------------------------------------------------- probe/iter
def test_probe_and_iter_synthetic(tmp_path):
    p = write_clip(tmp_path / "a.mp4", n=20)
    info = probe_video(p)
    assert isinstance(info, VideoInfo)
    assert (info.width, info.height, info.num_frames, info.rotation) == (64, 48, 20, 0)
    assert info.fps == Fraction(30000, 1001) and isinstance(info.fps, Fraction)
    assert info.has_audio
    assert abs(info.duration - 20 * 1001 / 30000) < 0.05

    it = iter_frames(p)
    assert inspect.isgenerator(it)
    frames = list(it)
    assert len(frames) == 20
    for i, f in enumerate(frames):
        assert f.dtype == np.uint8 and f.shape == (48, 64, 3)
        assert np.abs(f.astype(int) - frame_at(i)).mean() < 4  # this frame, not another one
    assert len(list(iter_frames(p, max_frames=7))) == 7


def test_rotation_metadata_is_applied(tmp_path):
    # a 64x48 clip whose display matrix says "rotate 90 degrees counter-clockwise"
    p = tmp_path / "rot.mp4"
    c = av.open(str(p), "w")
    v = c.add_stream("libx264", rate=25, options={"preset": FAST, "crf": "10"})
    v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
    v.set_display_rotation(90)
    img = np.full((48, 64, 3), 30, np.uint8)
    img[:12, :16] = 230  # bright block at the stored top-left corner
    for i in range(3):
        vf = av.VideoFrame.from_ndarray(img, format="rgb24")
        vf.pts = i
        c.mux(v.encode(vf))
    c.mux(v.encode(None))
    c.close()

    info = probe_video(p)
    assert (info.width, info.height, info.rotation) == (48, 64, 90)
    f = next(iter_frames(p))
    assert f.shape == (64, 48, 3)
    # rotated 90 deg counter-clockwise, the stored 12x16 top-left block is displayed as 16x12 at the bottom-left
    assert f[-16:, :12].mean() > 200 and f[:16, :12].mean() < 60 and f[-16:, -12:].mean() < 60


def test_legacy_rotate_tag_is_clockwise():
    from anchorface.io.video import _rotation

    class Frame:  # test double: a frame without display matrix side data
        rotation = 0

    class Stream:
        metadata = {"rotate": "90"}

    assert _rotation(Frame(), Stream()) == 270  # 90 clockwise = 270 counter-clockwise
    Frame.rotation = -90
    assert _rotation(Frame(), Stream()) == 270  # the display matrix wins
    Stream.metadata = {}
    Frame.rotation = 180
    assert _rotation(Frame(), Stream()) == 180


def test_probe_real_driving_clip(face_corpus):
    info = probe_video(face_corpus / "driving" / "d0.mp4")
    assert (info.width, info.height, info.fps, info.num_frames) == (512, 512, Fraction(25), 78)
    assert sum(1 for _ in iter_frames(face_corpus / "driving" / "d0.mp4")) == 78
    assert probe_video(face_corpus / "driving" / "d11.mp4").has_audio


# --------------------------------------------------------------------------------------------------- writing
def test_writer_roundtrip_exact_rate_and_faststart(tmp_path):
    out = tmp_path / "out.mp4"
    fps = Fraction(30000, 1001)
    with VideoWriter(out, fps, preset=FAST) as w:
        for i in range(15):
            w.write(frame_at(i))
    assert leftovers(tmp_path) == ["out.mp4"]
    info = probe_video(out)
    assert info.fps == fps and info.num_frames == 15 and not info.has_audio
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert (s.index, s.codec_context.name, s.codec_context.pix_fmt) == (0, "h264", "yuv420p")
    for i, f in enumerate(iter_frames(out)):
        assert np.abs(f.astype(int) - frame_at(i)).mean() < 4
    data = out.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # +faststart: the index comes first


def test_writer_odd_size_pads_by_edge_replication(tmp_path):
    out = tmp_path / "odd.mp4"
    frames = [frame_at(i, h=77, w=101) for i in range(5)]
    with VideoWriter(out, 25, preset=FAST) as w:
        for f in frames:
            w.write(f)
    info = probe_video(out)
    assert (info.width, info.height, info.num_frames) == (102, 78, 5)
    back = list(iter_frames(out))
    for f, g in zip(frames, back):
        assert g.shape == (78, 102, 3)
        assert np.abs(g[:77, :101].astype(int) - f).mean() < 4
        assert np.abs(g[:77, 101].astype(int) - f[:, 100]).mean() < 6  # replicated last column
        assert np.abs(g[77, :101].astype(int) - f[76]).mean() < 6  # replicated last row


def test_writer_copies_audio_and_trims_it(tmp_path):
    src = write_clip(tmp_path / "src.mp4", n=60, fps=Fraction(25))  # 2.4 s of video and audio
    out = tmp_path / "out.mp4"
    with VideoWriter(out, Fraction(25), audio_from=src, preset=FAST) as w:
        for i in range(25):  # 1 s: the audio must be cut to it
            w.write(frame_at(i))
    info = probe_video(out)
    assert info.has_audio and info.num_frames == 25
    with av.open(str(out)) as c, av.open(str(src)) as s:
        a = c.streams.audio[0]
        assert a.codec_context.name == "aac"
        packets = [bytes(p) for p in c.demux(a) if p.size]
        src_packets = [bytes(p) for p in s.demux(s.streams.audio[0]) if p.size]
        end = max(float((p.pts + p.duration) * p.time_base) for p in av.open(str(out)).demux(audio=0) if p.size)
    assert packets == src_packets[:len(packets)]  # remuxed bit-exactly, not re-encoded
    assert 1.0 - 0.05 <= end <= 1.0 + 1024 / 44100 + 1e-6  # trimmed to the video, within one AAC frame


def test_writer_transcodes_other_audio_codecs(tmp_path):
    src = write_clip(tmp_path / "src.mkv", n=30, fps=Fraction(25), audio="flac")
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 25, audio_from=src, preset=FAST) as w:
        for i in range(10):
            w.write(frame_at(i))
    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
        samples = sum(f.samples for f in c.decode(audio=0))
    assert 0.3 * 44100 <= samples <= (0.4 + 0.1) * 44100  # ~0.4 s (encoder priming/padding aside)


def test_writer_with_silent_audio_source(tmp_path):
    src = write_clip(tmp_path / "silent.mp4", n=5, audio=None)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 25, audio_from=src, preset=FAST) as w:
        w.write(frame_at(0))
    assert not probe_video(out).has_audio


def test_writer_from_real_driving_clip_keeps_audio_rate_and_count(tmp_path, face_corpus):
    clip = face_corpus / "driving" / "d11.mp4"
    src = probe_video(clip)
    out = tmp_path / "reenacted.mp4"
    n = 40
    with VideoWriter(out, src.fps, audio_from=clip, preset=FAST) as w:
        for f in iter_frames(clip, max_frames=n):
            w.write(np.ascontiguousarray(f[::4, ::4]))  # 128x128 keeps the test fast
    info = probe_video(out)
    assert info.has_audio
    assert info.fps == src.fps and info.num_frames == n
    assert (info.width, info.height) == (128, 128)
    assert abs(info.duration - n / float(src.fps)) < 0.1


# -------------------------------------------------------------------------------------------- streaming memory
_PEAK_RSS = textwrap.dedent("""
    import resource, sys
    from anchorface.io.video import iter_frames
    n = sum(1 for _ in iter_frames(sys.argv[1]))
    print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def _peak_rss_kb(path: Path) -> tuple[int, int]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(path)], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    return int(out[0]), int(out[1])


def test_decoding_is_streaming(tmp_path, face_corpus):
    # the same clip once and four times over; decoding either must take about the same peak memory
    frames = [np.ascontiguousarray(f[::2, ::2]) for f in iter_frames(face_corpus / "driving" / "d0.mp4")]  # 78 x 256x256
    one, four = tmp_path / "x1.mp4", tmp_path / "x4.mp4"
    with VideoWriter(one, 25, preset=FAST) as w:
        for f in frames:
            w.write(f)
    with VideoWriter(four, 25, preset=FAST) as w:
        for _ in range(4):
            for f in frames:
                w.write(f)
    n1, rss1 = _peak_rss_kb(one)
    n4, rss4 = _peak_rss_kb(four)
    assert (n1, n4) == (78, 312)
    # holding the 4x clip's frames would add 312 * 192 KiB = 58 MiB on top of a ~100 MiB process
    assert abs(rss4 - rss1) / rss1 < 0.2, (rss1, rss4)


# ------------------------------------------------------------------------------------------------- bad input
def test_bad_video_inputs(tmp_path):
    rnd = tmp_path / "random.mp4"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.mp4"
    empty.touch()
    audio_only = write_clip(tmp_path / "audio.m4a", n=0, with_video=False)
    no_frames = write_clip(tmp_path / "noframes.mkv", n=0)  # a video stream with zero frames
    good = write_clip(tmp_path / "good.mp4", n=10)
    truncated = tmp_path / "truncated.mp4"  # no +faststart: the index at the end is cut off
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])

    cases = {tmp_path / "missing.mp4": "file not found", rnd: "not a video or corrupt", empty: "empty",
             audio_only: "no video stream", no_frames: "no frames", truncated: "not a video or corrupt",
             tmp_path: "is a directory"}
    for path, words in cases.items():
        with pytest.raises(VideoError) as e:
            probe_video(path)
        assert words in one_line(e) and str(path) in str(e.value)
        with pytest.raises(VideoError) as e:
            list(iter_frames(path))
        assert words in one_line(e)


def test_writer_failure_leaves_nothing(tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(KeyboardInterrupt):  # the user's own exception passes through unchanged
        with VideoWriter(out, 25, preset=FAST) as w:
            for i in range(5):
                w.write(frame_at(i))
            raise KeyboardInterrupt
    assert leftovers(tmp_path) == []

    with pytest.raises(VideoError) as e:  # a frame of another size midway
        with VideoWriter(out, 25, preset=FAST) as w:
            w.write(frame_at(0))
            w.write(frame_at(1, h=50))
    assert "64x50" in one_line(e) and leftovers(tmp_path) == []

    with pytest.raises(VideoError) as e:  # not uint8 RGB
        with VideoWriter(out, 25) as w:
            w.write(np.zeros((8, 8, 3), np.float32))
    assert "uint8" in one_line(e) and leftovers(tmp_path) == []

    with pytest.raises(VideoError) as e:
        with VideoWriter(out, 25):
            pass
    assert "no frames" in one_line(e) and leftovers(tmp_path) == []

    with pytest.raises(VideoError) as e:
        with VideoWriter(out, 25, audio_from=tmp_path / "nope.mp4"):
            pass
    assert "nope.mp4" in one_line(e) and leftovers(tmp_path) == []


def test_writer_replaces_existing_output_only_on_success(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous result")
    with pytest.raises(RuntimeError):
        with VideoWriter(out, 25, preset=FAST) as w:
            w.write(frame_at(0))
            raise RuntimeError("boom")
    assert out.read_bytes() == b"previous result" and leftovers(tmp_path) == ["out.mp4"]
    with VideoWriter(out, 25, preset=FAST) as w:
        w.write(frame_at(0))
    assert probe_video(out).num_frames == 1


def test_writer_onto_a_directory_is_a_video_error(tmp_path):
    out = tmp_path / "out.mp4"
    out.mkdir()
    with pytest.raises(VideoError) as e:
        with VideoWriter(out, 25, preset=FAST) as w:
            w.write(frame_at(0))
    assert "out.mp4" in one_line(e) and leftovers(tmp_path) == ["out.mp4"] and out.is_dir()


# ----------------------------------------------------------------------------------------------------- images
def test_load_image_applies_exif_orientation(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:5, :5] = (255, 0, 0)  # red block at the stored top-left
    im = Image.fromarray(img)
    exif = im.getexif()
    exif[0x0112] = 6  # Orientation 6: display = stored rotated 90 degrees clockwise
    p = tmp_path / "rotated.png"
    im.save(p, exif=exif)
    out = load_image(p)
    assert out.shape == (40, 20, 3) and out.dtype == np.uint8
    assert (out[:5, -5:] == (255, 0, 0)).all() and out[-5:, :5].max() == 0  # top-left -> top-right


def test_load_image_modes(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (0, 0, 0, 0)  # fully transparent -> white
    rgba[0, 1] = (255, 0, 0, 255)  # opaque red
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black -> mid gray
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.shape == (4, 4, 3)
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (255, 0, 0)
    assert np.all(np.abs(out[0, 2].astype(int) - 127) <= 1)

    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (4, 4, 3) and (out == gray[..., None]).all()

    Image.fromarray(np.array([[0, 32896, 65535]], np.uint16)).save(tmp_path / "g16.png")
    assert load_image(tmp_path / "g16.png")[0, :, 0].tolist() == [0, 128, 255]

    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    pal.putdata([0, 1])
    pal.info["transparency"] = 1
    pal.save(tmp_path / "p.png", transparency=1)
    out = load_image(tmp_path / "p.png")
    assert tuple(out[0, 0]) == (0, 0, 255) and tuple(out[0, 1]) == (255, 255, 255)

    Image.new("CMYK", (3, 2), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    out = load_image(tmp_path / "c.jpg")
    assert out.shape == (2, 3, 3) and out[..., 0].min() > 200 and out[..., 1:].max() < 60  # red


def test_load_image_errors(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    for name, words in [("missing.jpg", "file not found"), ("text.png", "not an image"), ("cut.png", "")]:
        with pytest.raises(ImageError) as e:
            load_image(tmp_path / name)
        assert one_line(e).startswith(f"cannot read image {tmp_path / name}: ") and words in str(e.value)


def test_save_image_roundtrip_and_atomic(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    save_image(tmp_path / "x.png", img)
    assert (load_image(tmp_path / "x.png") == img).all()
    with pytest.raises(ImageError):
        save_image(tmp_path / "x.unknownext", img)
    assert leftovers(tmp_path) == ["x.png"]


def test_decode_failure_midway_is_a_video_error(tmp_path, monkeypatch):
    import anchorface.io.video as video

    p = write_clip(tmp_path / "a.mp4", n=5)
    real_open = video._open_input

    def open_then_fail(path):  # test double: the real container, whose decoder fails after two frames
        container, stream = real_open(path)

        class Failing:
            def decode(self, s):
                frames = container.decode(s)
                yield next(frames)
                yield next(frames)
                raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")

            def close(self):
                container.close()

        return Failing(), stream

    monkeypatch.setattr(video, "_open_input", open_then_fail)
    it = iter_frames(p)
    assert next(it).shape == (48, 64, 3) and next(it).shape == (48, 64, 3)
    with pytest.raises(VideoError) as e:
        next(it)
    assert "at frame 2" in one_line(e) and "Invalid data" in str(e.value)


# ------------------------------------------------------------------------------------------------ determinism
ENCODE_64 = """
import sys
import numpy as np
from anchorface.io.video import VideoWriter
yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
with VideoWriter(sys.argv[1], 25) as w:
    for i in range(24):
        blob = 200 * np.exp(-((xx - 20 - i) ** 2 + (yy - 32 - 8 * np.sin(i / 4)) ** 2) / 60)
        img = np.stack([xx * 3 + blob, yy * 3 + 0.5 * blob, 128 + (xx * yy) % 17], -1)
        w.write(np.clip(img, 0, 255).astype(np.uint8))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MALLOC_PERTURB_ is glibc's")
def test_same_frames_give_the_same_video_whatever_the_heap_held(tmp_path):
    """The demo's 64x64 reenactment differed from run to run: x264's AVX-512 macroblock-tree code reads
    uninitialised memory at widths that are not a multiple of 128 px. glibc's MALLOC_PERTURB_ fills fresh heap
    memory with a given byte, which makes that reproducible: two encodes of the same frames under two fillings
    must give the same file and the same decoded frames (fails without `x264_options` on an AVX-512 CPU)."""
    outs = []
    for fill in ("85", "170"):
        out = tmp_path / f"v{fill}.mp4"
        env = os.environ | {"MALLOC_PERTURB_": fill, "PYTHONPATH": str(Path(video.__file__).parents[2])}
        subprocess.run([sys.executable, "-c", ENCODE_64, str(out)], env=env, check=True, timeout=300)
        outs.append(out)
    decoded = [np.stack(list(iter_frames(p))) for p in outs]
    assert np.array_equal(decoded[0], decoded[1])
    assert outs[0].read_bytes() == outs[1].read_bytes()
