"""anchorface.frozen.encoders: CLIP loaded from a tiny CLIPModel + CLIPImageProcessor + hand-written BPE tokenizer files
(the same `from_pretrained` code path as real weights), and the jointly trained CNN encoder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from anchorface.config import DataConfig
from anchorface.frozen.encoders import CLIPGlobalEncoder, GlobalEncoder
from anchorface.methods.anchored.global_encoder import LearnedGlobalEncoder, load_encoder
from anchorface.errors import AnchorfaceError, CheckpointError, MissingWeightsError

PROJ = 16


def _image_processor_cls():
    try:
        from transformers import CLIPImageProcessorPil as P
    except ImportError:
        from transformers import CLIPImageProcessor as P
    return P


def write_tiny_bpe(d):
    """A hand-made CLIP BPE vocabulary: letters, end-of-word letters, two merges, the two special tokens."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = list(letters) + [c + "</w>" for c in letters] + ["ab", "ab</w>", "<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\na b\na b</w>\n")
    return vocab


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    d = tmp_path_factory.mktemp("tiny-clip")
    vocab = write_tiny_bpe(d)
    eos = vocab["<|endoftext|>"]
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=PROJ)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(d)
    _image_processor_cls()(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def clip(clip_dir):
    return CLIPGlobalEncoder(clip_dir)


@pytest.fixture
def offline_hub(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def smooth_images(n=2, h=48, w=40, seed=0):
    """Smooth random images (low-pass noise) in [-1, 1], so resampling differences stay small."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, h // 8, w // 8, generator=g), size=(h, w), mode="bilinear")
    return x * 2 - 1


# ------------------------------------------------------------------------------------------------------- CLIP
def test_clip_image_embeddings_match_transformers(clip_dir, clip):
    from transformers import CLIPModel

    assert isinstance(clip, GlobalEncoder) and clip.dim == PROJ and not clip.trainable
    px = smooth_images()
    emb = clip.encode_images(px)
    assert emb.shape == (2, PROJ) and emb.dtype == torch.float32

    # reference: the checkpoint's own processor on PIL images, then CLIPModel.get_image_features
    proc = _image_processor_cls().from_pretrained(clip_dir)
    pil = [Image.fromarray(((x.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()) for x in px]
    ref_in = torch.as_tensor(np.stack(proc(images=pil)["pixel_values"]))
    ours_in = clip.preprocess(px)
    assert ours_in.shape == ref_in.shape == (2, 3, 32, 32)
    assert (ours_in - ref_in).abs().mean() < 0.02  # same resize / crop / normalisation, up to uint8 rounding
    model = CLIPModel.from_pretrained(clip_dir).eval()
    with torch.no_grad():
        out = model.get_image_features(pixel_values=ref_in)
    ref = out if isinstance(out, torch.Tensor) else out.pooler_output
    assert F.cosine_similarity(emb, ref).min() > 0.99
    assert torch.allclose(clip.encode_images(px, batch_size=1), emb, atol=1e-5)


def test_clip_preprocess_resizes_shortest_side_then_center_crops(clip):
    # a 32x64 image whose left and right quarters differ from its center: the crop keeps only the center half
    px = -torch.ones(1, 3, 32, 64)
    px[..., 16:48] = 1
    x = clip.preprocess(px)
    assert x.shape == (1, 3, 32, 32)
    white = (1 - clip.mean) / clip.std
    assert torch.allclose(x[..., 4:28], white.expand(1, 3, 32, 24), atol=1e-4)


def test_clip_text_embeddings(clip_dir, clip):
    from transformers import CLIPModel, CLIPTokenizer

    emb = clip.encode_text(["a cab", "abc face"])
    assert emb.shape == (2, PROJ)
    tok = CLIPTokenizer.from_pretrained(clip_dir)
    ids = tok(["a cab", "abc face"], padding=True, return_tensors="pt")
    first = ids["input_ids"][0][ids["attention_mask"][0].bool()]
    assert tok.convert_ids_to_tokens(first) == ["<|startoftext|>", "a</w>", "c", "ab</w>", "<|endoftext|>"]
    with torch.no_grad():
        out = CLIPModel.from_pretrained(clip_dir).eval().get_text_features(**ids)
    ref = out if isinstance(out, torch.Tensor) else out.pooler_output
    assert torch.allclose(emb, ref, atol=1e-5)
    long = clip.encode_text("a face " * 40)  # longer than the 16 positions: truncated, not an error
    assert long.shape == (1, PROJ) and torch.isfinite(long).all()


def test_clip_normalize_and_frozen(clip_dir, clip):
    unit = CLIPGlobalEncoder(clip_dir, normalize=True)
    px = smooth_images()
    e = unit.encode_images(px)
    assert torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(e, F.normalize(clip.encode_images(px), dim=-1), atol=1e-5)
    assert torch.allclose(unit.encode_text(["ab"]).norm(dim=-1), torch.ones(1), atol=1e-5)
    unit.train()
    assert not unit.training and not any(p.requires_grad for p in unit.parameters())
    assert clip.config == {"type": "clip", "path": str(clip_dir), "dim": PROJ, "normalize": False}


def test_missing_clip_weights(tmp_path, clip_dir, offline_hub):
    no_proc = tmp_path / "no-processor"
    shutil.copytree(clip_dir, no_proc)
    (no_proc / "preprocessor_config.json").unlink()
    for where in [tmp_path / "nope", tmp_path, no_proc, "someone/not-a-clip"]:
        with pytest.raises(MissingWeightsError) as e:
            CLIPGlobalEncoder(where)
        msg = str(e.value)
        assert "\n" not in msg and f"'{where}'" in msg and "openai/clip-vit-large-patch14" in msg

    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(clip_dir, no_tok)
    (no_tok / "vocab.json").unlink()
    (no_tok / "merges.txt").unlink()
    enc = CLIPGlobalEncoder(no_tok)  # images need no tokenizer
    assert enc.encode_images(smooth_images(1)).shape == (1, PROJ)
    with pytest.raises(MissingWeightsError, match="CLIP tokenizer"):
        enc.encode_text(["a face"])


# ---------------------------------------------------------------------------------------------------- learned
def test_learned_encoder_trains_and_round_trips(tmp_path):
    torch.manual_seed(0)
    enc = LearnedGlobalEncoder(dim=24, resolution=32)
    assert enc.trainable and enc.dim == 24
    px = smooth_images(3, 32, 32)
    g = enc.encode_images(px)
    assert g.shape == (3, 24)
    g.square().sum().backward()  # trained jointly: gradients reach every weight
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    assert enc.encode_images(smooth_images(1, 48, 40)).shape == (1, 24)  # other sizes are resized

    enc.save_pretrained(tmp_path / "g")
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["config.json", "model.safetensors"]
    back = LearnedGlobalEncoder.from_pretrained(tmp_path / "g")
    assert back.config == enc.config
    with torch.no_grad():
        assert torch.equal(back.encode_images(px), enc.encode_images(px))
    with pytest.raises(AnchorfaceError, match=r"data.encoder: clip"):
        enc.encode_text(["a smiling face"])


def test_learned_encoder_bad_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="incomplete: .* not found"):
        LearnedGlobalEncoder.from_pretrained(tmp_path / "nope")
    LearnedGlobalEncoder(8, 32).save_pretrained(tmp_path / "g")
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    (tmp_path / "g" / "config.json").write_text(json.dumps({**cfg, "widths": [16, 32]}))
    with pytest.raises(CheckpointError, match="cannot be loaded") as e:
        LearnedGlobalEncoder.from_pretrained(tmp_path / "g")
    assert "\n" not in str(e.value)


def test_load_encoder(clip_dir):
    enc = load_encoder(DataConfig(encoder="learned", resolution=64), global_dim=128)
    assert isinstance(enc, LearnedGlobalEncoder) and enc.dim == 128 and enc.resolution == 64
    assert enc.widths == (32, 64, 128, 256)
    narrow = load_encoder(DataConfig(encoder="learned", resolution=64, encoder_width=16), global_dim=128)
    assert narrow.widths == (16, 32, 64, 128)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in enc.parameters()) / 3
    with pytest.raises(AnchorfaceError, match="multiples of 8"):
        load_encoder(DataConfig(encoder="learned", encoder_width=12), global_dim=8)
    assert load_encoder(DataConfig(encoder="learned"), global_dim=0) is None
    assert isinstance(load_encoder(DataConfig(encoder="clip", encoder_path=str(clip_dir)), PROJ), CLIPGlobalEncoder)
    with pytest.raises(AnchorfaceError, match=f"set model.global_dim: {PROJ}"):
        load_encoder(DataConfig(encoder="clip", encoder_path=str(clip_dir)), 768)
    with pytest.raises(AnchorfaceError, match="unknown data.encoder"):
        load_encoder(DataConfig(encoder="dino"), 8)
