"""sDiT (§3.1), mapping network, anchoring hook (§3.2) and DiT parity (App. D)."""

import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from anchorface.config import MODEL_PRESETS as PRESETS
from anchorface.config import ModelConfig
from anchorface.errors import AnchorfaceError, CheckpointError
from anchorface.methods.anchored import sdit as sdit_module
from anchorface.methods.anchored.sdit import (AnchorOverride, MappingNetwork, SDiT, SDiTConfig, flops_per_frame,
                                              sincos_2d)

TINY = dict(input_size=8, in_channels=4, patch_size=2, hidden_size=32, depth=3, num_heads=4, global_dim=16,
            landmark_dim=12, num_frames=4)


def tiny_model(seed=0, perturb=True, **overrides):
    """A tiny sDiT; `perturb` replaces the zero (adaLN-Zero) weights so that every block does something."""
    torch.manual_seed(seed)
    model = SDiT(SDiTConfig(**{**TINY, **overrides})).eval()
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    return model


def inputs(B=3, T=4, seed=1, cfg=TINY):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, cfg["in_channels"], cfg["input_size"], cfg["input_size"], generator=gen)
    t = torch.randint(0, 1000, (B,), generator=gen)
    g = torch.randn(B, cfg["global_dim"], generator=gen)
    lmk = torch.randn(B, T, cfg["landmark_dim"], generator=gen)
    return x, t, g, lmk


@torch.no_grad()
def test_output_shape_and_exactly_zero_at_init():
    model = tiny_model(perturb=False)
    x, t, g, lmk = inputs()
    out = model(x, t, g, lmk)
    assert out.shape == (3, 4, 8, 8, 8)  # learned sigma: 2C channels
    assert torch.count_nonzero(out) == 0  # adaLN-Zero + zero final linear
    assert tiny_model(learn_sigma=False)(x, t, g, lmk).shape == (3, 4, 4, 8, 8)


def test_spatial_pos_embed_has_dit_semantics():
    # DiT's numpy get_2d_sincos_pos_embed: meshgrid(w, h); first half of the channels from grid[0] (the column).
    def emb_1d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    D, gs = 16, 4
    grid = np.stack(np.meshgrid(np.arange(gs, dtype=np.float32), np.arange(gs, dtype=np.float32)), axis=0)
    ref = np.concatenate([emb_1d(D // 2, grid[0]), emb_1d(D // 2, grid[1])], axis=1)
    np.testing.assert_allclose(sincos_2d(D, gs).numpy(), ref, atol=1e-6)


@torch.no_grad()
def test_temporal_positional_encoding_makes_frame_order_matter(monkeypatch):
    model = tiny_model()
    x, t, g, lmk = inputs()
    perm = torch.tensor([2, 0, 3, 1])
    out, out_perm = model(x, t, g, lmk), model(x[:, perm], t, g, lmk[:, perm])
    assert (out[:, perm] - out_perm).abs().max() > 1e-3
    # Control: without the temporal PE, attention + per-frame conditioning are permutation-equivariant.
    real = sdit_module.sincos_1d
    monkeypatch.setattr(sdit_module, "sincos_1d", lambda dim, pos: real(dim, pos) * (pos.numel() == 0))
    out, out_perm = model(x, t, g, lmk), model(x[:, perm], t, g, lmk[:, perm])
    torch.testing.assert_close(out[:, perm], out_perm, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_per_frame_conditioning_modulates_only_its_frame():
    # Blocks at init are the identity (zero gates); perturb only the final adaLN: frame t's output then depends on
    # frame t's tokens and c_t only, so changing L_1 must change frame 1 and nothing else.
    model = tiny_model(perturb=False)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.final_layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x, t, g, lmk = inputs()
    lmk2 = lmk.clone()
    lmk2[:, 1] += 1.0
    a, b = model(x, t, g, lmk), model(x, t, g, lmk2)
    assert (a[:, 1] - b[:, 1]).abs().max() > 1e-3
    assert torch.equal(a[:, [0, 2, 3]], b[:, [0, 2, 3]])


@torch.no_grad()
def test_mapping_null_embeddings():
    torch.manual_seed(0)
    net = MappingNetwork(global_dim=16, landmark_dim=12, hidden_size=32, num_blocks=4)
    net.null_global.normal_()
    net.null_landmarks.normal_()
    _, _, g, lmk = inputs(B=2)
    g2, lmk2 = torch.randn_like(g), torch.randn_like(lmk)
    yes, no = torch.tensor([True, False]), torch.tensor([False, False])
    assert net(g, lmk).shape == (2, 4, 32)
    # joint drop: row 0 independent of both signals, row 1 not
    a, b = net(g, lmk, drop=yes), net(g2, lmk2, drop=yes)
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])
    # drop G only: independent of g, still dependent on the landmarks
    a, b, c = net(g, lmk, drop_global=yes), net(g2, lmk, drop_global=yes), net(g, lmk2, drop_global=yes)
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[0], c[0]) and not torch.allclose(a[1], b[1])
    # drop L only
    a, b, c = net(g, lmk, drop_landmarks=yes), net(g, lmk2, drop_landmarks=yes), net(g2, lmk, drop_landmarks=yes)
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[0], c[0])
    # an all-False drop mask is the same as no mask
    assert torch.equal(net(g, lmk, drop=no), net(g, lmk))


def capture_layers(model):
    """Forward pre-hooks capture every layer's tokens after the anchor override (layers 0..depth)."""
    seen, handles = [], []
    for mod in [*model.blocks, model.final_layer]:
        handles.append(mod.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone())))
    return seen, handles


@torch.no_grad()
def test_anchor_override_is_exact_in_every_layer_and_output():
    model = tiny_model()
    x, t, g, lmk = inputs(B=3)
    pos = torch.tensor([1, 3, 0])
    anchor = AnchorOverride(positions=pos)
    seen, handles = capture_layers(model)
    out = model(x, t, g, lmk, anchor=anchor)
    for h in handles:
        h.remove()
    depth = model.config.depth
    assert len(anchor.recorded) == depth + 2 and len(seen) == depth + 1
    for layer, tokens in enumerate(seen):
        for b in range(3):
            assert torch.equal(tokens[b, pos[b]], anchor.recorded[layer]), (layer, b)
    # the output's anchor frame is overridden too
    tokens_out = torch.einsum("btchpwq->bthwpqc", out.reshape(3, 4, 8, 4, 2, 4, 2)).reshape(3, 4, 16, 32)
    for b in range(3):
        assert torch.equal(tokens_out[b, pos[b]], anchor.recorded[depth + 1])
        assert torch.equal(out[b, pos[b]], out[0, pos[0]])
    # the donor row (row 0) attends to itself only: it equals sequence 0 run alone, without any anchor
    alone = model(x[:1], t[:1], g[:1], lmk[:1])
    torch.testing.assert_close(out[:1], alone, atol=1e-5, rtol=1e-5)
    # the other rows differ from their un-anchored selves (they attend to the donor's anchor)
    assert (out[1:] - model(x[1:], t[1:], g[1:], lmk[1:])).abs().max() > 1e-3


@torch.no_grad()
def test_no_anchor_rows_equals_no_override():
    model = tiny_model()
    x, t, g, lmk = inputs(B=2)
    anchor = AnchorOverride(positions=torch.tensor([-1, -1]))
    assert torch.equal(model(x, t, g, lmk, anchor=anchor), model(x, t, g, lmk))
    assert anchor.recorded == []


@torch.no_grad()
def test_record_then_replay_in_micro_batches_equals_one_batch():
    model = tiny_model()
    x, t, g, lmk = inputs(B=4)
    t = torch.full((4,), 500)
    pos = torch.tensor([2, 0, 3, 1])
    big = model(x, t, g, lmk, anchor=AnchorOverride(positions=pos))
    first = AnchorOverride(positions=pos[:1])
    out1 = model(x[:1], t[:1], g[:1], lmk[:1], anchor=first)
    replay = AnchorOverride(positions=pos[1:], donor=first.recorded)
    out2 = model(x[1:], t[1:], g[1:], lmk[1:], anchor=replay)
    torch.testing.assert_close(torch.cat([out1, out2]), big, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(replay.recorded, first.recorded))
    for b in range(1, 4):
        assert torch.equal(out2[b - 1, pos[b]], out1[0, pos[0]])
    with pytest.raises(ValueError, match="layers"):
        model(x[1:], t[1:], g[1:], lmk[1:], anchor=AnchorOverride(positions=pos[1:], donor=first.recorded[:-1]))


@torch.no_grad()
def test_precomputed_condition_equals_recomputing():
    """forward(cond=condition(g, lmk)) is forward(g, lmk) exactly, for every drop flag; C is frame-wise, so C of all
    N frames in one row serves every sequence."""
    model = tiny_model()
    x, t, g, lmk = inputs(B=3)
    for flags in ({}, {"drop": torch.tensor([True, False, True])}, {"drop_global": torch.ones(3, dtype=torch.bool)},
                  {"drop_landmarks": torch.tensor([False, True, False])}):
        cond = model.condition(g, lmk, **flags)
        assert cond.shape == (3, 4, TINY["hidden_size"])
        assert torch.equal(model(x, t, cond=cond), model(x, t, g, lmk, **flags))
    one_g = g[:1].expand(3, -1)
    per_frame = model.condition(g[:1], lmk.reshape(1, 12, -1))[0]  # 12 frames in one row
    torch.testing.assert_close(per_frame.reshape(3, 4, -1), model.condition(one_g, lmk), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="cond"):
        model(x, t, cond=model.condition(g, lmk)[:, :2])
    with pytest.raises(ValueError, match="unconditional"):
        tiny_model(global_dim=0)(x, t, cond=model.condition(g, lmk))


def test_anchor_override_writes_in_place_and_keeps_gradients():
    """The override writes into the activation (no copy of it) and autograd accepts it: the donor row's anchor gets
    the gradients of every row's anchor tokens."""
    model = tiny_model()
    x, t, g, lmk = inputs(B=2)
    hook = AnchorOverride(positions=np.array([1, 2]))
    assert hook.start(2, 4, model.config.depth + 2, "cpu")
    act = torch.randn(2, 4, 16, 32)
    assert hook.apply(act, 0) is act and torch.equal(act[1, 2], act[0, 1])
    x = x.requires_grad_()
    model(x, t, g, lmk, anchor=AnchorOverride(positions=torch.tensor([1, 2]))).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[0, 1].abs().sum() > 0
    assert x.grad[1, 2].abs().sum() == 0  # row 1's anchor frame is overridden at the embedding: no gradient


def test_gradient_checkpointing_gives_the_same_gradients():
    x, t, g, lmk = inputs(B=2)
    grads = []
    for ckpt in (False, True):
        model = tiny_model(gradient_checkpointing=ckpt).train()
        model(x, t, g, lmk).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_save_and_load_roundtrip_and_errors(tmp_path):
    model = tiny_model()
    x, t, g, lmk = inputs(B=2)
    model.save_pretrained(tmp_path / "m")
    loaded = SDiT.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(x, t, g, lmk), model(x, t, g, lmk))
    with pytest.raises(CheckpointError, match="not found"):
        SDiT.from_pretrained(tmp_path / "missing")
    cfg_file = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "depth": 2}))
    with pytest.raises(CheckpointError, match="does not match"):
        SDiT.from_pretrained(tmp_path / "m")
    cfg_file.write_text(json.dumps({**cfg, "hidden_size": 64}))
    with pytest.raises(CheckpointError, match="does not match"):
        SDiT.from_pretrained(tmp_path / "m")
    cfg_file.write_text(json.dumps({**cfg, "widht": 3}))
    with pytest.raises(CheckpointError, match="not a valid sDiT config"):
        SDiT.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="not found"):
        SDiT.from_pretrained(tmp_path / "m")


def test_config_from_model_config():
    cfg = SDiTConfig.from_model_config(ModelConfig(preset="XL/2", num_frames=4), input_size=32, in_channels=4)
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size, cfg.num_frames) == (28, 1152, 16, 2, 4)
    cfg = SDiTConfig.from_model_config(ModelConfig(preset="B/4", depth=6), 32, 4)
    assert (cfg.depth, cfg.hidden_size, cfg.patch_size) == (6, 768, 4)
    custom = ModelConfig(preset="custom", hidden_size=256, depth=4, num_heads=4, patch_size=2)
    assert SDiTConfig.from_model_config(custom, 16, 48).hidden_size == 256
    with pytest.raises(AnchorfaceError, match="smaller than the 2x2x48 = 192 values of a patch"):
        SDiTConfig.from_model_config(ModelConfig(preset="custom", hidden_size=128, depth=4, num_heads=4,
                                                 patch_size=2), 16, 48)
    with pytest.raises(AnchorfaceError, match="needs model.depth"):
        SDiTConfig.from_model_config(ModelConfig(preset="custom", hidden_size=128, num_heads=4, patch_size=2),
                                     16, 48)
    with pytest.raises(AnchorfaceError, match="unknown model preset"):
        SDiTConfig.from_model_config(ModelConfig(preset="XXL/2"), 32, 4)
    with pytest.raises(AnchorfaceError, match="multiple of patch"):
        SDiTConfig.from_model_config(ModelConfig(preset="S/8"), 36, 4)


# DiT's published figures (Peebles & Xie, Table 4): parameters and GFLOPs of X/2 at 256x256 (32x32x4 latents).
DIT_PUBLISHED = {"S/2": (33e6, 6.06e9), "B/2": (130e6, 23.01e9), "L/2": (458e6, 80.71e9),
                 "XL/2": (675e6, 118.64e9)}


@pytest.mark.parametrize("preset", list(DIT_PUBLISHED))
def test_dit_parity_params_and_flops(preset):
    cfg = SDiTConfig(input_size=32, in_channels=4, learn_sigma=True, global_dim=0, num_frames=1, **PRESETS[preset])
    with torch.device("meta"):
        model = SDiT(cfg)
    params, flops = DIT_PUBLISHED[preset]
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - params) / params < 0.02
    # DiT also has a class-embedding table (1001 x D) that sDiT replaces by the mapping network
    assert abs(n + 1001 * cfg.hidden_size - params) / params < 0.01
    assert abs(flops_per_frame(cfg, 1) - flops) / flops < 0.002
    # the formula counts exactly what torch's counter sees (it counts 2 FLOPs per multiply-accumulate)
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 1, 4, 32, 32, device="meta"), torch.zeros(1, device="meta"))
    assert counter.get_total_flops() == 2 * flops_per_frame(cfg, 1)


def test_flop_formula_with_frames_and_conditioning():
    cfg = SDiTConfig(**TINY)
    with torch.device("meta"):
        model = SDiT(cfg)
    for T in (1, 3, 8):
        x, t, g, lmk = (v.to("meta") for v in inputs(B=2, T=T))
        with FlopCounterMode(display=False) as counter:
            model(x, t, g, lmk)
        assert counter.get_total_flops() == pytest.approx(2 * 2 * T * flops_per_frame(cfg, T), rel=1e-12)
    # attention grows with T: per-frame cost strictly increases
    assert flops_per_frame(cfg, 8) > flops_per_frame(cfg, 4) > flops_per_frame(cfg, 1)


@torch.no_grad()
def test_bf16_weights_and_autocast():
    model = tiny_model()
    x, t, g, lmk = inputs(B=2)
    ref = model(x, t, g, lmk)
    pos = torch.tensor([0, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        anchored = model(x, t, g, lmk, anchor=AnchorOverride(positions=pos))
        out = model(x, t, g, lmk)
    assert torch.equal(anchored[0, 0], anchored[1, 2])
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()
    out = model.to(torch.bfloat16)(x, t, g, lmk)  # float32 inputs are cast to the model's dtype
    assert out.dtype == torch.bfloat16 and (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_sdit_config_defaults_are_the_model_configs():
    """One source of truth: an SDiTConfig built without arguments is the default ModelConfig resolved."""
    default = ModelConfig()
    resolved = SDiTConfig.from_model_config(default, input_size=32, in_channels=4)
    assert resolved == SDiTConfig()
    assert resolved.hidden_size == PRESETS[default.preset]["hidden_size"]


def test_compile_blocks_keeps_the_state_dict_and_flash_check_on_cpu():
    from anchorface.methods.anchored.sdit import compile_blocks, flash_attention_in_use

    model = tiny_model()
    keys = list(model.state_dict())
    assert compile_blocks(model) is model and list(model.state_dict()) == keys  # compiled lazily, on first use
    assert flash_attention_in_use(tiny_model()) is False  # CPU: not tried


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash backend needs CUDA")
def test_flash_attention_in_use_with_bf16_on_cuda():
    from anchorface.methods.anchored.sdit import flash_attention_in_use

    model = tiny_model().cuda().to(torch.bfloat16)
    assert flash_attention_in_use(model)
    assert not flash_attention_in_use(tiny_model().cuda())  # float32: flash does not take it
