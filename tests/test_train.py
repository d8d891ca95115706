"""`anchorface train`: parameter groups, EMA, exact resume after SIGKILL, checkpoints (§4.1, App. D)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from anchorface.methods.anchored.checkpoint import load_checkpoint
from anchorface.config import load_config
from anchorface.errors import AnchorfaceError
from anchorface.training.loop import EMA, build_denoiser, param_groups, read_log, example_noise, train

# A micro model: 2 layers, width 48, patch 1, 16x16 crops -> 4x4x48 pixel-codec latents, learned G, T = 4.
MICRO = {
    "model": {"preset": "custom", "hidden_size": 48, "depth": 2, "num_heads": 2, "patch_size": 1, "num_frames": 4,
              "global_dim": 16, "mapping_blocks": 1},
    "data": {"resolution": 16, "codec": "pixel", "pixel_factor": 4, "encoder": "learned"},
    "train": {"batch_size": 4, "lr": 1.0e-3, "max_steps": 16, "warmup_steps": 3, "ema_decay": 0.99, "num_workers": 0,
              "log_every": 1, "ckpt_every": 2, "sample_every": 8, "sample_steps": 4},
}


@pytest.fixture(scope="module")
def micro(tmp_path_factory, write_synthetic_dataset):
    root = tmp_path_factory.mktemp("micro")
    (root / "micro.yaml").write_text(yaml.safe_dump(MICRO))
    cfg = load_config(root / "micro.yaml")
    write_synthetic_dataset(root / "data", cfg, num_clips=4, frames=(12, 20, 9, 15))
    return root, cfg


def test_param_groups_and_ema(micro):
    _, cfg = micro
    model = build_denoiser(cfg, (48, 4, 4))
    groups = param_groups(model, lr=1e-3, mapping_lr_scale=0.1)
    assert [g["name"] for g in groups] == ["main", "mapping"]
    assert groups[1]["lr"] == pytest.approx(1e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # every parameter exactly once
    assert {id(p) for p in model.sdit.mapping.parameters()} == {id(p) for p in groups[1]["params"]}
    assert {id(p) for p in model.encoder.parameters()} <= {id(p) for p in groups[0]["params"]}  # learned G

    ema = EMA(model, decay=0.75)
    before = [p.detach().clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, 1000)  # past the warm-up: the configured decay
    for e, b, p in zip(ema.model.parameters(), before, model.parameters()):
        torch.testing.assert_close(e, 0.75 * b + 0.25 * p)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10) == pytest.approx(11 / 20)  # warm-up
    before = [p.detach().clone() for p in ema.model.parameters()]
    ema.update(model, 0)  # first update: decay 0.1, the average jumps most of the way to the weights
    for e, b, p in zip(ema.model.parameters(), before, model.parameters()):
        torch.testing.assert_close(e, 0.1 * b + 0.9 * p)


def test_example_noise_depends_only_on_the_example():
    t1, n1 = example_noise(0, torch.arange(6), (4, 2, 2, 2), 1000)
    t2, n2 = example_noise(0, torch.tensor([3, 4]), (4, 2, 2, 2), 1000)  # the same examples, another batch split
    assert torch.equal(t1[3:5], t2) and torch.equal(n1[3:5], n2)
    t3, n3 = example_noise(1, torch.arange(6), (4, 2, 2, 2), 1000)
    assert not torch.equal(n1, n3) and t1.min() >= 0 and t1.max() < 1000
    assert len(set(t1.tolist())) > 1 and not torch.equal(n1[0], n1[1])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "anchorface.apps.cli", "train", *args, "--deterministic", "--quiet"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


@pytest.fixture(scope="module")
def reference(micro):
    """The uninterrupted run of the micro config."""
    root, _ = micro
    out = root / "ref"
    subprocess.run(_cli("--config", str(root / "micro.yaml"), "--data", str(root / "data"), "--output", str(out)),
                   env=_env(), check=True, capture_output=True, timeout=300)
    return out


def test_sigkill_and_resume_continues_exactly(micro, reference):
    root, _ = micro
    cfg_path, data = root / "micro.yaml", root / "data"
    ref, run = reference, root / "run"
    common = ["--config", str(cfg_path), "--data", str(data)]

    # the same run, killed with SIGKILL once a checkpoint exists
    proc = subprocess.Popen(_cli(*common, "--output", str(run)), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (run / "latest").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = int((run / "latest").read_text().strip().split("-")[1])
    assert 2 <= killed_at < 16

    # resume: the step count continues and the losses equal the uninterrupted run's
    out = subprocess.run(_cli(*common, "--output", str(run), "--resume"), env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"at step {killed_at}" in out.stderr
    a, b = read_log(ref / "log.csv"), read_log(run / "log.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 17))  # no step repeated or lost
    for key in ("loss", "mse", "vb", "lr", "lr_mapping"):
        np.testing.assert_array_equal([r[key] for r in b], [r[key] for r in a], err_msg=key)  # bitwise
    assert len({round(r["loss"], 6) for r in a}) > 12  # the loss really changes from step to step

    # the final checkpoints (EMA weights) agree too, and load as from_pretrained directories
    for part in ("sdit", "global_encoder"):
        wa, wb = load_file(ref / "checkpoint-0000016" / part / "model.safetensors"), \
            load_file(run / "checkpoint-0000016" / part / "model.safetensors")
        for k in wa:
            assert torch.equal(wb[k], wa[k]), k
    cfg, sdit, encoder = load_checkpoint(run / "checkpoint-0000016")
    assert cfg.model.depth == 2 and encoder is not None and sdit.config.hidden_size == 48
    assert (run / "latest").read_text().strip() == "checkpoint-0000016"
    assert not list(run.glob(".*partial*"))
    assert len(list(ref.glob("checkpoint-*/sdit"))) == 8  # every checkpoint keeps its EMA weights,
    assert len(list(ref.glob("checkpoint-*/training_state"))) == 2  # only the newest 2 their training state

    # previews: 2 held-out examples x (driving, generated) rows of 16 px, source + T = 4 columns
    from anchorface.io.video import load_image

    grid = load_image(ref / "samples" / "step-0000008.png")
    assert grid.shape == (2 * 2 * 16, 5 * 16, 3)


def test_refuses_to_overwrite_a_run(micro, tmp_path):
    root, cfg = micro
    (tmp_path / "latest").write_text("checkpoint-0000002\n")
    with pytest.raises(AnchorfaceError, match="--resume"):
        train(cfg, root / "data", tmp_path, progress=False)


def test_processes_and_accumulation_do_not_change_the_run(micro, reference):
    """2 processes (DDP, gloo) x 2 accumulation micro-steps x 1 sample = the same global batch of 4 examples with
    the same noise: the losses equal the single-process run's up to float reduction order."""
    root, _ = micro
    out = root / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "anchorface.apps.cli", "train",
           "--config", str(root / "micro.yaml"), "--data", str(root / "data"), "--output", str(out),
           "--grad-accum", "2", "--sample-every", "0", "--ckpt-every", "100", "--quiet"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes x 2 accumulation x 1" in proc.stderr
    a, b = read_log(reference / "log.csv"), read_log(out / "log.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for key in ("loss", "mse", "vb"):
        np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("args,message", [
    (["--batch-size", "0"], "--batch-size / train.batch_size must be >= 1, got 0"),
    (["--log-every", "0"], "train.log_every must be >= 1"),
    (["--lr", "0"], "train.lr must be positive"),
    (["--keep-states", "-1"], "--keep-states must be >= 0"),
    (["--output-is-a-file"], "exists and is not a directory"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, args, message):
    from anchorface.apps.cli import main

    output = tmp_path / "run"
    if args == ["--output-is-a-file"]:
        output.write_text("not a folder")
        args = []
    code = main(["train", "--data", str(tmp_path / "no-data"), "--output", str(output), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err
