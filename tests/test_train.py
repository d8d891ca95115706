"""`anchorface train`: parameter groups, EMA, exact resume after SIGKILL, checkpoints (§4.1, App. D)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from anchorface.config import load_config
from anchorface.errors import AnchorfaceError
from anchorface.methods.anchored.checkpoint import load_checkpoint
from anchorface.methods.anchored.training import build_denoiser, example_noise, param_groups
from anchorface.training.loop import EMA, read_log, train

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
    from anchorface.io.images import load_image

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
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",  # (a free port)
           "-m", "anchorface.apps.cli", "train",
           "--config", str(root / "micro.yaml"), "--data", str(root / "data"), "--output", str(out),
           "--grad-accum", "2", "--sample-every", "0", "--ckpt-every", "100", "--quiet"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes x 2 accumulation x 1" in proc.stderr
    a, b = read_log(reference / "log.csv"), read_log(out / "log.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for key in ("loss", "mse", "vb"):
        np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("args,message", [  # options out of range are refused by argparse (exit 2), the rest exit 1
    (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got 0"),
    (["--log-every", "0"], "argument --log-every: expected an integer >= 1, got 0"),
    (["--lr", "0"], "argument --lr: expected a positive number, got 0"),
    (["--keep-states", "-1"], "argument --keep-states: expected an integer >= 0, got -1"),
    (["--output-is-a-file"], "exists and is not a directory"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, args, message):
    from anchorface.apps.cli import main

    output = tmp_path / "run"
    if args == ["--output-is-a-file"]:
        output.write_text("not a folder")
        args = []
    try:
        code = main(["train", "--data", str(tmp_path / "no-data"), "--output", str(output), "--quiet", *args])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code in (1, 2) and message in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("anchorface: error: ")


# --------------------------------------------------------------------------------------------------------------
# The loop is method-agnostic: a second recipe, defined here
# --------------------------------------------------------------------------------------------------------------

class Crash(Exception):
    """A training run dying mid-way."""


class RegressionExamples(torch.utils.data.Dataset):
    """Example k: x ~ N(0, I_4) drawn from (seed, k) alone, y = A x + b."""

    A, b = torch.linspace(-1.0, 1.0, 8).reshape(2, 4), torch.tensor([0.5, -0.25])

    def __init__(self, seed: int):
        self.seed = seed

    def __getitem__(self, k: int) -> dict:
        x = torch.randn(4, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + int(k)))
        return {"x": x, "y": self.A @ x + self.b, "index": torch.tensor(int(k))}


class RegressionRecipe:
    """A tiny MLP regression method: everything the loop needs, nothing of the sDiT."""

    log_terms = ("mae",)
    crash_at = None  # first example counter k whose loss raises Crash (None: never)

    def __init__(self, cfg, data_dir, holdout_videos=1):
        self.cfg, self.dataset = cfg, RegressionExamples(cfg.train.seed)

    @staticmethod
    def read_config(checkpoint):
        return load_config(checkpoint / "config.yaml")

    def summary(self):
        return "y = A x + b"

    def build_model(self):
        return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))

    def param_groups(self, model):
        lr = self.cfg.train.lr
        return [{"params": list(model[0].parameters()), "lr": lr, "name": "main"},
                {"params": list(model[2].parameters()), "lr": lr / 2, "name": "head"}]

    def loss(self, model, batch):
        if self.crash_at is not None and int(batch["index"].max()) >= self.crash_at:
            raise Crash
        err = model(batch["x"]) - batch["y"]
        return {"loss": err.pow(2).mean(1), "mae": err.abs().mean(1)}

    def previewer(self, device):
        x = torch.linspace(-2.0, 2.0, 16)[:, None].expand(16, 4).to(device)

        def preview(model):  # rows: inputs; columns: prediction, target (grey levels)
            with torch.no_grad():
                pair = torch.stack([model(x), x @ RegressionExamples.A.T.to(device) + RegressionExamples.b.to(device)],
                                   1).reshape(16, 4)
            grey = ((pair.clamp(-4, 4) + 4) / 8 * 255).round().to(torch.uint8).cpu().numpy()
            return np.repeat(grey[:, :, None], 3, axis=2)

        return preview

    def export(self, model, directory):
        from safetensors.torch import save_file

        from anchorface.config import save_config

        directory.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
        save_config(self.cfg, directory / "config.yaml")

    def restore(self, model, directory):
        model.load_state_dict(load_file(directory / "model.safetensors"))


def _regression_config():
    cfg = load_config("tiny")
    cfg.train.__dict__.update(batch_size=8, grad_accum=2, lr=0.05, max_steps=40, warmup_steps=0, ema_decay=0.9,
                              num_workers=0, log_every=1, ckpt_every=5, sample_every=20, seed=3)
    return cfg


def test_the_loop_trains_another_method_and_resumes_it_exactly(tmp_path, capsys):
    ref, run = tmp_path / "ref", tmp_path / "run"
    out = train(_regression_config(), tmp_path / "unused", ref, progress=False, recipe=RegressionRecipe)
    assert out["step"] == 40 and out["checkpoint"] == ref / "checkpoint-0000040"
    a = read_log(ref / "log.csv")
    assert list(a[0]) == ["step", "loss", "mae", "lr", "lr_head", "samples_per_s", "elapsed_s"]
    assert [r["step"] for r in a] == list(range(1, 41))
    first, last = np.mean([r["loss"] for r in a[:5]]), np.mean([r["loss"] for r in a[-10:]])
    assert last < 0.2 * first, (first, last)  # it learns
    assert all(r["lr_head"] == pytest.approx(r["lr"] / 2) for r in a) and a[-1]["lr"] < a[0]["lr"]  # cosine
    from anchorface.io.images import load_image

    assert load_image(ref / "samples" / "step-0000020.png").shape == (16, 4, 3)  # the recipe's previews
    assert "train: y = A x + b" in capsys.readouterr().err

    class Crashing(RegressionRecipe):
        crash_at = 13 * 8  # the first example of step 14 (global batch 8): after checkpoint-0000010

    with pytest.raises(Crash):
        train(_regression_config(), tmp_path / "unused", run, progress=False, recipe=Crashing)
    assert (run / "latest").read_text().strip() == "checkpoint-0000010"
    assert [r["step"] for r in read_log(run / "log.csv")] == list(range(1, 14))

    out = train(_regression_config(), tmp_path / "unused", run, resume="auto", progress=False,
                recipe=RegressionRecipe)
    assert "at step 10" in capsys.readouterr().err and out["step"] == 40
    b = read_log(run / "log.csv")
    assert [r["step"] for r in b] == list(range(1, 41))  # no step repeated or lost
    for key in ("loss", "mae", "lr", "lr_head"):
        np.testing.assert_array_equal([r[key] for r in b], [r[key] for r in a], err_msg=key)
    wa, wb = (load_file(d / "checkpoint-0000040" / "model.safetensors") for d in (ref, run))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # the same EMA weights
    assert len(list(run.glob("checkpoint-*/training_state"))) == 2


def test_config_method_picks_the_recipe(tmp_path, capsys):
    import anchorface
    from anchorface.apps.cli import main
    from anchorface.methods.anchored.checkpoint import read_config
    from anchorface.methods.anchored.training import AnchoredRecipe
    from anchorface.training.recipe import recipe_class

    demo = read_config(Path(anchorface.__file__).parent / "assets" / "demo")  # a manifest from before Config.method
    assert demo.method == "anchored" and recipe_class(demo.method) is AnchoredRecipe
    (tmp_path / "other.yaml").write_text("method: nonesuch\n")
    code = main(["train", "--config", str(tmp_path / "other.yaml"), "--data", str(tmp_path / "data"),
                 "--output", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "method 'nonesuch' has no training recipe; trainable methods: anchored" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("field,value,message", [
    ("batch_size", 0, "train.batch_size must be >= 1"), ("log_every", 0, "train.log_every must be >= 1"),
    ("lr", 0.0, "train.lr must be positive"), ("max_steps", 0, "train.max_steps must be >= 1"),
    ("seed", -1, "train.seed must be >= 0"),
])
def test_bad_config_values_are_one_line_errors(tmp_path, field, value, message):
    from anchorface.training.loop import check_train_config

    cfg = load_config("tiny")
    setattr(cfg.train, field, value)
    with pytest.raises(AnchorfaceError, match=message):
        check_train_config(cfg.train)


def test_init_from_fine_tunes_a_checkpoint(micro, reference, tmp_path, capsys):
    """`train --init-from CKPT`: a new run whose model starts from CKPT's weights (with a vanishing rate its export
    is CKPT's weights, a fresh run's is not); a checkpoint of another architecture, or with --resume, is one line."""
    from anchorface.apps.cli import main

    root, _ = micro
    ckpt = reference / (reference / "latest").read_text().strip()
    common = ["train", "--config", str(root / "micro.yaml"), "--data", str(root / "data"), "--max-steps", "1",
              "--lr", "1e-12", "--sample-every", "0", "--ckpt-every", "1", "--quiet"]
    assert main([*common, "--output", str(tmp_path / "tuned"), "--init-from", str(ckpt)]) == 0
    assert main([*common, "--output", str(tmp_path / "fresh")]) == 0
    _, start, _ = load_checkpoint(ckpt)
    (_, tuned, _), (_, fresh, _) = (load_checkpoint(tmp_path / run / "checkpoint-0000001") for run in ("tuned", "fresh"))
    w = lambda m: torch.cat([p.float().flatten() for p in m.parameters()])  # noqa: E731
    assert torch.allclose(w(tuned), w(start), atol=1e-3) and not torch.allclose(w(fresh), w(start), atol=1e-3)
    capsys.readouterr()
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**MICRO, "model": {**MICRO["model"], "hidden_size": 64}}))
    assert main(["train", "--config", str(other), "--data", str(root / "data"), "--output", str(tmp_path / "x"),
                 "--init-from", str(ckpt), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "its sDiT does not fit the model of this config" in err and "in the checkpoint, " in err
    assert len(err.splitlines()) == 1 and len(err) < 400
    assert main([*common, "--output", str(tmp_path / "z"), "--init-from", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert "not found" in err and "does not fit" not in err
    assert main([*common, "--output", str(tmp_path / "y"), "--init-from", str(ckpt), "--resume"]) == 1
    assert "give one of them" in capsys.readouterr().err
