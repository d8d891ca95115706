"""`anchorface reenact` end to end: a randomly initialised tiny checkpoint, real faces and a real driving clip."""

import numpy as np
import pytest

from anchorface.apps import reenact as reenact_cmd
from anchorface.apps.cli import main
from anchorface.methods.anchored.checkpoint import read_config
from anchorface.io.video import iter_frames, probe_video
from helpers import short_clip

pytestmark = pytest.mark.usefixtures("face_corpus")  # every test here reads the real corpus
CLIP_FRAMES = 30  # the first second of d20 (a 480x480, 25 fps clip with AAC audio)


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    """The shared tiny random checkpoint (32 px, pixel codec, learned G)."""
    return tiny_checkpoint


@pytest.fixture(scope="module")
def driving(tmp_path_factory, face_corpus):
    """A short real driving clip: the first frames of d20 with its audio (not committed, built in tmp)."""
    src = face_corpus / "driving/d20.mp4"
    out = tmp_path_factory.mktemp("clip") / "d20_short.mp4"
    return short_clip(src, out, CLIP_FRAMES)


def reenact(capsys, *args):
    code = main(["reenact", *map(str, args), "--quiet"])
    return code, capsys.readouterr().err


def test_reenact_writes_playable_video_with_frames_fps_audio(checkpoint, driving, tmp_path, capsys, face_corpus):
    out = tmp_path / "out.mp4"
    code, err = reenact(capsys, face_corpus / "source/s1.jpg", driving, "-o", out, "--checkpoint", checkpoint,
                        "--steps", "2", "--micro-batch", "3")
    assert code == 0, err
    info, clip = probe_video(out), probe_video(driving)
    assert info.num_frames == clip.num_frames == CLIP_FRAMES
    assert info.fps == clip.fps and info.has_audio
    res = read_config(checkpoint).data.resolution
    assert (info.width, info.height) == (res, res)
    frames = list(iter_frames(out))
    assert len(frames) == CLIP_FRAMES and not all(np.array_equal(frames[0], f) for f in frames[1:])
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"], "no temporary files left"


def test_reenact_paste_back_and_compare(checkpoint, driving, tmp_path, face_corpus):
    from anchorface.methods.anchored.pipeline import COMPARE_HEIGHT, AnchorFacePipeline

    pipe = AnchorFacePipeline.from_pretrained(checkpoint)
    res = pipe.reenact(face_corpus / "source/drv_d12.jpg", driving, tmp_path / "full.mp4", steps=1, paste_back=True,
                       merge="independent", compare_path=tmp_path / "cmp.mp4", relative=False, progress=False)
    full, cmp, clip = probe_video(res.output), probe_video(res.compare), probe_video(driving)
    assert (full.width, full.height, full.num_frames) == (clip.width, clip.height, CLIP_FRAMES)
    assert (cmp.width, cmp.height, cmp.num_frames) == (3 * COMPARE_HEIGHT, COMPARE_HEIGHT, CLIP_FRAMES)
    assert res.merge == "independent" and res.num_frames == CLIP_FRAMES and full.has_audio


@pytest.mark.parametrize("animal", ["s22", "s36"])
def test_animal_photo_no_face(checkpoint, driving, tmp_path, capsys, animal, face_corpus):
    out = tmp_path / "out.mp4"
    code, err = reenact(capsys, face_corpus / f"source/{animal}.jpg", driving, "-o", out, "--checkpoint", checkpoint,
                        "--steps", "1")
    assert code == 1
    assert err.startswith("anchorface: error:") and "no face" in err and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_corrupt_driving_video(checkpoint, tmp_path, capsys, face_corpus):
    bad = tmp_path / "bad.mp4"
    data = (face_corpus / "driving/d20.mp4").read_bytes()
    bad.write_bytes(b"\x00" * 64 + data[5000:20000])  # no header, a piece of the stream
    out = tmp_path / "out.mp4"
    code, err = reenact(capsys, face_corpus / "source/s1.jpg", bad, "-o", out, "--checkpoint", checkpoint)
    assert code == 1 and "bad.mp4" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_usage_errors(checkpoint, driving, tmp_path, capsys, monkeypatch, face_corpus):
    out = tmp_path / "out.mp4"
    code, err = reenact(capsys, driving, "-o", out, "--checkpoint", checkpoint, "--text", "a statue")
    assert code == 1 and "CLIP global encoder" in err
    code, err = reenact(capsys, driving, "-o", out, "--checkpoint", checkpoint)
    assert code == 1 and "SOURCE DRIVING" in err
    monkeypatch.setattr(reenact_cmd, "demo_checkpoint", lambda: tmp_path / "no-demo")
    code, err = reenact(capsys, face_corpus / "source/s1.jpg", driving, "-o", out)
    assert code == 1 and "no checkpoint given and no demo checkpoint installed" in err
    assert not out.exists()
