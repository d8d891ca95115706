"""Plain dataclass configs, loadable from YAML.

Presets live in `anchorface/configs/*.yaml`: `paper-t4`, `paper-t8` (the paper's settings, App. D / §4.1),
`tiny` (a CPU-sized model on 64x64 crops with the weight-free pixel codec and a jointly trained global encoder) and
`demo` (`tiny` made narrower: the committed demo checkpoint's setting); `diffusionact-paper` and
`diffusionact-tiny` train the DiffusionAct method (paper 003; the `diffusionact` section).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from anchorface.errors import AnchorfaceError, one_line

PRESET_DIR = Path(__file__).parent / "configs"

# DiT's model zoo: depth / width / heads (Peebles & Xie, Table 1) x patch size 2, 4, 8.
_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
MODEL_PRESETS = {f"{name}/{p}": dict(depth=d, hidden_size=w, num_heads=h, patch_size=p)
                 for name, (d, w, h) in _SIZES.items() for p in (2, 4, 8)}
ARCH_FIELDS = ("depth", "hidden_size", "num_heads", "patch_size")  # what a preset sets


@dataclass
class ModelConfig:
    """sDiT + mapping network (§3.1, App. D): the one place the model's size fields and their defaults are
    declared (`SDiTConfig` is this, resolved by `architecture`, plus the latent shape)."""

    preset: str = "XL/2"  # DiT preset name: S|B|L|XL / 2|4|8, or "custom"
    hidden_size: int | None = None  # overrides of the preset (None = preset value)
    depth: int | None = None
    num_heads: int | None = None
    patch_size: int | None = None
    mlp_ratio: float = 4.0
    num_frames: int = 8  # T, frames per sequence
    learn_sigma: bool = True
    global_dim: int = 768  # dimension of G (CLIP ViT-L/14 projection = 768); 0 disables conditioning
    landmark_dim: int = 478 * 3  # L_t: 478 MediaPipe XYZ points
    mapping_blocks: int = 4  # §4.1: "4 residual blocks"
    gradient_checkpointing: bool = False

    def __post_init__(self):  # (a hand-edited checkpoint or YAML: one line, not a traceback in the plan)
        if self.num_frames < 1:
            raise AnchorfaceError(f"model.num_frames must be a positive integer, got {self.num_frames}")

    def architecture(self) -> dict[str, int]:
        """depth / hidden_size / num_heads / patch_size: the preset's (`MODEL_PRESETS`), each overridden by the
        field when it is set; AnchorfaceError for an unknown preset or a `custom` one that leaves a field unset."""
        if self.preset == "custom":
            arch = {}
        elif self.preset in MODEL_PRESETS:
            arch = dict(MODEL_PRESETS[self.preset])
        else:
            raise AnchorfaceError(f"unknown model preset '{self.preset}'; presets: custom, {', '.join(MODEL_PRESETS)}")
        for key in ARCH_FIELDS:
            if getattr(self, key) is not None:
                arch[key] = getattr(self, key)
            elif key not in arch:
                raise AnchorfaceError(f"model preset 'custom' needs model.{key}")
        return arch


@dataclass
class DiffusionConfig:
    """Gaussian diffusion as in DiT (App. D: t_max = 1000, linear betas, learned sigma)."""

    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    lambda_ex: float = 1.0  # weight (1 + lambda_ex) on expressive landmark pixels (§4.1)
    # what the model predicts: "epsilon" (DiT, hence the paper), "v" (sqrt(abar) eps - sqrt(1 - abar) x0) or
    # "x0" (the clean latents: for the pixel codec's 192-value patches; see diffusion.py)
    prediction: str = "epsilon"
    x0_loss_snr_cap: float = 5.0  # prediction "x0": loss weight 1 + min(SNR_t, cap) (the v-loss, truncated)
    sample_clip: float | None = None  # clip the predicted x0 to [-r, r] while sampling (pixel codec: 1.0)


@dataclass
class DataConfig:
    """What a training sample / an inference frame looks like."""

    resolution: int = 256  # square face crop, pixels
    codec: str = "sd-vae"  # "sd-vae" (AutoencoderKL, f=8, 4 ch) | "pixel" (weight-free space-to-depth)
    codec_path: str = "stabilityai/sd-vae-ft-ema"  # local directory or hub id (sd-vae)
    pixel_factor: int = 4  # space-to-depth factor (pixel codec)
    encoder: str = "clip"  # global encoder G: "clip" | "learned"
    encoder_path: str = "openai/clip-vit-large-patch14"  # local directory or hub id (clip)
    encoder_width: int = 32  # learned G: its four conv stages are w, 2w, 4w, 8w wide
    cond_dropout: float = 0.1  # joint dropout of all conditions (supp. §4)
    # besides: each signal (G, L) dropped alone with this probability, so that sampling with one signal only
    # (the guidance-subset ablation, §4.5.2; landmark-only sampling) is in distribution; 0 = the paper's recipe
    signal_dropout: float = 0.0

    def __post_init__(self):  # (a hand-edited checkpoint or YAML: one line, not a traceback deep in cropping)
        for key in ("resolution", "pixel_factor", "encoder_width"):
            if getattr(self, key) < 1:
                raise AnchorfaceError(f"data.{key} must be a positive integer, got {getattr(self, key)}")


@dataclass
class TrainConfig:
    """Training loop (§4.1, App. D)."""

    batch_size: int = 16  # global batch
    lr: float = 6.4e-5  # denoiser
    mapping_lr_scale: float = 0.1  # mapping network at 1/10 of the base rate (§4.1)
    weight_decay: float = 0.0  # AdamW "default parameters" besides the rate; DiT used 0
    warmup_steps: int = 0
    max_steps: int = 1_000_000
    ema_decay: float = 0.9999
    grad_accum: int = 1
    grad_clip: float | None = None
    mixed_precision: str = "bf16"  # used on GPU only; CPU runs in fp32
    num_workers: int = 4
    seed: int = 0
    log_every: int = 100
    ckpt_every: int = 10_000
    sample_every: int = 10_000
    sample_steps: int = 50


@dataclass
class SampleConfig:
    """Inference defaults (supp. §4, Table 1: 1000 steps and CFG 1 are best; 100-400 steps are close)."""

    sampler: str = "ddpm"  # "ddpm" | "ddim" | "dpmpp-2m" | "unipc" (diffusion.sampling.SAMPLERS)
    steps: int = 250
    guidance_scale: float = 1.0
    merge: str = "anchored"  # "anchored" | "multidiffusion" | "independent"
    micro_batch: int = 4  # sequences per forward pass


@dataclass
class DiffusionActConfig:
    """DiffusionAct (paper 003: §3, §4.1, supp. C): the DiffAE (semantic encoder E + conditional UNet), the
    reenactment encoder E_r and the staged training protocol; used when `method: diffusionact`.

    One run trains the stages in turn: `diffae_steps` steps of the DiffAE's diffusion loss (0 when starting from
    `diffae_checkpoint`), `pretrain_steps` of stage 1 (||z_r - z_t||_1, §3.3) and the rest of `train.max_steps`
    in stage 2 (DDIM in the loop, `train_steps` = T_tr)."""

    semantic_dim: int = 512  # z (DiffAE: 512)
    unet_channels: int = 64  # UNet base width; level widths are base x unet_mults
    unet_mults: str = "1,2,2,4"  # one entry per resolution level ("1,2,2,4": 64 -> 8 px at 64 px)
    unet_blocks: int = 2  # residual blocks per level
    attention_res: str = "16"  # resolutions (px) with self-attention, comma separated ("" = none)
    encoder_channels: int = 64  # semantic encoder base width (doubling per stage, at most 4x)
    landmark_channels: int = 3  # channels of the landmark image (contours | eyes and lips | irises)
    num_timesteps: int = 1000  # DDPM training steps (DiffAE: linear betas 1e-4 .. 0.02)
    beta_start: float = 1e-4
    beta_end: float = 0.02
    diffae_checkpoint: str | None = None  # a DiffusionAct checkpoint (or DiffAE folder) to start stage 1 from
    diffae_steps: int = 0  # DiffAE training steps before stage 1 (lr `diffae_lr`)
    diffae_lr: float = 1e-4
    pretrain_steps: int = 1000  # stage 1 (§3.3 pre-training; §4.1: lr 1e-3, batch 32)
    pretrain_lr: float = 1e-3
    reenact_lr: float = 1e-4  # stage 2 (§4.1: lr 1e-4, batch 4)
    finetune_lr: float = 1e-5  # joint DDIM fine-tune in stage 2 (§4.1: 1e-5); 0 = DDIM frozen
    reenact_batch: int = 4  # examples per step in stage 2 (the first ones of the loaded batch; even)
    train_steps: int = 8  # T_tr: DDIM steps in the loop (inversion and decoding) in stage 2 (§4.1)
    batch_split: bool = True  # stage 2: half self-reenactment, half reconstruction (§3.3)
    lambda_pix: float = 20.0  # supp. C / §4.1 weights
    lambda_bg: float = 10.0
    pixel_loss: str = "l1"  # "l1" | "l2": L_pix (and L_bg) distance (supp. Eq. 10 writes an l2 distance)
    # terms needing networks not shipped here (perceptual VGG19, ArcFace identity, FaRL style, gaze, EMOCA
    # shape / head pose): a TorchScript file per term (image [-1, 1] -> features) or null = left out
    perceptual_net: str | None = None
    identity_net: str | None = None
    lambda_per: float = 20.0
    lambda_id: float = 20.0
    inversion_steps: int = 50  # inference: T_xT (supp. D)
    steps: int = 20  # inference: decoding steps T (supp. D)


@dataclass
class Config:
    name: str = "custom"
    method: str = "anchored"  # the reenactment method (`anchorface.methods`); picks the training recipe
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    diffusionact: DiffusionActConfig = field(default_factory=DiffusionActConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        return _build(cls, d, "config")


def _build(cls, d: dict[str, Any], where: str):
    if not isinstance(d, dict):
        raise AnchorfaceError(f"{where}: expected a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields), key=str)
    if unknown:
        raise AnchorfaceError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    types = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in d.items():
        sub = _SECTIONS.get(k) if cls is Config else None
        kwargs[k] = _build(sub, v or {}, f"{where}.{k}") if sub else _coerce(v, types[k], f"{where}.{k}")
    return cls(**kwargs)


_TRUE, _FALSE = ("true", "yes", "on"), ("false", "no", "off")


def _coerce(value, kind, where: str):
    """`value` as the field type `kind` (int, float, bool, str, or X | None). YAML 1.1 reads `1e-4` (no dot) as a
    string and `1_000` as an int: numbers written as strings are parsed, integral floats become ints; anything
    else is an AnchorfaceError naming the key."""
    args = typing.get_args(kind)
    if type(None) in args:  # X | None
        if value is None:
            return None
        kind = next(a for a in args if a is not type(None))
    name = getattr(kind, "__name__", str(kind))
    bad = AnchorfaceError(f"{where}: expected {name}{' or null' if args else ''}, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise bad
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            raise bad from None
        if not math.isfinite(number):
            raise AnchorfaceError(f"{where}: expected a finite number, got {value!r}")
        if kind is float:
            return float(number)
        if isinstance(number, float) and not number.is_integer():
            raise bad
        return int(number)
    if kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # e.g. a folder named 2024
            return str(value)
        raise bad
    return value


_SECTIONS = {"model": ModelConfig, "diffusion": DiffusionConfig, "data": DataConfig, "train": TrainConfig,
             "sample": SampleConfig,
             "diffusionact": DiffusionActConfig}


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(name_or_path: str | Path) -> Config:
    """Load a preset by name (`tiny`, `paper-t4`, `paper-t8`) or a YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise AnchorfaceError(f"unknown config preset '{name_or_path}'; presets: {', '.join(presets())}")
    if not path.exists():
        raise AnchorfaceError(f"config file not found: {path}")
    if path.is_dir():
        raise AnchorfaceError(f"config {path} is a directory; give a YAML file or a preset name")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise AnchorfaceError(f"config {path} is not valid YAML: {one_line(e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AnchorfaceError(f"cannot read config {path}: {one_line(e)}") from None
    if not isinstance(data, dict):
        raise AnchorfaceError(f"config {path}: expected a mapping of sections (model, diffusion, data, train, "
                              f"sample) at the top level, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    return Config.from_dict(data)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
