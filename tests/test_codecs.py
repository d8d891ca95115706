"""anchorface.frozen.codecs: the exact pixel codec, and the SD-VAE codec loaded from a tiny AutoencoderKL saved with
`save_pretrained`, i.e. through the same code path as real weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anchorface.frozen.codecs import LatentCodec, PixelCodec, SDVAECodec, load_codec
from anchorface.config import DataConfig
from anchorface.errors import AnchorfaceError, MissingWeightsError

SCALE, SHIFT = 0.5, 0.1  # not SD's 0.18215: proves the codec reads its VAE's config


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4, norm_num_groups=8, sample_size=32, scaling_factor=SCALE,
                        shift_factor=SHIFT)
    d = tmp_path_factory.mktemp("tiny-vae")
    vae.save_pretrained(d)
    return d


@pytest.fixture
def offline_hub(monkeypatch):
    """No network in tests: the hub library's offline switch (HF_HUB_OFFLINE=1), read at import and at call time."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def pixels(n=3, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------------------------------------------ pixel
def test_pixel_codec_is_exact_space_to_depth():
    codec = PixelCodec(4)
    px = pixels(5, 64)
    z = codec.encode(px)
    assert z.shape == (5, 48, 16, 16) and codec.latent_shape(64) == (48, 16, 16)
    assert torch.equal(codec.decode(z), px)  # max abs diff 0
    # channel (c, i, j) of latent pixel (y, x) is image pixel (c, 4y + i, 4x + j)
    assert z[1, 2 * 16 + 1 * 4 + 3, 5, 7] == px[1, 2, 4 * 5 + 1, 4 * 7 + 3]
    assert torch.equal(codec.encode(px, batch_size=2), z)
    assert codec.config == {"type": "pixel", "factor": 4}
    assert list(codec.parameters()) == []


def test_codec_shape_errors_and_frozen_mode():
    codec = PixelCodec(4)
    with pytest.raises(AnchorfaceError, match="not divisible"):
        codec.latent_shape(66)
    with pytest.raises(ValueError):
        codec.encode(pixels(1, 30))
    with pytest.raises(ValueError):
        codec.decode(torch.zeros(1, 47, 4, 4))
    codec.train()
    assert not codec.training
    assert torch.equal(codec.decode(torch.full((1, 48, 2, 2), 3.0)), torch.ones(1, 3, 8, 8))  # clamped to [-1, 1]


# ----------------------------------------------------------------------------------------------------- SD-VAE
def test_sd_vae_codec_applies_scaling_and_shift(vae_dir):
    from diffusers import AutoencoderKL

    codec = SDVAECodec(vae_dir)
    assert isinstance(codec, LatentCodec)
    assert (codec.factor, codec.channels, codec.latent_shape(32)) == (2, 4, (4, 16, 16))
    assert codec.scaling_factor == SCALE and codec.shift_factor == SHIFT
    assert codec.config["type"] == "sd-vae" and codec.config["scaling_factor"] == SCALE
    assert not any(p.requires_grad for p in codec.parameters()) and not codec.training

    ref = AutoencoderKL.from_pretrained(vae_dir).eval()
    px = pixels(3)
    z = codec.encode(px)
    with torch.no_grad():
        mean = ref.encode(px).latent_dist.mean
        assert z.shape == (3, 4, 16, 16)
        assert torch.allclose(z, (mean - SHIFT) * SCALE, atol=1e-6)
        out = codec.decode(z)
        assert torch.allclose(out, ref.decode(mean).sample.clamp(-1, 1), atol=1e-5)  # decode undoes the scale
    assert out.shape == px.shape and out.abs().max() <= 1
    assert torch.allclose(codec.encode(px, batch_size=2), z, atol=1e-5)
    assert torch.allclose(codec.decode(z, batch_size=1), out, atol=1e-5)


def test_sd_vae_posterior_sampling(vae_dir):
    codec = SDVAECodec(vae_dir, sample=True)
    px = pixels(2)
    a = codec.encode(px, generator=torch.Generator().manual_seed(1))
    b = codec.encode(px, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, SDVAECodec(vae_dir).encode(px))


def test_sd_vae_from_pipeline_directory(vae_dir, tmp_path):
    import shutil

    shutil.copytree(vae_dir, tmp_path / "vae")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    codec = SDVAECodec(tmp_path)
    assert codec.subfolder == "vae"
    assert torch.equal(codec.encode(pixels(1)), SDVAECodec(vae_dir).encode(pixels(1)))


def test_missing_vae_weights(tmp_path, vae_dir, offline_hub):
    (tmp_path / "empty").mkdir()
    (tmp_path / "config-only").mkdir()
    (tmp_path / "config-only" / "config.json").write_text((vae_dir / "config.json").read_text())
    for where in [tmp_path / "nope", "./no/such/dir", tmp_path / "empty", tmp_path / "config-only",
                  "someone/not-a-vae"]:
        with pytest.raises(MissingWeightsError) as e:
            SDVAECodec(where)
        msg = str(e.value)
        assert "\n" not in msg and f"'{where}'" in msg and "hf download" in msg and "data.codec_path" in msg


def test_load_codec(vae_dir):
    assert isinstance(load_codec(DataConfig(codec="pixel", pixel_factor=4, resolution=64)), PixelCodec)
    codec = load_codec(DataConfig(codec="sd-vae", codec_path=str(vae_dir), resolution=32))
    assert isinstance(codec, SDVAECodec) and codec.latent_shape(32) == (4, 16, 16)
    with pytest.raises(AnchorfaceError, match="unknown data.codec"):
        load_codec(DataConfig(codec="jpeg"))
    with pytest.raises(AnchorfaceError, match="not divisible"):
        load_codec(DataConfig(codec="pixel", pixel_factor=8, resolution=100))


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_decode_to_uint8_streams_the_frames_of_to_uint8(batch):
    from anchorface.frozen.codecs import decode_to_uint8, to_uint8

    codec = PixelCodec(4)
    z = codec.encode(pixels(n=7, size=16)) * 1.3  # some values outside [-1, 1]: clamped
    frames = list(decode_to_uint8(codec, z, batch))
    assert len(frames) == 7 and frames[0].shape == (16, 16, 3)
    assert (np.stack(frames) == to_uint8(codec.decode(z))).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned-memory transfers need CUDA")
def test_decode_to_uint8_on_cuda_equals_cpu():
    from anchorface.frozen.codecs import decode_to_uint8

    codec = PixelCodec(4)
    z = codec.encode(pixels(n=9, size=16))
    gpu = list(decode_to_uint8(codec.cuda(), z.cuda(), 4))
    cpu = list(decode_to_uint8(codec.cpu(), z, 4))
    assert all((a == b).all() for a, b in zip(gpu, cpu)) and len(gpu) == 9
