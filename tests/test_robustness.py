"""Every failure a clear message (issue 11, item 6): numeric options finite and in range, truncated videos,
face-less stretches in `prepare`, SIGTERM and stale temporaries, OS / safetensors errors in one line, and a table
of hostile command lines that must each end in exactly one `anchorface: error:` line, never a traceback."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from anchorface.config import load_config
from anchorface.errors import AnchorfaceError

FACES = Path(__file__).resolve().parents[2] / "shared/data/faces"
SRC = Path(__file__).resolve().parents[1] / "src"
DRIVING = FACES / "driving/d0.mp4"
needs_faces = pytest.mark.skipif(not DRIVING.exists(), reason=f"real face corpus not found at {FACES}")


def tiny_pixel_cfg(res: int = 16):
    cfg = load_config("tiny")
    cfg.data.resolution, cfg.data.codec, cfg.data.pixel_factor, cfg.data.encoder = res, "pixel", 4, "learned"
    return cfg


def synthetic_dataset(root: Path, cfg, frames=(12, 9)) -> None:
    from anchorface.data.dataset import DatasetWriter, data_signature

    rng = np.random.default_rng(0)
    res, f = cfg.data.resolution, cfg.data.pixel_factor
    shape = (3 * f * f, res // f, res // f)
    with DatasetWriter(root, data_signature(cfg.data), shape) as w:
        for i, n in enumerate(frames):
            lmk = rng.uniform(0.3, 0.7, size=(n, 478, 3)).astype(np.float32)
            first, last = (rng.integers(0, 256, size=(res, res, 3), dtype=np.uint8) for _ in range(2))
            w.add_clip(f"clip{i}-000", rng.normal(size=(n, *shape)).astype(np.float32), lmk, first, last, fps=25.0,
                       source_video=f"clip{i}.mp4")


def cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m anchorface ARGS` as a user runs it (the console entry point: argv from the command line)."""
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "anchorface", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("anchorface: error: "), r.stderr[-3000:]
    return lines[0]


# --------------------------------------------------------------------------------------------------------------
# 1. Numeric options: one home for their types, finite and in range, for every command
# --------------------------------------------------------------------------------------------------------------

def _subparsers():
    from anchorface.apps.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def test_every_numeric_option_has_a_checked_type():
    """No command parses a number with a bare int/float (which take nan, inf and negative seeds)."""
    from anchorface.apps import arguments

    checked = {v for v in vars(arguments).values() if callable(v) and getattr(v, "__module__", "") ==
               arguments.__name__}
    numeric = 0
    for command, p in _subparsers().items():
        for action in p._actions:
            assert action.type not in (int, float), f"{command} {action.option_strings}: bare {action.type}"
            if action.type is not None and getattr(action.type, "__module__", "") == arguments.__name__:
                numeric += 1
    assert numeric >= 25 and checked


@pytest.mark.parametrize("argv", [
    ["reenact", "s.png", "d.mp4", "-o", "o.mp4", "--seed", "-1"],
    ["reenact", "s.png", "d.mp4", "-o", "o.mp4", "--seed", str(2**64)],
    ["reenact", "s.png", "d.mp4", "-o", "o.mp4", "--steps", "0"],
    ["reenact", "s.png", "d.mp4", "-o", "o.mp4", "--guidance-scale", "nan"],
    ["reenact", "s.png", "d.mp4", "-o", "o.mp4", "--guidance-scale", "-inf"],
    ["reenact", "s.png", "d.mp4", "-o", "o.mp4", "--edit-weight", "1.5"],
    ["reenact", "s.png", "d.mp4", "-o", "o.mp4", "--micro-batch", "-2"],
    ["demo", "--frames", "0"],
    ["demo", "--seed", "-3"],
    ["prepare", "v", "d", "--max-seconds", "inf"],
    ["prepare", "v", "d", "--max-seconds", "0"],
    ["train", "--data", "d", "--output", "o", "--max-steps", "0"],
    ["train", "--data", "d", "--output", "o", "--lr", "nan"],
    ["train", "--data", "d", "--output", "o", "--seed", "-1"],
    ["train", "--data", "d", "--output", "o", "--log-every", "0"],
    ["evaluate", "--checkpoint", "c", "--driving", "d", "-o", "r", "--seed", "-5"],
    ["evaluate", "--checkpoint", "c", "--driving", "d", "-o", "r", "--ablation-scales", "1", "nan"],
    ["evaluate", "--checkpoint", "c", "--driving", "d", "-o", "r", "--frames", "1"],
])
def test_bad_numbers_are_one_line_errors(argv, capsys):
    from anchorface.apps.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert len(err.splitlines()) == 1 and err.startswith(f"anchorface: error: {argv[0]}: argument "), err


def test_edit_weight_without_edit_is_refused(tmp_path, capsys):
    """--edit-weight weighs --edit's prompt: alone it would be silently ignored."""
    from anchorface.apps.cli import main

    out = tmp_path / "o.mp4"
    assert main(["reenact", "s.png", "d.mp4", "-o", str(out), "--edit-weight", "0.7"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "anchorface: error: --edit-weight needs --edit (the text prompt it weighs)" and not out.exists()


def test_largest_seed_is_accepted():
    from anchorface.apps.arguments import SEED_MAX, seed

    assert seed("0") == 0 and seed(str(SEED_MAX)) == SEED_MAX
    np.random.default_rng([SEED_MAX, 7])
    torch.Generator().manual_seed(SEED_MAX)


def test_config_numbers_must_be_finite(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  lr: .nan\n")
    with pytest.raises(AnchorfaceError, match="train.lr: expected a finite number"):
        load_config(tmp_path / "c.yaml")


# --------------------------------------------------------------------------------------------------------------
# 2. A truncated video (index at the front, data cut) is an error, not a short video
# --------------------------------------------------------------------------------------------------------------

def _remux(src: Path, dst: Path, faststart: bool) -> None:
    import av

    with av.open(str(src)) as i, av.open(str(dst), "w", options={"movflags": "faststart"} if faststart else {}) as o:
        s_in = i.streams.video[0]
        s_out = o.add_stream_from_template(s_in)
        for p in i.demux(s_in):
            if p.dts is not None:
                p.stream = s_out
                o.mux(p)


@needs_faces
@pytest.mark.parametrize("faststart", [True, False], ids=["moov-first", "plain"])
def test_truncated_video_is_a_one_line_error(tmp_path, faststart):
    from anchorface.errors import VideoError
    from anchorface.io.video import iter_frames, probe_video

    whole, cut = tmp_path / "whole.mp4", tmp_path / "cut.mp4"
    _remux(DRIVING, whole, faststart)
    data = whole.read_bytes()
    assert (data.find(b"moov") < data.find(b"mdat")) == faststart
    cut.write_bytes(data[:int(len(data) * 0.6)])
    assert sum(1 for _ in iter_frames(whole)) == probe_video(whole).num_frames  # the whole file: no complaint
    with pytest.raises(VideoError) as e:
        for _ in iter_frames(cut):
            pass
    assert "\n" not in str(e.value) and str(cut) in str(e.value)
    if faststart:  # (without its index at the front, the cut file cannot even be opened)
        assert len(list(iter_frames(cut, max_frames=5))) == 5  # reading only the start is fine


def test_ended_early_tolerance():
    from anchorface.io.video import ended_early

    assert not ended_early(78, 78) and not ended_early(76, 78) and not ended_early(10, None)
    assert ended_early(75, 78) and ended_early(35, 78) and ended_early(970, 1000) and not ended_early(980, 1000)


# --------------------------------------------------------------------------------------------------------------
# 3. `prepare`: long stretches without a face are cut out and counted; skips are one-line notes
# --------------------------------------------------------------------------------------------------------------

def test_face_stretches():
    from anchorface.data.dataset import face_stretches

    f = np.ones(100, bool)
    assert face_stretches(f, 25) == ([(0, 100)], 0, 0)
    f[40:52] = False  # 12 frames = 0.48 s: kept (filled)
    assert face_stretches(f, 25) == ([(0, 100)], 0, 0)
    f[40:60] = False  # 20 frames = 0.8 s: cut
    assert face_stretches(f, 25) == ([(0, 40), (60, 100)], 1, 20)
    f[:30] = False  # a long face-less start too
    assert face_stretches(f, 25) == ([(30, 40), (60, 100)], 2, 50)
    assert face_stretches(np.zeros(10, bool), 25) == ([], 1, 10)


@pytest.fixture(scope="module")
def gap_videos(tmp_path_factory):
    """face.mp4: 20 frames of a face, 30 gray frames (1.2 s), 20 frames of a face; noface.mp4: no face at all."""
    if not DRIVING.exists():
        pytest.skip(f"real face corpus not found at {FACES}")
    from anchorface.io.video import VideoWriter, iter_frames

    root = tmp_path_factory.mktemp("gap")
    frames = list(iter_frames(DRIVING, max_frames=40))
    with VideoWriter(root / "face.mp4", 25) as w:
        for frame in frames[:20] + [np.full_like(frames[0], 128)] * 30 + frames[20:]:
            w.write(frame)
    with VideoWriter(root / "noface.mp4", 25) as w:
        for _ in range(4):
            w.write(np.full((64, 64, 3), 90, np.uint8))
    return root


def test_prepare_cuts_faceless_stretches(gap_videos, tmp_path):
    from anchorface.data.dataset import load_index, prepare_dataset
    from anchorface.errors import AnchorfaceWarning

    with pytest.warns(AnchorfaceWarning) as record:
        summary = prepare_dataset(gap_videos, tmp_path / "ds", tiny_pixel_cfg(32), max_seconds=10, progress=False)
    assert summary["skipped_no_face"] == 1 and summary["skipped_faceless_stretches"] == 1
    assert 25 <= summary["skipped_faceless_frames"] <= 32 and summary["frames"] == 70 - summary[
        "skipped_faceless_frames"]
    assert len(load_index(tmp_path / "ds")["clips"]) == 2  # split at the gap
    assert any("face.mp4: cut out 1 stretch" in str(w.message) for w in record)


@needs_faces
def test_prepare_cli_notes_are_one_line(gap_videos, tmp_path):
    r = cli("prepare", str(gap_videos), str(tmp_path / "ds"), "--config", "tiny", "--quiet", "--device", "cpu",
            cwd=tmp_path)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "warnings.warn" not in r.stderr and "UserWarning" not in r.stderr
    notes = [ln for ln in r.stderr.splitlines() if ln.startswith("anchorface: warning: ")]
    assert any("noface.mp4" in ln for ln in notes) and any("stretch" in ln for ln in notes), r.stderr[-3000:]


# --------------------------------------------------------------------------------------------------------------
# 4. SIGTERM cleans up like SIGINT; a re-run removes stale temporary dataset folders
# --------------------------------------------------------------------------------------------------------------

@needs_faces
def test_sigterm_removes_temporary_files(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("d9.mp4", "d14.mp4"):  # long enough that the run is still going when we stop it
        (videos / name).symlink_to(FACES / "driving" / name)
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "anchorface", "prepare", str(videos), str(tmp_path / "ds"),
                          "--config", "tiny", "--quiet", "--device", "cpu"], cwd=tmp_path, env=env,
                         stderr=subprocess.PIPE, text=True)
    try:
        while not list(tmp_path.glob(".ds.tmp-*")) and p.poll() is None:  # the run has started writing
            time.sleep(0.05)
        assert p.poll() is None, "prepare ended before it could be stopped"
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143 and err.strip() == "anchorface: terminated", (p.returncode, err[-3000:])
    assert sorted(x.name for x in tmp_path.iterdir()) == ["videos"]  # no dataset, no temporary folder


def test_rerun_removes_stale_temporary_dataset_folders(tmp_path):
    from anchorface.data.dataset import load_index

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    killed = tmp_path / ".ds.tmp-0badc0de"  # what a `prepare` killed with SIGKILL leaves
    (killed / "shards").mkdir(parents=True)
    (killed / "shards" / "shard-00000.safetensors").write_bytes(b"x" * 1000)
    (killed / ".writer-pid").write_text(f"{os.uname().nodename} {dead.pid}\n")
    bare = tmp_path / ".ds.tmp-12345678"  # killed before it wrote anything
    bare.mkdir()
    alive = tmp_path / ".ds.tmp-aaaaaaaa"  # another run, still going: left alone
    alive.mkdir()
    (alive / ".writer-pid").write_text(f"{os.uname().nodename} {os.getpid()}\n")
    other = tmp_path / ".other.tmp-0badc0de"  # another dataset's
    other.mkdir()

    synthetic_dataset(tmp_path / "ds", tiny_pixel_cfg())
    load_index(tmp_path / "ds")
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted(["ds", alive.name, other.name])


# --------------------------------------------------------------------------------------------------------------
# 5. OSError and SafetensorError: one-line AnchorfaceErrors
# --------------------------------------------------------------------------------------------------------------

def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def test_truncated_dataset_shard(tmp_path):
    from anchorface.data.dataset import ClipDataset, load_index

    synthetic_dataset(tmp_path / "ds", tiny_pixel_cfg())
    _truncate(next((tmp_path / "ds" / "shards").glob("*.safetensors")))
    with pytest.raises(AnchorfaceError, match="cannot read dataset shard .* truncated or corrupt") as e:
        load_index(tmp_path / "ds")
    assert "\n" not in str(e.value)
    with pytest.raises(AnchorfaceError):
        ClipDataset(tmp_path / "ds", 4, 0.0, 1.0, 0)


def _tiny_checkpoint(path: Path) -> Path:
    from anchorface.methods.anchored.checkpoint import save_checkpoint
    from anchorface.methods.anchored.global_encoder import LearnedGlobalEncoder
    from anchorface.methods.anchored.sdit import SDiT, SDiTConfig

    cfg = tiny_pixel_cfg()
    cfg.model.hidden_size, cfg.model.depth, cfg.model.num_heads, cfg.model.patch_size = 48, 1, 2, 1
    cfg.model.global_dim = 16
    torch.manual_seed(0)
    sdit = SDiT(SDiTConfig.from_model_config(cfg.model, input_size=4, in_channels=48))
    return save_checkpoint(path, cfg, sdit, LearnedGlobalEncoder(16, 16))


@pytest.mark.parametrize("part", ["sdit", "global_encoder"])
def test_truncated_checkpoint_weights(tmp_path, part):
    from anchorface.errors import CheckpointError
    from anchorface.methods.anchored.checkpoint import load_checkpoint

    ckpt = _tiny_checkpoint(tmp_path / "ckpt")
    _truncate(ckpt / part / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ckpt)
    assert "\n" not in str(e.value) and part in str(e.value)


def test_truncated_clip_weights(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    from anchorface.errors import MissingWeightsError
    from anchorface.frozen.encoders import CLIPGlobalEncoder

    CLIPModel(CLIPConfig(text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, max_position_embeddings=16),
                         vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, image_size=32, patch_size=8),
                         projection_dim=16)).save_pretrained(tmp_path / "clip")
    _truncate(tmp_path / "clip" / "model.safetensors")
    with pytest.raises(MissingWeightsError, match="truncated or corrupt") as e:
        CLIPGlobalEncoder(tmp_path / "clip")
    assert "\n" not in str(e.value)


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_a_dataset(tmp_path, monkeypatch):
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", _disk_full)
    with pytest.raises(AnchorfaceError, match="disk full") as e:
        synthetic_dataset(tmp_path / "ds", tiny_pixel_cfg())
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left


def test_disk_full_while_training(tmp_path, monkeypatch, capsys):
    import yaml

    import safetensors.torch
    from anchorface.apps.cli import main

    cfg = {"model": {"preset": "custom", "hidden_size": 48, "depth": 1, "num_heads": 2, "patch_size": 1,
                     "num_frames": 4, "global_dim": 16, "mapping_blocks": 1},
           "data": {"resolution": 16, "codec": "pixel", "pixel_factor": 4, "encoder": "learned"},
           "train": {"batch_size": 2, "max_steps": 1, "num_workers": 0, "log_every": 1, "ckpt_every": 1,
                     "sample_every": 0}}
    (tmp_path / "micro.yaml").write_text(yaml.safe_dump(cfg))
    synthetic_dataset(tmp_path / "data", load_config(tmp_path / "micro.yaml"))
    monkeypatch.setattr(safetensors.torch, "save_file", _disk_full)
    rc = main(["train", "--config", str(tmp_path / "micro.yaml"), "--data", str(tmp_path / "data"), "--output",
               str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("anchorface: error: cannot write checkpoint") and "disk full" in err[-1]
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".") or p.name.startswith("checkpoint")]


def test_checkpoint_path_that_is_a_file(tmp_path):
    from anchorface.errors import CheckpointError
    from anchorface.methods.anchored.checkpoint import latest_checkpoint, read_config

    (tmp_path / "ckpt").write_text("not a folder")
    for f in (read_config, latest_checkpoint):
        with pytest.raises(CheckpointError, match="is a file, expected a checkpoint directory"):
            f(tmp_path / "ckpt")


def test_cli_translates_stray_os_errors(monkeypatch, capsys):
    """Whatever OSError or SafetensorError a command lets through becomes one line, exit 1."""
    from safetensors import SafetensorError

    from anchorface.apps import cli, demo

    for exc in (OSError(errno.EROFS, os.strerror(errno.EROFS), "/x/y"), SafetensorError("header too large")):
        def boom(*args, exc=exc, **kwargs):
            raise exc

        monkeypatch.setattr(demo, "run_demo", boom)
        assert cli.main(["demo"]) == 1
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.startswith("anchorface: error: "), err


# --------------------------------------------------------------------------------------------------------------
# 6. Hostile command lines: exactly one `anchorface: error:` line, exit != 0, never a traceback
# --------------------------------------------------------------------------------------------------------------

@needs_faces
def test_hostile_command_lines(tmp_path):
    src = next((FACES / "source").iterdir())
    (tmp_path / "afile").write_text("x")
    synthetic_dataset(tmp_path / "data", tiny_pixel_cfg())
    _truncate(next((tmp_path / "data" / "shards").glob("*.safetensors")))
    cut = tmp_path / "cut.mp4"
    _remux(DRIVING, tmp_path / "fast.mp4", faststart=True)
    cut.write_bytes((tmp_path / "fast.mp4").read_bytes()[:1_500_000])
    ckpt = _tiny_checkpoint(tmp_path / "ckpt")
    _truncate(ckpt / "global_encoder" / "model.safetensors")
    readonly = "/sys/anchorface-test-output"  # not writable, even by root
    R = ["reenact", str(src), str(DRIVING), "-o", "out.mp4"]
    table = [
        (R + ["--seed", "-1"], "--seed"),
        (R + ["--guidance-scale", "nan"], "--guidance-scale"),
        (R + ["--checkpoint", "afile"], "is a file, expected a checkpoint directory"),
        (R + ["--checkpoint", str(ckpt)], "cannot be loaded"),
        (["reenact", str(src), str(cut), "-o", "out.mp4", "--steps", "1", "--device", "cpu", "--quiet"], "truncated"),
        (["demo", "--frames", "0"], "--frames"),
        (["demo", "-o", "afile"], "is a file, expected a folder"),
        (["demo", "-o", readonly], "cannot write the output folder"),
        (["demo", "--checkpoint", "afile"], "is a file, expected a checkpoint directory"),
        (["prepare", str(tmp_path), "ds", "--max-seconds", "nan"], "--max-seconds"),
        (["train", "--data", "data", "--output", "run", "--max-steps", "0"], "--max-steps"),
        (["train", "--data", "data", "--output", "run", "--config", "tiny"], "cannot read dataset shard"),
        (["train", "--data", "data", "--output", "run", "--resume", "afile"], "is a file"),
        (["evaluate", "--checkpoint", "afile", "--driving", str(DRIVING), "-o", "rep", "--protocol", "self"],
         "is a file"),
        (["evaluate", "--checkpoint", str(ckpt), "--driving", str(DRIVING), "-o", readonly, "--protocol", "self"], "cannot write"),
        (["evaluate", "--checkpoint", str(ckpt), "--driving", str(DRIVING), "-o", "afile/report", "--protocol",
          "self"], "afile"),
    ]
    for argv, expected in table:
        line = assert_one_error_line(cli(*argv, cwd=tmp_path))
        assert expected in line, (argv, line)
    assert not (tmp_path / "out.mp4").exists() and not list(tmp_path.glob(".*tmp*"))


def test_a_state_dict_mismatch_reads_as_one_line_naming_the_parameter():
    """PyTorch's message starts with a heading line ("Error(s) in loading state_dict for Linear:"); the one-line
    reason keeps the first item under it, which names the parameter and both shapes."""
    import torch

    from anchorface.errors import one_line

    with pytest.raises(RuntimeError) as e:
        torch.nn.Linear(3, 2).load_state_dict(torch.nn.Linear(4, 2).state_dict())
    line = one_line(e.value)
    assert "\n" not in line and line.startswith("Error(s) in loading state_dict for Linear:")
    assert "size mismatch for weight" in line and "torch.Size([2, 4])" in line and "(and 0 more)" not in line
