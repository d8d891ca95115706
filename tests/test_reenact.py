"""`anchorface reenact` end to end: a randomly initialised tiny checkpoint, real faces and a real driving clip."""

from pathlib import Path

import numpy as np
import pytest
import torch

from anchorface.apps import reenact as reenact_cmd
from anchorface.methods.anchored.checkpoint import save_checkpoint
from anchorface.apps.cli import main
from anchorface.config import load_config
from anchorface.methods.anchored.global_encoder import LearnedGlobalEncoder
from anchorface.methods.anchored.sdit import SDiT, SDiTConfig
from anchorface.io.video import VideoWriter, iter_frames, probe_video

FACES = Path(__file__).resolve().parents[2] / "shared/data/faces"
pytestmark = pytest.mark.skipif(not FACES.is_dir(), reason=f"real face data not found at {FACES}")
CLIP_FRAMES = 30  # the first second of d20 (a 480x480, 25 fps clip with AAC audio)
RES = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The `tiny` preset, narrowed, randomly initialised: 64 px, pixel codec, learned global encoder."""
    cfg = load_config("tiny")
    cfg.model.hidden_size, cfg.model.depth, cfg.model.num_heads, cfg.model.global_dim = 48, 2, 2, 16
    cfg.model.patch_size = 1  # 48 values per token: the width must hold them
    cfg.sample.micro_batch = 4
    torch.manual_seed(0)
    sdit = SDiT(SDiTConfig.from_model_config(cfg.model, input_size=RES // 4, in_channels=48))
    with torch.no_grad():
        sdit.final_layer.linear.weight.normal_(0, 0.02)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", cfg, sdit, LearnedGlobalEncoder(16, RES))


@pytest.fixture(scope="module")
def driving(tmp_path_factory):
    """A short real driving clip: the first frames of d20 with its audio (not committed, built in tmp)."""
    src = FACES / "driving/d20.mp4"
    out = tmp_path_factory.mktemp("clip") / "d20_short.mp4"
    with VideoWriter(out, probe_video(src).fps, audio_from=src) as w:
        for frame in iter_frames(src, max_frames=CLIP_FRAMES):
            w.write(frame)
    return out


def reenact(capsys, *args):
    code = main(["reenact", *map(str, args), "--quiet"])
    return code, capsys.readouterr().err


def test_reenact_writes_playable_video_with_frames_fps_audio(checkpoint, driving, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    code, err = reenact(capsys, FACES / "source/s1.jpg", driving, "-o", out, "--checkpoint", checkpoint,
                        "--steps", "2", "--micro-batch", "3")
    assert code == 0, err
    info, clip = probe_video(out), probe_video(driving)
    assert info.num_frames == clip.num_frames == CLIP_FRAMES
    assert info.fps == clip.fps and info.has_audio
    assert (info.width, info.height) == (RES, RES)
    frames = list(iter_frames(out))
    assert len(frames) == CLIP_FRAMES and not all(np.array_equal(frames[0], f) for f in frames[1:])
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"], "no temporary files left"


def test_reenact_paste_back_and_compare(checkpoint, driving, tmp_path):
    from anchorface.methods.anchored.pipeline import COMPARE_HEIGHT, AnchorFacePipeline

    pipe = AnchorFacePipeline.from_pretrained(checkpoint)
    res = pipe.reenact(FACES / "source/drv_d12.jpg", driving, tmp_path / "full.mp4", steps=1, paste_back=True,
                       merge="independent", compare_path=tmp_path / "cmp.mp4", relative=False, progress=False)
    full, cmp, clip = probe_video(res.output), probe_video(res.compare), probe_video(driving)
    assert (full.width, full.height, full.num_frames) == (clip.width, clip.height, CLIP_FRAMES)
    assert (cmp.width, cmp.height, cmp.num_frames) == (3 * COMPARE_HEIGHT, COMPARE_HEIGHT, CLIP_FRAMES)
    assert res.merge == "independent" and res.num_frames == CLIP_FRAMES and full.has_audio


@pytest.mark.parametrize("animal", ["s22", "s36"])
def test_animal_photo_no_face(checkpoint, driving, tmp_path, capsys, animal):
    out = tmp_path / "out.mp4"
    code, err = reenact(capsys, FACES / f"source/{animal}.jpg", driving, "-o", out, "--checkpoint", checkpoint,
                        "--steps", "1")
    assert code == 1
    assert err.startswith("anchorface: error:") and "no face" in err and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_corrupt_driving_video(checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    data = (FACES / "driving/d20.mp4").read_bytes()
    bad.write_bytes(b"\x00" * 64 + data[5000:20000])  # no header, a piece of the stream
    out = tmp_path / "out.mp4"
    code, err = reenact(capsys, FACES / "source/s1.jpg", bad, "-o", out, "--checkpoint", checkpoint)
    assert code == 1 and "bad.mp4" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_usage_errors(checkpoint, driving, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.mp4"
    code, err = reenact(capsys, driving, "-o", out, "--checkpoint", checkpoint, "--text", "a statue")
    assert code == 1 and "CLIP global encoder" in err
    code, err = reenact(capsys, driving, "-o", out, "--checkpoint", checkpoint)
    assert code == 1 and "SOURCE DRIVING" in err
    monkeypatch.setattr(reenact_cmd, "demo_checkpoint", lambda: tmp_path / "no-demo")
    code, err = reenact(capsys, FACES / "source/s1.jpg", driving, "-o", out)
    assert code == 1 and "no checkpoint given and no demo checkpoint installed" in err
    assert not out.exists()
