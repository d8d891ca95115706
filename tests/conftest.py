"""Shared test fixtures: the real face corpus, a tiny config, a tiny checkpoint, and TorchScript stand-ins with the
calling conventions of the FID / FVD feature networks. Test modules take these as fixtures and never import each
other."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

FACE_CORPUS_ENV = "ANCHORFACE_FACES"  # overrides the corpus location (default: ../shared/data/faces)
TINY_RES, TINY_FACTOR, TINY_GLOBAL = 32, 4, 16  # pixel codec: 48 x 8 x 8 latents; a 16-dim learned G


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture(scope="session")
def face_corpus() -> Path:
    """The real face corpus (`driving/*.mp4`, `source/*.jpg`; never committed): `../shared/data/faces` beside the
    checkout, or $ANCHORFACE_FACES. Missing, a test that needs it is skipped with the reason, except in CI
    (CI=true), where it fails: CI must run every test, not skip a third of them silently."""
    env = os.environ.get(FACE_CORPUS_ENV)
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"
    if (path / "driving").is_dir() and (path / "source").is_dir():
        return path
    why = (f"real face corpus not found at {path} (driving/*.mp4 and source/*.jpg: ../shared/data/faces beside "
           f"the checkout, or set {FACE_CORPUS_ENV})")
    if in_ci():
        pytest.fail(f"{why}; CI=true runs every test", pytrace=False)
    pytest.skip(why)


def _tiny_config(encoder: str = "learned"):
    from anchorface.config import load_config

    cfg = load_config("tiny")
    cfg.model.hidden_size, cfg.model.depth, cfg.model.num_heads, cfg.model.global_dim = 48, 2, 2, TINY_GLOBAL
    cfg.model.patch_size = 1  # 48 values per token: the width must hold them
    cfg.data.resolution, cfg.data.pixel_factor, cfg.data.encoder = TINY_RES, TINY_FACTOR, encoder
    cfg.sample.steps, cfg.sample.micro_batch = 2, 4
    return cfg


@pytest.fixture(scope="session")
def tiny_config():
    """A factory: `tiny_config(encoder="learned")` returns a new `tiny` preset narrowed for tests (32 px, pixel
    codec, width 48, depth 2, a 16-dim G, 2 sampling steps); each call is a fresh Config to edit."""
    return _tiny_config


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_config) -> Path:
    """A randomly initialised checkpoint of `tiny_config()` (learned G), written by `save_checkpoint`. Every
    weight is random (none zero-initialised), so the conditions and merge strategies change the output. Read-only:
    copy it before changing anything."""
    from anchorface.frozen.codecs import PixelCodec
    from anchorface.methods.anchored.checkpoint import save_checkpoint
    from anchorface.methods.anchored.global_encoder import LearnedGlobalEncoder
    from anchorface.methods.anchored.sdit import SDiT, SDiTConfig

    cfg = tiny_config()
    c, h, _ = PixelCodec(TINY_FACTOR).latent_shape(TINY_RES)
    torch.manual_seed(0)
    sdit = SDiT(SDiTConfig.from_model_config(cfg.model, input_size=h, in_channels=c))
    with torch.no_grad():
        for p in sdit.parameters():
            p.normal_(0.0, 0.05)
    return save_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint") / "ckpt", cfg, sdit,
                           LearnedGlobalEncoder(TINY_GLOBAL, TINY_RES))


# A synthetic dataset (no faces needed): random latents, face-like landmarks, uint8 source crops

def _synthetic_landmarks(n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 478, 3] points scattered over the central part of the crop, drifting slowly over time."""
    base = rng.uniform(0.25, 0.75, size=(478, 3)).astype(np.float32)
    base[:, 2] = rng.normal(0, 0.03, size=478)
    drift = np.cumsum(rng.normal(0, 0.003, size=(n, 1, 3)), axis=0).astype(np.float32)
    return base[None] + drift


def _write_synthetic_dataset(root: Path, cfg, num_clips: int = 3, frames=(12, 20, 9), seed: int = 0,
                             shard_bytes: int = 2**28, embeddings: bool = False, overwrite: bool = False) -> dict:
    """A dataset in the real on-disk format (pixel codec shapes); one source video per clip."""
    from anchorface.data.dataset import DatasetWriter, data_signature, load_index

    rng = np.random.default_rng(seed)
    res, f = cfg.data.resolution, cfg.data.pixel_factor
    shape, data = (3 * f * f, res // f, res // f), data_signature(cfg.data)
    with DatasetWriter(root, data, shape, shard_bytes=shard_bytes, overwrite=overwrite) as w:
        for i in range(num_clips):
            n = frames[i % len(frames)]
            if embeddings:
                first, last = rng.normal(size=cfg.model.global_dim), rng.normal(size=cfg.model.global_dim)
            else:
                first, last = (rng.integers(0, 256, size=(res, res, 3), dtype=np.uint8) for _ in range(2))
            w.add_clip(f"clip{i}-000", rng.normal(size=(n, *shape)).astype(np.float32),
                       _synthetic_landmarks(n, rng), first, last, fps=25.0, source_video=f"clip{i}.mp4")
    return load_index(root)


@pytest.fixture(scope="session")
def synthetic_landmarks():
    """synthetic_landmarks(n, rng): [n, 478, 3] face-like points drifting slowly over time."""
    return _synthetic_landmarks


@pytest.fixture(scope="session")
def write_synthetic_dataset():
    """write_synthetic_dataset(root, cfg, num_clips=3, frames=(12, 20, 9), seed=0, shard_bytes=2**28,
    embeddings=False, overwrite=False) -> index: a dataset in the real on-disk format, without faces."""
    return _write_synthetic_dataset


class TinyInception(nn.Module):
    """Same calling convention as StyleGAN2-ADA's Inception TorchScript: uint8 [N,3,299,299], return_features.
    Features = the mean colour times the buffer `proj`."""

    def __init__(self):
        super().__init__()
        self.register_buffer("proj", torch.linspace(-1, 1, 3 * 2048).reshape(3, 2048))

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.shape[1] != 3 or x.shape[2] != 299 or x.shape[3] != 299:
            raise ValueError("expected uint8 [N, 3, 299, 299]")
        if not return_features:
            raise ValueError("only features")
        return x.float().mean((2, 3)) @ self.proj


class TinyI3D(nn.Module):
    """Same calling convention as the StyleGAN-V I3D TorchScript: float [B,3,T,224,224] in [-1,1], T >= 10.
    Features = the mean colour times the buffer `proj`."""

    def __init__(self):
        super().__init__()
        self.register_buffer("proj", torch.linspace(-1, 1, 3 * 400).reshape(3, 400))

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True,
                return_features: bool = False) -> torch.Tensor:
        if rescale or resize or not return_features:
            raise ValueError("expected rescale=False, resize=False, return_features=True")
        if x.shape[1] != 3 or x.shape[2] < 10 or x.shape[3] != 224 or x.shape[4] != 224:
            raise ValueError("expected [B, 3, T>=10, 224, 224]")
        if bool(x.min() < -1.0) or bool(x.max() > 1.0):
            raise ValueError("expected values in [-1, 1]")
        return x.mean((2, 3, 4)) @ self.proj


@pytest.fixture(scope="session")
def feature_nets(tmp_path_factory) -> tuple[Path, Path]:
    """(inception-2015-12-05.pt, i3d_torchscript.pt): tiny TorchScript files with the real files' calling
    conventions (each keeps its projection as the buffer `proj`)."""
    d = tmp_path_factory.mktemp("feature-nets")
    inception, i3d = d / "inception-2015-12-05.pt", d / "i3d_torchscript.pt"
    torch.jit.script(TinyInception()).save(str(inception))
    torch.jit.script(TinyI3D()).save(str(i3d))
    return inception, i3d


NOBODY = 65534  # the conventional unprivileged uid / gid


class Unprivileged:
    """File-permission checks that mean something as root too (CI runs as root, and root may write into a read-only
    folder): `run(fn)` calls `fn()` in a forked child that has dropped to user/group nobody and returns its result
    (an exception in the child fails the test with its traceback); run as a normal user, it just calls `fn()`.
    `tmp` is a fresh folder that nobody can enter and write (the pytest tmp_path of root is private to root)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp

    def run(self, fn):
        import pickle
        import traceback

        if os.geteuid() != 0:
            return fn()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            status = 0
            try:
                os.close(read_end)
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                try:
                    result = ("ok", fn())
                except BaseException:  # everything goes back to the parent
                    result = ("raised", traceback.format_exc())
                with os.fdopen(write_end, "wb") as pipe:
                    pickle.dump(result, pipe)
            except BaseException:
                status = 1
            finally:
                os._exit(status)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
        assert status == 0 and data, "the unprivileged child died"
        kind, value = pickle.loads(data)
        if kind == "raised":
            pytest.fail(f"as user nobody:\n{value}", pytrace=False)
        return value


@pytest.fixture
def unprivileged():
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="anchorface-test-"))
    tmp.chmod(0o777)
    try:
        yield Unprivileged(tmp)
    finally:
        for p in [tmp, *tmp.rglob("*")]:  # (a normal user must restore its own read-only folders to delete them)
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o777)
        shutil.rmtree(tmp)
