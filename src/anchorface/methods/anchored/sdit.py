"""The sequence DiT (sDiT, §3.1, Fig. 2 right, App. D), its mapping network and the anchoring hook (§3.2).

sDiT is DiT (Peebles & Xie, facebookresearch/DiT) with a temporal axis: a sequence of T latent frames
[B, T, C, H, W] is patchified frame by frame (conv k = s = patch), DiT's fixed 2D sin-cos spatial embedding and a
fixed sinusoidal temporal embedding TPE_t are added, and all T*N tokens attend to each other in one self-attention.
Conditioning is per frame: the tokens of frame t are modulated (adaLN-Zero) by c_t = timestep_embedding + C_t,
where C_t = Mapping(G, L_t) mixes the global signal G with the frame's landmarks L_t. With `global_dim == 0` there
is no mapping network and the model is a plain (unconditional) DiT, used for the parity checks against DiT.

`AnchorOverride` is the anchoring hook of Anchored Diffusion: after the embedding, after every block and at the
output, the tokens of the anchor frame of every anchored sequence are replaced by one donor's tokens.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from anchorface.config import ModelConfig
from anchorface.errors import AnchorfaceError, CheckpointError, one_line

_DEFAULT = ModelConfig()  # the size fields' defaults are ModelConfig's (its default preset, resolved)
_ARCH = _DEFAULT.architecture()

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
FREQ_EMBED_SIZE = 256  # DiT's timestep frequency embedding size


@dataclass
class SDiTConfig:
    """A `ModelConfig` resolved for one latent shape: what `config.json` of an sDiT holds. The fields after the
    latent shape are ModelConfig's (same names, defaults taken from it); see there for their meaning."""

    input_size: int = 32  # latent height = width
    in_channels: int = 4
    patch_size: int = _ARCH["patch_size"]
    hidden_size: int = _ARCH["hidden_size"]
    depth: int = _ARCH["depth"]
    num_heads: int = _ARCH["num_heads"]
    mlp_ratio: float = _DEFAULT.mlp_ratio
    num_frames: int = _DEFAULT.num_frames  # T the model is trained for (it runs at any T)
    learn_sigma: bool = _DEFAULT.learn_sigma  # 2C output channels: eps and the variance interpolation v
    global_dim: int = _DEFAULT.global_dim  # 0 = no mapping network, no conditioning (plain DiT)
    landmark_dim: int = _DEFAULT.landmark_dim
    mapping_blocks: int = _DEFAULT.mapping_blocks
    gradient_checkpointing: bool = _DEFAULT.gradient_checkpointing

    def __post_init__(self):
        if self.input_size % self.patch_size:
            raise AnchorfaceError(f"input size {self.input_size} is not a multiple of patch size {self.patch_size}")
        if self.hidden_size < self.patch_size ** 2 * self.in_channels:
            raise AnchorfaceError(
                f"hidden size {self.hidden_size} is smaller than the {self.patch_size}x{self.patch_size}x"
                f"{self.in_channels} = {self.patch_size ** 2 * self.in_channels} values of a patch: the sDiT could not "
                "pass its input through (predicting the noise at large t needs that); use a wider model or a "
                "smaller patch")
        if self.hidden_size % self.num_heads or self.hidden_size % 4:
            raise AnchorfaceError(f"hidden size {self.hidden_size} must be divisible by 4 and by num_heads "
                                  f"{self.num_heads}")

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def num_patches(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    @classmethod
    def from_model_config(cls, model_cfg, input_size: int, in_channels: int) -> "SDiTConfig":
        """Resolve `anchorface.config.ModelConfig` (a preset plus optional overrides) for a latent shape: every
        field the two share is copied, the size fields through `ModelConfig.architecture`."""
        shared = {f.name for f in dataclasses.fields(cls)} & {f.name for f in dataclasses.fields(model_cfg)}
        fields = {k: getattr(model_cfg, k) for k in shared} | model_cfg.architecture()
        return cls(input_size=input_size, in_channels=in_channels, **fields)


# ----------------------------------------------------------------------------------------------- embeddings
def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """DiT's 1D sin-cos embedding: [len(pos), dim], sines then cosines, frequencies 1 / 10000^(2i/dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2))
    out = pos.double().reshape(-1)[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1).float()


def sincos_2d(dim: int, grid_size: int, device=None) -> torch.Tensor:
    """DiT's get_2d_sincos_pos_embed: [grid*grid, dim]; token n = (row i, col j) = (n // grid, n % grid);
    the first half of the channels encodes the column j, the second half the row i (DiT's meshgrid(w, h))."""
    coords = torch.arange(grid_size, dtype=torch.float64, device=device)
    col = coords.repeat(grid_size)  # j for n = i * grid + j
    row = coords.repeat_interleave(grid_size)
    return torch.cat([sincos_1d(dim // 2, col), sincos_1d(dim // 2, row)], dim=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """DiT's timestep embedder: 256-d cos/sin frequency embedding -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size: int, freq_size: int = FREQ_EMBED_SIZE):
        super().__init__()
        self.freq_size = freq_size
        self.mlp = nn.Sequential(nn.Linear(freq_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.freq_size).to(self.mlp[0].weight.dtype))


# ----------------------------------------------------------------------------------------------- blocks
class Attention(nn.Module):
    """Multi-head self-attention over all T*N tokens of a sequence (timm's Attention, qkv bias)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, N, D]
        B, T, N, D = x.shape
        qkv = self.qkv(x).reshape(B, T * N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, heads, T*N, head_dim]
        return self.proj(out.transpose(1, 2).reshape(B, T, N, D))


class SDiTBlock(nn.Module):
    """DiT's adaLN-Zero block; shift/scale/gate are computed per frame from c_t."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, mlp_hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_hidden, hidden_size))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # x [B, T, N, D], c [B, T or 1, D]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.adaLN_modulation(c).unsqueeze(2).chunk(6, dim=-1))
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """DiT's final layer: adaLN (shift, scale) then a linear map to patch*patch*C_out per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).unsqueeze(2).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class ResidualMLP(nn.Module):
    """Pre-norm residual block: x + Linear(SiLU(Linear(LayerNorm(x))))."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class MappingNetwork(nn.Module):
    """C_t = Mapping(G, L_t) (§3.1; §4.1: 4 residual blocks). The papers leave the mixing open; ours:
    G and L_t are each projected to `hidden` by a linear layer, concatenated, mixed by a linear layer and refined by
    `num_blocks` pre-norm residual MLP blocks. Learned null embeddings (in the projected space) replace G and/or L
    for classifier-free guidance: `drop` drops both (joint dropout, supp. §4), `drop_global` / `drop_landmarks`
    drop one signal (the guidance-subset ablation). Each is a [B] bool tensor or None."""

    def __init__(self, global_dim: int, landmark_dim: int, hidden_size: int, num_blocks: int = 4):
        super().__init__()
        self.global_proj = nn.Linear(global_dim, hidden_size)
        self.landmark_proj = nn.Linear(landmark_dim, hidden_size)
        self.null_global = nn.Parameter(torch.zeros(hidden_size))
        self.null_landmarks = nn.Parameter(torch.zeros(hidden_size))
        self.mix = nn.Linear(2 * hidden_size, hidden_size)
        self.blocks = nn.ModuleList(ResidualMLP(hidden_size) for _ in range(num_blocks))

    def forward(self, g, lmk, drop=None, drop_global=None, drop_landmarks=None) -> torch.Tensor:
        B, T, _ = lmk.shape
        if g.shape[0] != B:
            raise ValueError(f"g has batch {g.shape[0]} but landmarks have batch {B}")
        zg = self.global_proj(g)[:, None].expand(B, T, -1)  # [B, T, hidden]
        zl = self.landmark_proj(lmk)
        dg, dl = _either(drop, drop_global), _either(drop, drop_landmarks)
        if dg is not None:
            zg = torch.where(dg.to(zg.device).view(B, 1, 1), self.null_global.to(zg.dtype), zg)
        if dl is not None:
            zl = torch.where(dl.to(zl.device).view(B, 1, 1), self.null_landmarks.to(zl.dtype), zl)
        c = self.mix(torch.cat([zg, zl], dim=-1))
        for block in self.blocks:
            c = block(c)
        return c


def _either(a, b):
    return b if a is None else a if b is None else a | b


# ----------------------------------------------------------------------------------------------- anchoring hook
@dataclass
class AnchorOverride:
    """The anchoring hook (§3.2, Alg. 1: the anchor tokens are overridden "in all layers").

    Layer 0 = tokens after patch + spatial + temporal embedding, layers 1..depth = after each block, layer depth+1
    = the final layer's output tokens (the model output). At each layer, for every row b with positions[b] >= 0,
    the N tokens of frame positions[b] are replaced (bitwise) by the donor's [N, D_layer] tokens. `donor=None`
    takes them from the first anchored row of this batch (normally row 0, which thus attends to itself only);
    `recorded` receives the donor tokens actually used, so a later micro-batch can replay them with
    `donor=previous.recorded` and get the result of one big batch.

    The override writes in place into the layer's activation (each is a fresh tensor that nothing has saved yet,
    so autograd accepts it), only at the anchor tokens: no copy of the activation. Positions are resolved on the
    host once per forward pass (give them as numpy or a CPU tensor); the per-layer work is one indexed write and,
    when recording, one [N, D] copy, with no host synchronisation on an accelerator.
    """

    positions: torch.Tensor  # [B] long, -1 = no anchor in this row
    donor: list[torch.Tensor] | None = None
    recorded: list[torch.Tensor] = field(default_factory=list)

    def start(self, batch: int, frames: int, num_layers: int, device) -> bool:
        """Prepare one forward pass; False when no row is anchored (the hook is then skipped)."""
        pos = torch.as_tensor(self.positions, dtype=torch.long).cpu()  # host-side: no sync when given on the host
        if pos.shape != (batch,) or (len(pos) and int(pos.max()) >= frames):
            raise ValueError(f"anchor positions {pos.tolist()} do not fit a batch of {batch} x {frames} frames")
        if self.donor is not None and len(self.donor) != num_layers:
            raise ValueError(f"anchor donor has {len(self.donor)} layers, the model has {num_layers}")
        rows = (pos >= 0).nonzero().squeeze(1)
        self.recorded = []
        if len(rows) == 0:
            return False
        pos = pos[rows]
        self._source = None
        if self.donor is None:  # the first anchored row donates: it is left as it is, the others are written
            self._source = (int(rows[0]), int(pos[0]))
            rows, pos = rows[1:], pos[1:]
        self._targets = None
        if len(rows):
            self._targets = (rows.to(device, non_blocking=True), pos.to(device, non_blocking=True))
        return True

    def apply(self, x: torch.Tensor, layer: int) -> torch.Tensor:  # x [B, T, N, D], written in place
        if self._source is not None:
            donor = x[self._source].clone()  # [N, D]: the record must not be a view of x
        else:
            donor = self.donor[layer].to(device=x.device, dtype=x.dtype)
            if donor.shape != x.shape[2:]:
                raise ValueError(f"anchor donor layer {layer} has shape {tuple(donor.shape)}, "
                                 f"expected {tuple(x.shape[2:])}")
        self.recorded.append(donor)
        if self._targets is not None:
            x.index_put_(self._targets, donor.expand(len(self._targets[0]), *donor.shape))
        return x


# ----------------------------------------------------------------------------------------------- the model
class SDiT(nn.Module):
    """sDiT: x [B, T, C, H, W], t [B] -> [B, T, C_out, H, W] (eps, and v when learn_sigma)."""

    def __init__(self, config: SDiTConfig):
        super().__init__()
        self.config = cfg = config
        D, p = cfg.hidden_size, cfg.patch_size
        self.x_embedder = nn.Conv2d(cfg.in_channels, D, kernel_size=p, stride=p)
        self.register_buffer("pos_embed", sincos_2d(D, cfg.input_size // p), persistent=False)  # fixed, as DiT
        self.t_embedder = TimestepEmbedder(D)
        self.mapping = (MappingNetwork(cfg.global_dim, cfg.landmark_dim, D, cfg.mapping_blocks)
                        if cfg.global_dim > 0 else None)
        self.blocks = nn.ModuleList(SDiTBlock(D, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(D, p, cfg.out_channels)
        self.initialize_weights()

    def initialize_weights(self):
        """DiT's initialisation: xavier-uniform linears (and the patch embedding seen as a linear), zero biases,
        N(0, 0.02) for the timestep MLP (and our null embeddings), zero adaLN modulations and final linear."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.x_embedder.weight.view(self.x_embedder.weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.mapping is not None:
            nn.init.normal_(self.mapping.null_global, std=0.02)
            nn.init.normal_(self.mapping.null_landmarks, std=0.02)
        for block in [*self.blocks, self.final_layer]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:  # [B, T, N, p*p*C] -> [B, T, C, H, W]
        B, T, _, _ = x.shape
        p, c = self.config.patch_size, self.config.out_channels
        x = x.reshape(B, T, h, w, p, p, c)
        return torch.einsum("bthwpqc->btchpwq", x).reshape(B, T, c, h * p, w * p)

    def condition(self, g, lmk, drop=None, drop_global=None, drop_landmarks=None) -> torch.Tensor:
        """C = Mapping(G, L) [B, T, D] (§3.1) for g [B, global_dim] and lmk [B, T, landmark_dim] (drop masks as
        `MappingNetwork`). C does not depend on the timestep: a sampler computes it once per video and passes it to
        every step as `forward(..., cond=C)`. The mapping is frame-wise, so C of a frame does not depend on the
        sequence it is computed in: one row of all N frames (g [1, Dg], lmk [1, N, Dl]) serves every sequence."""
        if self.mapping is None:
            raise ValueError("this sDiT is unconditional (global_dim = 0): it has no mapping network")
        dtype = self.x_embedder.weight.dtype
        return self.mapping(g.to(dtype), lmk.to(dtype), drop, drop_global, drop_landmarks)

    def forward(self, x, t, g=None, lmk=None, drop=None, drop_global=None, drop_landmarks=None,
                anchor: AnchorOverride | None = None, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, C, H, W], t [B] -> [B, T, C_out, H, W]. Conditional models take g and lmk (and drop masks), or
        `cond`, a precomputed C = `condition(g, lmk, ...)` [B, T, D] (the same result without the mapping network)."""
        cfg = self.config
        B, T, C, H, W = x.shape
        h, w = H // cfg.patch_size, W // cfg.patch_size
        if (C, H, W) != (cfg.in_channels, cfg.input_size, cfg.input_size):
            raise ValueError(f"sDiT expects frames of {(cfg.in_channels, cfg.input_size, cfg.input_size)}, "
                             f"got {(C, H, W)}")
        dtype = self.x_embedder.weight.dtype  # inputs follow the model's dtype (autocast works on top)
        tokens = self.x_embedder(x.reshape(B * T, C, H, W).to(dtype)).flatten(2).transpose(1, 2)
        tpe = sincos_1d(cfg.hidden_size, torch.arange(T, device=x.device)).to(dtype)
        x = (tokens.reshape(B, T, h * w, -1) + self.pos_embed + tpe[:, None]).contiguous()  # [B, T, N, D]

        c = self.t_embedder(t.expand(B) if t.ndim == 0 else t)[:, None]  # [B, 1, D]
        if cond is not None:
            if self.mapping is None:
                raise ValueError("cond given to an unconditional sDiT (global_dim = 0)")
            if cond.ndim != 3 or cond.shape[0] != B or cond.shape[1] != T or cond.shape[2] != cfg.hidden_size:
                raise ValueError(f"cond {tuple(cond.shape)} is not C of {B} sequences of {T} frames "
                                 f"[{B}, {T}, {cfg.hidden_size}]")
            c = c + cond.to(dtype)
        elif self.mapping is not None:
            if g is None or lmk is None:
                raise ValueError("this sDiT is conditional: pass g [B, global_dim] and lmk [B, T, landmark_dim]")
            if lmk.shape[:2] != (B, T):
                raise ValueError(f"landmarks {tuple(lmk.shape)} do not match {B} sequences of {T} frames")
            # c_t = timestep embedding + C_t: [B, T, D]
            c = c + self.condition(g, lmk, drop, drop_global, drop_landmarks)

        anchored = anchor is not None and anchor.start(B, T, cfg.depth + 2, x.device)
        if anchored:
            x = anchor.apply(x, 0)
        for i, block in enumerate(self.blocks):
            if cfg.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, c, use_reentrant=False)
            else:
                x = block(x, c)
            if anchored:
                x = anchor.apply(x, i + 1)
        x = self.final_layer(x, c)  # [B, T, N, p*p*C_out]
        if anchored:
            x = anchor.apply(x, cfg.depth + 1)
        return self.unpatchify(x, h, w)

    # ------------------------------------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json and model.safetensors into `directory` (each file atomically)."""
        from anchorface.io.atomic import write_safetensors
        from anchorface.io.manifest import write_json

        directory = Path(directory)
        write_json(directory / CONFIG_NAME, dataclasses.asdict(self.config), CheckpointError)
        write_safetensors(directory / WEIGHTS_NAME, {k: v.detach().contiguous().cpu()
                                                     for k, v in self.state_dict().items()}, CheckpointError)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "SDiT":
        """Load a directory written by `save_pretrained`; CheckpointError when files are missing or mismatched."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from anchorface.io.manifest import read_json_object

        directory = Path(directory)
        cfg_path, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (cfg_path, weights):
            if not path.is_file():
                raise CheckpointError(f"sDiT checkpoint incomplete: {path} not found")
        try:
            cfg = SDiTConfig(**read_json_object(cfg_path, CheckpointError))
        except CheckpointError:
            raise
        except (TypeError, AnchorfaceError) as e:
            raise CheckpointError(f"{cfg_path} is not a valid sDiT config: {one_line(e)}") from None
        try:
            state = load_file(str(weights), device=str(device))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{weights} could not be read: {e}") from None
        with torch.device(device):
            model = cls(cfg)
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            raise CheckpointError(f"{weights} does not match {cfg_path}: missing {missing[:3]}, unexpected "
                                  f"{unexpected[:3]}, wrong shape {wrong[:3]}")
        model.load_state_dict(state)
        return model


def compile_blocks(model: SDiT, **options) -> SDiT:
    """`torch.compile` each sDiT block in place (`nn.Module.compile`: the state dict keeps its keys), the GPU path's
    optional speed-up; the anchoring hook runs between the blocks, outside the compiled graphs. The first forward
    pass pays the compilation (benchmarks/bench_reenact.py reports it). Returns the model."""
    for block in model.blocks:
        block.compile(**options)
    model.final_layer.compile(**options)
    return model


def flash_attention_in_use(model: SDiT, frames: int | None = None, batch: int = 1) -> bool:
    """Whether SDPA runs the sDiT's attention with the flash backend: one forward pass restricted to
    `SDPBackend.FLASH_ATTENTION` (it raises when flash cannot take the inputs: CPU, float32, head size). False on
    CPU without trying."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    param = next(model.parameters())
    if param.device.type != "cuda":
        return False
    cfg = model.config
    T = frames or cfg.num_frames
    x = torch.zeros(batch, T, cfg.in_channels, cfg.input_size, cfg.input_size, device=param.device, dtype=param.dtype)
    cond = {}
    if cfg.global_dim > 0:
        cond = dict(g=torch.zeros(batch, cfg.global_dim, device=param.device),
                    lmk=torch.zeros(batch, T, cfg.landmark_dim, device=param.device))
    try:
        with torch.no_grad(), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            model(x, torch.zeros(batch, dtype=torch.long, device=param.device), **cond)
    except RuntimeError:
        return False
    return True


def flops_per_frame(cfg: SDiTConfig, frames: int) -> float:
    """Forward FLOPs per frame for a sequence of `frames` frames, counted as DiT counts them (fvcore: one FLOP per
    multiply-accumulate of linears, convolutions and the two attention matmuls; norms/activations not counted)."""
    T, D, N, p = frames, cfg.hidden_size, cfg.num_patches, cfg.patch_size
    mlp_hidden = int(D * cfg.mlp_ratio)
    per_seq = FREQ_EMBED_SIZE * D + D * D  # timestep embedder
    per_frame = N * p * p * cfg.in_channels * D  # patch embedding
    if cfg.global_dim > 0:
        per_seq += cfg.global_dim * D
        per_frame += cfg.landmark_dim * D + 2 * D * D + cfg.mapping_blocks * 2 * D * D
    adaln = cfg.depth * 6 * D * D + 2 * D * D  # the blocks' and final layer's modulations: once per c_t
    if cfg.global_dim > 0:
        per_frame += adaln  # c_t differs per frame
    else:
        per_seq += adaln  # one c for the whole sequence
    per_frame += cfg.depth * N * (4 * D * D + 2 * D * mlp_hidden)  # qkv, proj, MLP
    per_frame += cfg.depth * 2 * (T * N) * N * D  # QK^T and attn @ V: each of the T*N queries sees T*N keys
    per_frame += N * D * p * p * cfg.out_channels  # final linear
    return float(per_frame + per_seq / T)
