"""DiffusionAct (paper 003): the zero-convolution initialisation of E_r, DDIM inversion (Eq. 1-3), the DiffAE and
stage-1 training signals, the staged recipe through the training loop, and `reenact --method diffusionact` on a
real clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from anchorface.config import load_config
from anchorface.errors import AnchorfaceError, CheckpointError
from anchorface.methods.diffusionact.ddim import ddim_decode, ddim_invert, ddim_timesteps, linear_alphas_cumprod
from anchorface.methods.diffusionact.diffae import (ConditionalUNet, DiffAE, SemanticEncoder, psnr,
                                                    reconstruction_psnr)
from anchorface.methods.diffusionact.reenactment_encoder import ReenactmentEncoder
from helpers import one_line, short_clip

RES = 16  # test crops: 16 px


def micro_config(**diffusionact):
    """diffusionact-tiny narrowed for tests: 16 px crops, widths 8, a 16-dim z, T_tr = 2."""
    cfg = load_config("diffusionact-tiny")
    cfg.data.resolution = RES
    d = cfg.diffusionact
    d.semantic_dim, d.unet_channels, d.unet_mults, d.encoder_channels = 16, 8, "1,2", 8
    d.train_steps, d.steps, d.inversion_steps = 2, 2, 3
    for k, v in diffusionact.items():
        setattr(d, k, v)
    cfg.train.batch_size, cfg.train.warmup_steps, cfg.train.num_workers = 4, 0, 0
    return cfg


def randomise(module: torch.nn.Module, scale: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Every weight random (none zero), so that outputs depend on every input."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return module


# ------------------------------------------------------------------------------------------------- E_r at init

def test_reenactment_encoder_equals_encoder_at_init():
    torch.manual_seed(0)
    E = randomise(SemanticEncoder(z_dim=16, channels=8, resolution=RES))
    Er = ReenactmentEncoder.from_encoder(E, landmark_channels=3)
    x, y = torch.randn(3, 3, RES, RES), torch.rand(3, 3, RES, RES) + 0.5  # a landmark image, far from zero
    assert torch.equal(Er(x, y), E(x))  # exactly: the zero 1x1 convolution adds 0.0
    assert Er.encoder is not E and all(not torch.equal(a, torch.zeros_like(a)) for a in E.parameters())
    with torch.no_grad():
        Er.zero_conv.weight.add_(0.01)  # once trained, the landmarks change z_r (the check can fail)
    assert not torch.allclose(Er(x, y), E(x))


def test_training_model_reenact_encode_equals_encoder_at_init():
    """The recipe's E_r (E's weights + a zero offset, a zero conv) is E exactly until stage 1 trains it."""
    from anchorface.methods.diffusionact.training import DiffusionActModel

    torch.manual_seed(0)
    model = DiffusionActModel(micro_config())
    randomise(model.diffae.encoder)
    x, y = torch.randn(2, 3, RES, RES), torch.rand(2, 3, RES, RES)
    assert torch.equal(model.reenact_encode(x, y), model.diffae.encode(x))
    assert torch.equal(model.reenactment_encoder()(x, y), model.diffae.encode(x))  # the exported E_r too


# ------------------------------------------------------------------------------------------------- DDIM (Eq. 1-3)

@pytest.mark.parametrize("steps", [1, 8, 50])
def test_ddim_inversion_then_decoding_reconstructs_with_oracle_eps(steps):
    """With the oracle eps(x_t, t) = (x_t - sqrt(a_t) x_0) / sqrt(1 - a_t) (the closed form for a model that
    knows x_0), inversion and decoding follow x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps* and give x_0 back."""
    ac = linear_alphas_cumprod(1000)
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    calls = []

    def oracle(x, t):
        calls.append(int(t[0]))
        a = ac[t].float()[:, None, None, None]
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    x_T = ddim_invert(oracle, x0, ac, steps)
    assert (x_T - x0).abs().max() > 0.5  # x_T is not the image
    a_T = float(ac[999])
    eps_star = (x_T - a_T ** 0.5 * x0) / (1 - a_T) ** 0.5  # x_T sits on the oracle's path at t = T - 1
    assert torch.allclose(oracle(x_T, torch.full((2,), 999)), eps_star, atol=1e-5)
    back = ddim_decode(oracle, x_T, ac, steps)
    assert (back - x0).abs().max() < 1e-4
    assert calls[:steps] == [0] + ddim_timesteps(1000, steps)[:-1]  # Eq. 3: eps where x stands
    other = torch.rand_like(x0)
    assert (ddim_decode(oracle, torch.randn_like(x0), ac, steps) - x0).abs().max() < 1e-3  # decoding: x_0 of eps
    assert (back - other).abs().max() > 0.1


def test_ddim_timesteps_and_errors():
    assert ddim_timesteps(1000, 20)[0] == 0 and ddim_timesteps(1000, 20)[-1] == 999
    assert len(ddim_timesteps(1000, 50)) == 50 and ddim_timesteps(1000, 1) == [999]
    with pytest.raises(AnchorfaceError) as e:
        ddim_timesteps(1000, 0)
    assert "DDIM steps" in one_line(e)
    for bad in ((1000, 1e-4, 2.0), (10**12, 1e-4, 0.02), (1000, -1e-4, 0.02)):  # a corrupt checkpoint's schedule
        with pytest.raises(AnchorfaceError, match="diffusion"):
            linear_alphas_cumprod(*bad)


# ------------------------------------------------------------------------------------------------- training signals

def smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    """n smooth 16 px RGB images in [-1, 1] (random 4x4 patterns upsampled)."""
    gen = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, 4, 4, generator=gen) * 2 - 1
    return torch.nn.functional.interpolate(small, size=(RES, RES), mode="bilinear", align_corners=False)


def test_diffae_reconstruction_psnr_rises_in_a_short_training_run():
    torch.manual_seed(0)
    model = DiffAE(SemanticEncoder(16, 8, RES), ConditionalUNet(RES, 8, "1,2", 1, "", 16))
    x = smooth_images(8)
    before = reconstruction_psnr(model, x, t=250)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(150):
        t = torch.randint(0, 1000, (len(x),), generator=gen)
        loss = model.diffusion_loss(x, t, torch.randn(x.shape, generator=gen)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = reconstruction_psnr(model, x, t=250)
    assert after > before + 2.0, (before, after)
    assert psnr(x, x) > 100 and psnr(x, -x) < 10


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, synthetic_landmarks):
    """A synthetic pixel-codec dataset at 16 px in the real on-disk format: per clip a smooth image whose second
    pattern and landmarks move together over the frames (a stand-in for a face changing pose)."""
    from anchorface.data.dataset import DatasetWriter, data_signature
    from anchorface.frozen.codecs import PixelCodec

    root = tmp_path_factory.mktemp("diffusionact-data")
    cfg, rng = micro_config(), np.random.default_rng(0)
    with DatasetWriter(root, data_signature(cfg.data), (48, RES // 4, RES // 4)) as w:
        for i, n in enumerate((12, 20, 9)):
            base, move = smooth_images(2, seed=i)
            phase = torch.sin(torch.arange(n) / 3.0)
            px = (0.6 * base + 0.4 * phase[:, None, None, None] * move).clamp(-1, 1)
            lmk = synthetic_landmarks(n, rng) + 0.05 * phase.numpy()[:, None, None]
            crops = ((px + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            w.add_clip(f"clip{i}-000", PixelCodec(4).encode(px).numpy(), lmk.astype(np.float32), crops[0], crops[-1],
                       fps=25.0, source_video=f"clip{i}.mp4")
    return root


def test_pair_dataset_examples(pairs):
    from anchorface.methods.diffusionact.training import DiffusionActRecipe

    recipe = DiffusionActRecipe(micro_config(diffae_steps=1), pairs, holdout_videos=1)
    a, b = recipe.dataset[6], recipe.dataset[6]
    assert all(torch.equal(a[k], b[k]) for k in a)  # a pure function of (seed, k)
    assert a["source"].shape == (3, RES, RES) and a["target_landmarks"].shape == (3, RES, RES)
    assert not torch.equal(a["source"], a["target"])  # two distinct frames of one clip
    assert a["source"].abs().max() <= 1 and 0 <= float(a["target_mask"].min()) <= float(a["target_mask"].max()) <= 1
    assert a["target_landmarks"].max() > 0.5 and not bool(a["recon"]) and bool(recipe.dataset[7]["recon"])


def test_stage1_loss_falls(pairs):
    from anchorface.methods.diffusionact.training import DiffusionActRecipe

    torch.manual_seed(0)
    recipe = DiffusionActRecipe(micro_config(diffae_steps=1), pairs, holdout_videos=0)
    model = recipe.build_model()
    items = [recipe.dataset[k] for k in range(8)]
    batch = {k: torch.stack([i[k] for i in items]) for k in items[0]}
    # E first learns to see the image (z = 5 x the 4x4 colour layout), as a trained DiffAE encoder does: a random
    # encoder maps every frame to nearly the same z, leaving stage 1 nothing to learn
    E, images = model.diffae.encoder, torch.cat([batch["source"], batch["target"]])
    layout = 5 * torch.nn.functional.adaptive_avg_pool2d(images, 4).flatten(1)[:, :16]
    opt = torch.optim.Adam(E.parameters(), lr=3e-3)
    for _ in range(100):
        opt.zero_grad()
        (E(images) - layout).pow(2).mean().backward()
        opt.step()
    frozen = {n: p.detach().clone() for n, p in model.diffae.encoder.named_parameters()}
    model.zero_grad(set_to_none=True)
    opt = torch.optim.AdamW(recipe.param_groups(model)[2]["params"], lr=1e-3)
    losses = []
    for _ in range(40):
        out = model(batch, "pretrain")
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["latent_l1"]))
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    assert all(torch.equal(p, frozen[n]) for n, p in model.diffae.encoder.named_parameters())  # E stays frozen
    assert all(p.grad is None for p in model.diffae.unet.parameters())  # the DDIM is not run in stage 1


def test_stage_rates_and_batch_split():
    from anchorface.methods.diffusionact.training import DiffusionActRecipe, Stages

    cfg = micro_config(diffae_steps=10, pretrain_steps=5)
    cfg.train.max_steps = 20
    st = Stages.from_config(cfg)
    assert [st.stage(s) for s in (0, 9, 10, 14, 15, 19)] == ["diffae"] * 2 + ["pretrain"] * 2 + ["reenact"] * 2
    recipe = DiffusionActRecipe.__new__(DiffusionActRecipe)
    recipe.cfg, recipe.stages = cfg, st
    d = cfg.diffusionact
    assert recipe.rates(0) == {"encoder": d.diffae_lr, "unet": d.diffae_lr, "reenact": 0.0}
    assert recipe.rates(12) == {"encoder": 0.0, "unet": 0.0, "reenact": d.pretrain_lr}
    assert recipe.rates(17) == {"encoder": 0.0, "unet": d.finetune_lr, "reenact": d.reenact_lr}
    assert [recipe.ema_updates(s) for s in (3, 10, 16)] == [3, 0, 1]


def test_train_all_stages_through_the_loop(pairs, tmp_path):
    """`anchorface train --config diffusionact-*`: the three stages in one run, their loss terms in the log, and
    a from_pretrained checkpoint whose E_r is E + the trained offset."""
    from anchorface.methods.diffusionact.checkpoint import load_checkpoint
    from anchorface.training.loop import read_log, train

    cfg = micro_config(diffae_steps=2, pretrain_steps=2)
    cfg.train.max_steps, cfg.train.log_every, cfg.train.ckpt_every, cfg.train.sample_every = 6, 1, 6, 6
    out = train(cfg, pairs, tmp_path / "run", progress=False)
    log = read_log(tmp_path / "run" / "log.csv")
    assert [r["diffusion"] > 0 for r in log] == [True] * 2 + [False] * 4
    assert [r["latent_l1"] > 0 for r in log][2:4] == [True, True] and all(r["pix"] > 0 for r in log[4:])
    assert log[0]["lr_reenact"] == 0 and log[2]["lr"] == 0 and log[4]["lr_unet"] == cfg.diffusionact.finetune_lr
    got, E, _, Er = load_checkpoint(out["checkpoint"])
    assert got.method == "diffusionact" and (tmp_path / "run" / "samples" / "step-0000006.png").exists()
    x, y = torch.randn(1, 3, RES, RES), torch.rand(1, 3, RES, RES)
    assert not torch.allclose(Er(x, y), E(x))  # stages 1-2 moved E_r away from E


def test_stages_train_under_ddp(pairs, tmp_path):
    """2 processes (torchrun, gloo): every stage leaves some parameters without a gradient (stage 1 E_r, stage 2
    the DiffAE), which DDP refuses unless told to look for them; the run crosses both stage boundaries."""
    import os
    import subprocess
    import sys

    from anchorface.config import save_config
    from anchorface.training.loop import read_log

    cfg = micro_config(diffae_steps=2, pretrain_steps=2)
    cfg.train.max_steps, cfg.train.log_every, cfg.train.ckpt_every, cfg.train.sample_every = 6, 1, 6, 0
    save_config(cfg, tmp_path / "micro.yaml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",  # (a free port)
           "-m", "anchorface.apps.cli",
           "train", "--config", str(tmp_path / "micro.yaml"), "--data", str(pairs), "--output",
           str(tmp_path / "run"), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = read_log(tmp_path / "run" / "log.csv")
    assert len(log) == 6 and log[0]["diffusion"] > 0 and log[2]["latent_l1"] > 0 and log[5]["pix"] > 0


def test_config_errors(pairs):
    from anchorface.methods.diffusionact.training import DiffusionActRecipe

    for change, words in (({"reenact_batch": 3}, "reenact_batch"), ({"pixel_loss": "l3"}, "pixel_loss"),
                          ({"diffae_steps": 0}, "diffae_checkpoint"), ({"encoder_channels": 12}, "multiple of 8"),
                          ({"landmark_channels": 1}, "landmark_channels must be 3")):
        with pytest.raises(AnchorfaceError) as e:
            DiffusionActRecipe(micro_config(**change), pairs)
        assert words in one_line(e)
    cfg = micro_config()
    cfg.train.grad_accum = 4  # reenact_batch 4 over 4 micro-batches: 1 example each, no pair
    with pytest.raises(AnchorfaceError) as e:
        DiffusionActRecipe(cfg, pairs)
    assert "multiple of 2 x processes x grad_accum (8)" in one_line(e)
    # widths the attention's 32-channel heads do not divide (104 -> 3 heads) build; another DiffAE is refused
    DiffusionActRecipe(micro_config(unet_channels=104, unet_mults="1"), pairs).build_model()
    other = pairs.parent / "other-diffae"
    from anchorface.methods.diffusionact.checkpoint import save_checkpoint
    from anchorface.methods.diffusionact.training import DiffusionActModel

    small = micro_config()
    model = DiffusionActModel(small)
    save_checkpoint(other, small, model.diffae.encoder, model.diffae.unet, None)
    with pytest.raises(AnchorfaceError) as e:
        DiffusionActRecipe(micro_config(diffae_checkpoint=str(other), unet_channels=16), pairs).build_model()
    assert "does not fit" in one_line(e) and "size mismatch" in one_line(e)
    cfg = micro_config(diffae_steps=1)
    cfg.data.codec = "sd-vae"
    with pytest.raises(AnchorfaceError) as e:
        DiffusionActRecipe(cfg, pairs)
    assert "pixel" in one_line(e)


# ------------------------------------------------------------------------------------------------- reenact (real clip)

CLIP_FRAMES = 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised DiffusionAct checkpoint at 32 px (every weight random)."""
    from anchorface.methods.diffusionact.checkpoint import save_checkpoint
    from anchorface.methods.diffusionact.training import DiffusionActModel

    cfg = micro_config()
    cfg.data.resolution = 32
    torch.manual_seed(0)
    model = DiffusionActModel(cfg)
    with torch.no_grad():  # the zero-initialised layers made random (the others keep PyTorch's scaled init)
        for p in model.diffae.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    randomise(model.zero_conv, 1.0, seed=1)
    return save_checkpoint(tmp_path_factory.mktemp("da") / "ckpt", cfg, model.diffae.encoder, model.diffae.unet,
                           model.reenactment_encoder())


@pytest.fixture(scope="module")
def driving(tmp_path_factory, face_corpus):
    src = face_corpus / "driving/d20.mp4"
    out = tmp_path_factory.mktemp("clip") / "d20_short.mp4"
    return short_clip(src, out, CLIP_FRAMES)


def run_reenact(capsys, *args):
    from anchorface.apps.cli import main

    code = main(["reenact", "--method", "diffusionact", *map(str, args), "--quiet"])
    return code, capsys.readouterr().err


def test_reenact_writes_video_on_a_real_clip(checkpoint, driving, face_corpus, tmp_path, capsys):
    from anchorface.io.video import iter_frames, probe_video

    out = tmp_path / "out.mp4"
    from anchorface.apps.cli import main

    code = main(["reenact", "--method", "diffusionact", str(face_corpus / "source/s1.jpg"), str(driving), "-o",
                 str(out), "--checkpoint", str(checkpoint), "--steps", "2", "--inversion-steps", "3"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "DDIM 3 inversion / 2 decoding steps" in err  # (both options reached the method)
    info = probe_video(out)
    frames = list(iter_frames(out))
    assert info.num_frames == len(frames) == CLIP_FRAMES and (info.width, info.height) == (32, 32)
    assert all(f.std() > 1 for f in frames)  # images, not a blank (that the motion moves them: the render test)


def test_render_is_streamed_and_repeatable(checkpoint):
    """Frame t depends only on (source, landmarks of t): rendering a clip, or a part of it, gives the same
    frames; the stream restarts."""
    from anchorface.methods.base import DrivingClip, Source
    from anchorface.methods.diffusionact.pipeline import DiffusionAct

    method = DiffusionAct.from_pretrained(checkpoint)
    rng = np.random.default_rng(0)
    motion = (0.5 + rng.normal(0, 0.1, size=(6, 478, 3))).astype(np.float32)
    image = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    source = Source(image=image, box=_full_box(image))
    full = DrivingClip.from_frames([image] * 6, np.zeros((6, 4)), motion=motion)
    part = DrivingClip.from_frames([image] * 2, np.zeros((2, 4)), motion=motion[3:5])
    r = method.render(source, full, progress=False, steps=2, inversion_steps=3)
    a, b = r.array(), r.array()
    assert np.array_equal(a, b) and a.shape == (6, 32, 32, 3)
    assert np.abs(method.render(source, part, progress=False, steps=2, inversion_steps=3).array().astype(int)
                  - a[3:5].astype(int)).max() <= 1
    assert not np.array_equal(a[0], a[1])


def _full_box(image):
    from anchorface.methods.flow import full_frame_box

    return full_frame_box(image.shape[:2])


def test_bad_inputs_are_one_line_errors(checkpoint, driving, face_corpus, tmp_path, capsys, tiny_checkpoint):
    from anchorface.methods.diffusionact.checkpoint import load_checkpoint, read_config
    from anchorface.methods.diffusionact.pipeline import DiffusionAct

    out = tmp_path / "out.mp4"
    photo = face_corpus / "source/s1.jpg"
    for args, words in (
            (["--checkpoint", tiny_checkpoint], "checkpoint of method anchored"),
            (["--checkpoint", checkpoint, "--merge", "anchored"], "takes no option merge"),
            (["--checkpoint", checkpoint, "--inversion-steps", "100000"], "inversion_steps must be an integer in"),
            (["--checkpoint", tmp_path / "missing"], "missing"),
            (["--checkpoint", checkpoint, "--text", "a statue"], "takes no text")):
        code, err = run_reenact(capsys, *([] if "--text" in args else [photo]), driving, "-o", out, *args)
        assert code == 1 and words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()
    method = DiffusionAct.from_pretrained(checkpoint)
    with pytest.raises(AnchorfaceError) as e:
        method.check(steps=0)
    assert "steps" in one_line(e)
    with pytest.raises(CheckpointError) as e:
        read_config(tiny_checkpoint)
    assert "anchored" in one_line(e)
    (tmp_path / "last.ckpt").write_bytes(b"a Lightning pickle")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "last.ckpt")
    assert "BeatGANsAutoencModel" in one_line(e)


def test_registered_and_evaluate_matches_checkpoints_to_methods(checkpoint, tiny_checkpoint):
    from anchorface.evaluation.protocols import checkpoint_owners
    from anchorface.methods.registry import get_method, method_names

    assert "diffusionact" in method_names(baselines=False)
    specs = [get_method("anchored"), get_method("diffusionact")]
    owners = checkpoint_owners([tiny_checkpoint, checkpoint], specs)
    assert owners == {tiny_checkpoint: "anchored", checkpoint: "diffusionact"}
    with pytest.raises(AnchorfaceError) as e:
        checkpoint_owners([checkpoint], specs)
    assert "no --checkpoint of method anchored" in one_line(e)
    with pytest.raises(AnchorfaceError) as e:
        checkpoint_owners([checkpoint], [get_method("anchored")])
    assert "of method diffusionact" in one_line(e)


def test_presets_load():
    for name in ("diffusionact-tiny", "diffusionact-paper"):
        cfg = load_config(name)
        assert cfg.method == "diffusionact"
    paper = load_config("diffusionact-paper").diffusionact
    assert (paper.pretrain_lr, paper.reenact_lr, paper.finetune_lr, paper.reenact_batch, paper.train_steps) == \
        (1e-3, 1e-4, 1e-5, 4, 8)
    assert load_config("diffusionact-paper").train.batch_size == 32 and paper.semantic_dim == 512
    assert yaml.safe_load  # (presets are YAML)


def test_a_checkpoint_whose_parts_disagree_is_a_one_line_error(checkpoint, tmp_path):
    """A hand-edited or mixed-up checkpoint (the config's resolution, or E_r from another run) fails on loading, not
    with a tensor-shape traceback in the middle of a video."""
    import json
    import shutil

    from anchorface.methods.diffusionact.checkpoint import load_checkpoint
    from anchorface.methods.diffusionact.reenactment_encoder import ReenactmentEncoder

    edited = tmp_path / "edited"
    shutil.copytree(checkpoint, edited)
    d = json.loads((edited / "anchorface.json").read_text())
    d["config"]["data"]["resolution"] = 64  # the weights are 32 px
    (edited / "anchorface.json").write_text(json.dumps(d))
    mixed = tmp_path / "mixed"
    shutil.copytree(checkpoint, mixed)
    config = json.loads((mixed / "reenactment_encoder/config.json").read_text())
    ReenactmentEncoder(**{k: v for k, v in config.items() if k != "type"} | {"z_dim": 3}).save_pretrained(
        mixed / "reenactment_encoder")
    for bad, key in ((edited, "resolution"), (mixed, "z_dim")):
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(bad)
        assert f"disagree on {key}" in one_line(e), one_line(e)
