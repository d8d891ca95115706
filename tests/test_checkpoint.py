"""Checkpoint directories: manifest checks (one-line CheckpointError) and which components must be present."""

import pytest
import torch

from anchorface.methods.anchored.checkpoint import MANIFEST, load_checkpoint, read_config, save_checkpoint
from anchorface.config import load_config
from anchorface.methods.anchored.global_encoder import LearnedGlobalEncoder
from anchorface.errors import CheckpointError
from anchorface.methods.anchored.sdit import SDiT, SDiTConfig


def tiny(global_dim=16):
    cfg = load_config("tiny")
    cfg.model.hidden_size, cfg.model.depth, cfg.model.num_heads, cfg.model.patch_size = 48, 1, 2, 1
    cfg.model.global_dim, cfg.data.resolution = global_dim, 16
    torch.manual_seed(0)
    return cfg, SDiT(SDiTConfig.from_model_config(cfg.model, input_size=4, in_channels=48))


@pytest.mark.parametrize("manifest,message", [
    ("[1, 2]", "expected a JSON object, got list"),
    ('"anchorface"', "expected a JSON object, got str"),
    ('{"format": "anchorface", "version": 1}', 'no "config" object'),
    ('{"format": "anchorface", "version": 1, "config": [1]}', 'no "config" object'),
    ('{"format": "anchorface", "version": 1, "config": {"train": {"lr": "fast"}}}', "config.train.lr: expected"),
    ('{"format": "other", "version": 1, "config": {}}', "unsupported checkpoint format"),
])
def test_bad_manifest_is_a_checkpoint_error(tmp_path, manifest, message):
    (tmp_path / MANIFEST).write_text(manifest)
    with pytest.raises(CheckpointError, match=message) as e:
        read_config(tmp_path)
    assert "\n" not in str(e.value)


def test_learned_encoder_required_only_with_a_global_signal(tmp_path):
    cfg, sdit = tiny(global_dim=0)  # learned encoder configured, but no global conditioning: nothing to save
    path = save_checkpoint(tmp_path / "uncond", cfg, sdit)
    assert not (path / "global_encoder").exists()
    got_cfg, got_sdit, encoder = load_checkpoint(path)
    assert encoder is None and got_sdit.mapping is None and got_cfg.model.global_dim == 0

    cfg, sdit = tiny(global_dim=16)
    path = save_checkpoint(tmp_path / "cond", cfg, sdit, LearnedGlobalEncoder(16, 16))
    assert load_checkpoint(path)[2] is not None
    (path / "global_encoder" / "model.safetensors").unlink()
    (path / "global_encoder" / "config.json").unlink()
    (path / "global_encoder").rmdir()
    with pytest.raises(CheckpointError, match="global_encoder/ is missing"):
        load_checkpoint(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_a_one_line_checkpoint_error(tmp_path, bad):
    """A corrupt or diverged checkpoint (a NaN / inf weight) is refused at loading, not rendered into a video of
    NaNs; the error names the component and the weight."""
    cfg, sdit = tiny()
    save_checkpoint(tmp_path / "ok", cfg, sdit, LearnedGlobalEncoder(cfg.model.global_dim, cfg.data.resolution))
    load_checkpoint(tmp_path / "ok")  # control: the same checkpoint with finite weights loads
    with torch.no_grad():
        next(sdit.parameters()).view(-1)[3] = bad
    save_checkpoint(tmp_path / "bad", cfg, sdit, LearnedGlobalEncoder(cfg.model.global_dim, cfg.data.resolution))
    with pytest.raises(CheckpointError, match="sdit weight .* NaN or infinite") as e:
        load_checkpoint(tmp_path / "bad")
    assert "\n" not in str(e.value)
