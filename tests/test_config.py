import pytest

from anchorface.config import Config, load_config, presets
from anchorface.errors import AnchorfaceError


def test_presets_load_with_paper_numbers():
    assert {"tiny", "paper-t4", "paper-t8"} <= set(presets())
    for name, T in [("paper-t4", 4), ("paper-t8", 8)]:
        cfg = load_config(name)
        assert cfg.model.preset == "XL/2" and cfg.model.num_frames == T
        assert cfg.train.batch_size == 16 and cfg.train.lr == pytest.approx(6.4e-5)
        assert cfg.train.lr * cfg.train.mapping_lr_scale == pytest.approx(6.4e-6)
        assert cfg.diffusion.num_timesteps == 1000 and cfg.data.resolution == 256
        assert cfg.data.cond_dropout == pytest.approx(0.1) and cfg.diffusion.lambda_ex == 1.0


def test_roundtrip_and_unknown_keys(tmp_path):
    cfg = load_config("tiny")
    assert Config.from_dict(cfg.to_dict()) == cfg
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {widht: 3}\n")
    with pytest.raises(AnchorfaceError, match="unknown key"):
        load_config(bad)
    with pytest.raises(AnchorfaceError, match="unknown config preset"):
        load_config("nope")
