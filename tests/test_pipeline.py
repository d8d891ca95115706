"""AnchorFacePipeline: generate / decode_frames ordering, G for text and editing, loading a real tiny checkpoint."""

import numpy as np
import pytest
import torch
from torch import nn

from anchorface.frozen.codecs import PixelCodec
from anchorface.methods.anchored.global_encoder import LearnedGlobalEncoder
from anchorface.errors import AnchorfaceError
from anchorface.methods.anchored.pipeline import TEXT_NEEDS_CLIP, AnchorFacePipeline, full_frame_box

RES, FACTOR = 32, 4  # as in the `tiny_config` fixture: pixel codec, 48 x 8 x 8 latents


class TargetModel(nn.Module):
    """Test double with the sDiT's forward signature: predicts (as ε, v or x0, whichever the diffusion trains) the
    x0 that is a constant latent equal to the frame's first landmark coordinate (2x - 1). With a deterministic last
    step the sampler then returns, for every timeline frame, exactly that frame's value: any mix-up of frames, slots
    or sequences shows."""

    def __init__(self, diffusion, frames):
        super().__init__()
        self.diffusion = diffusion
        self.register_buffer("ab", torch.as_tensor(diffusion.alphas_cumprod, dtype=torch.float64))
        self.mapping = nn.Identity()  # conditional: the sampler passes g and lmk
        self.frames = frames

    def forward(self, x, t, g=None, lmk=None, drop=None, drop_global=None, drop_landmarks=None, anchor=None):
        assert x.shape[1] == self.frames and lmk.shape[:2] == x.shape[:2]
        ab = self.ab[t.long()].view(-1, 1, 1, 1, 1)
        target = lmk[..., 0].double().view(*x.shape[:2], 1, 1, 1)
        eps = (x.double() - ab.sqrt() * target) / (1 - ab).sqrt()
        pred = self.diffusion.target(target.expand_as(eps), eps, t)
        return torch.cat([pred, torch.zeros_like(eps)], dim=2).float()


def frame_landmarks(values):
    """Landmarks whose vector starts with `values` (landmark_vector maps x -> 2x - 1)."""
    lmk = np.full((len(values), 478, 3), 0.5, np.float32)
    lmk[:, 0, 0] = (np.asarray(values) + 1) / 2
    return lmk


@pytest.fixture(scope="module")
def target_pipe(tiny_config):
    cfg = tiny_config()
    from anchorface.diffusion.gaussian import GaussianDiffusion

    model = TargetModel(GaussianDiffusion(cfg.diffusion), cfg.model.num_frames)
    return AnchorFacePipeline(cfg, model, PixelCodec(FACTOR), encoder=None)


@pytest.mark.parametrize("merge", ["anchored", "multidiffusion", "independent"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp-2m", "unipc"])
@pytest.mark.parametrize("n", [1, 3, 11])
def test_every_frame_once_in_order(target_pipe, merge, sampler, n):
    values = np.linspace(-0.9, 0.9, n).astype(np.float32)
    lmk = frame_landmarks(values)
    lat = target_pipe.generate(torch.zeros(1, 16), lmk, merge=merge, sampler=sampler, steps=3, micro_batch=2,
                               progress=False)
    assert lat.shape == (n, 48, RES // FACTOR, RES // FACTOR)
    np.testing.assert_allclose(lat.mean(dim=(1, 2, 3)).numpy(), values, atol=1e-4)
    frames = list(target_pipe.decode_frames(lat, batch_size=3))
    assert len(frames) == n and all(f.shape == (RES, RES, 3) and f.dtype == np.uint8 for f in frames)
    expected = np.round((values + 1) * 127.5)
    np.testing.assert_allclose([f.mean() for f in frames], expected, atol=0.51)


class FakeCLIP(nn.Module):
    """Test double for the CLIP encoder: fixed image / text embeddings of different norms."""

    dim = 4

    def encode_images(self, px):
        return torch.tensor([[3.0, 0.0, 0.0, 4.0]]).expand(len(px), -1)

    def encode_text(self, texts):
        return torch.tensor([[0.0, 0.5, 0.0, 0.0]]).expand(len(texts), -1)


def test_global_signal_text_and_edit(target_pipe, tiny_config):
    cfg = tiny_config(encoder="clip")
    pipe = AnchorFacePipeline(cfg, target_pipe.sdit, PixelCodec(FACTOR), encoder=FakeCLIP())
    img = np.zeros((RES, RES, 3), np.uint8)
    g_img = pipe.global_signal(img)
    torch.testing.assert_close(g_img, torch.tensor([[3.0, 0.0, 0.0, 4.0]]))
    torch.testing.assert_close(pipe.global_signal(text="a smiling statue"), torch.tensor([[0.0, 0.5, 0.0, 0.0]]))
    # edit: the text embedding is brought to the image embedding's norm (5) before mixing
    g = pipe.global_signal(img, edit="blond hair", edit_weight=0.25)
    torch.testing.assert_close(g, torch.tensor([[0.75 * 3, 0.25 * 5, 0.0, 0.75 * 4]]))
    torch.testing.assert_close(pipe.global_signal(img, edit="x", edit_weight=1.0), torch.tensor([[0.0, 5.0, 0, 0]]))
    with pytest.raises(AnchorfaceError, match="edit-weight"):
        pipe.global_signal(img, edit="x", edit_weight=1.5)
    learned = AnchorFacePipeline(tiny_config(), target_pipe.sdit, PixelCodec(FACTOR),
                                 encoder=LearnedGlobalEncoder(16, RES))
    with pytest.raises(AnchorfaceError, match="CLIP global encoder"):
        learned.global_signal(text="a statue")
    with pytest.raises(AnchorfaceError, match=TEXT_NEEDS_CLIP):
        learned.reenact(None, "missing.mp4", "out.mp4", text="a statue")


def test_from_pretrained_tiny_checkpoint(tiny_checkpoint):
    pipe = AnchorFacePipeline.from_pretrained(tiny_checkpoint)
    assert pipe.latent_shape == (48, 8, 8) and pipe.num_frames == 4
    g = pipe.global_signal(np.full((RES, RES, 3), 128, np.uint8))
    assert g.shape == (1, 16)
    lmk = frame_landmarks(np.zeros(6))
    a = pipe.generate(g, lmk, progress=False, seed=1)
    b = pipe.generate(g, lmk, progress=False, seed=1, micro_batch=1)
    assert a.shape == (6, 48, 8, 8) and (a - b).abs().max() <= 1e-5
    assert len(list(pipe.decode_frames(a))) == 6


def test_full_frame_box_is_square_and_centered():
    box = full_frame_box((480, 640))
    assert box.width == box.height == 640 and box.center == (320, 240)


class Unconditional(nn.Module):
    """Test double: a model without the mapping network (global_dim = 0)."""

    mapping = None

    def forward(self, x, t, **kwargs):
        return torch.cat([torch.zeros_like(x)] * 2, dim=2)


def test_reenact_validates_before_any_work(target_pipe, tmp_path, monkeypatch, tiny_config):
    """Every option and output path is checked in step 1, before the driving video is read (it does not even
    exist here), and a 0 is a value, not "use the default"."""
    from anchorface.faces import detect as faces

    monkeypatch.setattr(faces, "track_video", lambda *a, **k: pytest.fail("pass 1 started"))
    drv = tmp_path / "missing.mp4"
    (tmp_path / "folder.mp4").mkdir()
    bad = [(dict(output=tmp_path / "out.gif"), "unsupported video format '.gif'"),
           (dict(output=tmp_path / "out"), "unsupported video format"),
           (dict(output=tmp_path / "folder.mp4"), "is a directory"),
           (dict(output=tmp_path / "nowhere" / "out.mp4"), "does not exist"),
           (dict(compare_path=tmp_path / "cmp.avi"), "--compare .*unsupported video format"),
           (dict(compare_path=tmp_path / "folder.mp4"), "--compare .* is a directory"),
           (dict(compare_path=tmp_path / "out.mp4"), "different file"),
           (dict(edit_weight=1.5), "edit-weight"),
           (dict(edit_weight=-0.1), "edit-weight"),
           (dict(micro_batch=0), "micro-batch must be >= 1, got 0"),
           (dict(steps=0), r"steps must be in \[1, 1000\], got 0"),
           (dict(steps=1001), "got 1001"),
           (dict(sampler="euler"), "unknown sampler"),
           (dict(merge=""), "unknown merge strategy ''")]
    for kwargs, message in bad:
        args = dict(output=tmp_path / "out.mp4") | kwargs
        with pytest.raises(AnchorfaceError, match=message) as e:
            target_pipe.reenact(np.zeros((8, 8, 3), np.uint8), drv, args.pop("output"), progress=False, **args)
        assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.mp4"]
    unconditional = AnchorFacePipeline(tiny_config(), Unconditional(), PixelCodec(FACTOR))
    with pytest.raises(AnchorfaceError, match="guidance scale 2 needs a conditional model"):
        unconditional.reenact(np.zeros((8, 8, 3), np.uint8), drv, tmp_path / "o.mp4", guidance_scale=2.0)
    # the checks pass: the next thing is reading the (missing) driving video
    with pytest.raises(AnchorfaceError, match="missing.mp4: file not found"):
        target_pipe.reenact(np.zeros((8, 8, 3), np.uint8), drv, tmp_path / "o.mkv", compare_path=tmp_path / "c.mov")


def test_output_folder_must_be_writable(unprivileged):
    """A read-only output folder is refused before any work. Run as an unprivileged user (as root too: root may
    write anywhere), with the premise checked: that user really cannot write there, and can in the other folder."""
    from anchorface.methods.anchored.pipeline import check_output_path

    ro, rw = unprivileged.tmp / "ro", unprivileged.tmp / "rw"
    ro.mkdir()
    rw.mkdir()
    ro.chmod(0o555)
    rw.chmod(0o777)

    def attempt():
        out = []
        for folder in (ro, rw):
            try:
                out.append(str(check_output_path(folder / "out.mp4")))
            except AnchorfaceError as e:
                out.append(f"error: {e}")
        try:
            (ro / "out.mp4").write_bytes(b"")
            out.append("wrote into the read-only folder")
        except PermissionError:
            out.append("denied")
        return out

    ro_result, rw_result, premise = unprivileged.run(attempt)
    assert premise == "denied"
    assert rw_result == str(rw / "out.mp4")
    assert ro_result == f"error: output {ro / 'out.mp4'}: folder {ro} is not writable"


def test_generate_takes_zero_as_a_value(target_pipe):
    lmk = frame_landmarks(np.zeros(3))
    with pytest.raises(AnchorfaceError, match="got 0"):
        target_pipe.generate(None, lmk, steps=0, progress=False)
    with pytest.raises(AnchorfaceError, match="micro-batch must be >= 1, got 0"):
        target_pipe.generate(None, lmk, micro_batch=0, progress=False)


def test_reenact_command_checks_inputs_before_loading_weights(tmp_path, capsys):
    """The CLI reads the source photo and probes the driving video before it loads a checkpoint (which here does
    not even exist), so a typo costs no model loading."""
    from anchorface.apps.cli import main

    photo = tmp_path / "me.jpg"
    photo.write_bytes(b"not a jpeg")
    args = ["reenact", str(photo), str(tmp_path / "drv.mp4"), "-o", str(tmp_path / "out.mp4"), "--checkpoint",
            str(tmp_path / "no-checkpoint"), "--quiet"]
    assert main(args) == 1
    assert "cannot read image" in capsys.readouterr().err
    from PIL import Image

    Image.new("RGB", (8, 8)).save(photo, format="JPEG")
    assert main(args) == 1
    assert "drv.mp4: file not found" in capsys.readouterr().err
    assert main(args[:4] + [str(tmp_path / "out.webm")] + args[5:]) == 1
    assert "unsupported video format" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["me.jpg"]
