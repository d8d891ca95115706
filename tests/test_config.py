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


def test_values_are_coerced_to_the_field_types(tmp_path):
    """PyYAML reads `1e-4` (no dot) as a string and `1.5e+6` as a float: values follow the dataclass types."""
    path = tmp_path / "run.yaml"
    path.write_text("train: {lr: 1e-4, max_steps: 1.5e+6, grad_clip: '0.5', batch_size: '8', seed: 1_000}\n"
                    "model: {learn_sigma: 'off', hidden_size: null, preset: custom}\n"
                    "data: {encoder_path: 2024}\n")
    cfg = load_config(path)
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.max_steps == 1_500_000 and isinstance(cfg.train.max_steps, int)
    assert cfg.train.grad_clip == 0.5 and cfg.train.batch_size == 8 and cfg.train.seed == 1000
    assert cfg.model.learn_sigma is False and cfg.model.hidden_size is None and cfg.data.encoder_path == "2024"
    assert cfg.name == "run"


@pytest.mark.parametrize("text,key", [
    ("train: {lr: fast}", "config.train.lr: expected float"),
    ("train: {batch_size: 2.5}", "config.train.batch_size: expected int"),
    ("train: {batch_size: true}", "config.train.batch_size: expected int"),
    ("train: {max_steps: }", "config.train.max_steps: expected int"),
    ("model: {learn_sigma: 3}", "config.model.learn_sigma: expected bool"),
    ("model: {depth: [1, 2]}", "config.model.depth: expected int or null"),
    ("sample: {sampler: {kind: ddim}}", "config.sample.sampler: expected str"),
    ("model: [1, 2]", "config.model: expected a mapping"),
    ("- model\n- train", "expected a mapping of sections"),
    ("just a string", "expected a mapping of sections"),
    ("data: {resolution: 0}", "data.resolution must be a positive integer, got 0"),
    ("data: {pixel_factor: -4}", "data.pixel_factor must be a positive integer"),
    ("model: {num_frames: 0}", "model.num_frames must be a positive integer"),
])
def test_bad_values_name_the_key(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(AnchorfaceError, match=key.replace("[", r"\[")) as e:
        load_config(path)
    assert "\n" not in str(e.value)


def test_config_path_errors(tmp_path):
    (tmp_path / "configs.d").mkdir()
    with pytest.raises(AnchorfaceError, match="is a directory"):
        load_config(tmp_path / "configs.d")
    with pytest.raises(AnchorfaceError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(AnchorfaceError, match="binary.yaml"):
        load_config(tmp_path / "binary.yaml")
