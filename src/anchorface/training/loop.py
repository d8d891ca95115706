"""`anchorface train`: the sDiT training loop (§3.1, §4.1, App. D), DiT-style, every hyper-parameter visible.

One command for CPU, one GPU or many (`accelerate launch -m anchorface train ...` or `torchrun`): Accelerate
handles devices, DDP, bf16 autocast (GPU only) and gradient accumulation.

- Data: `anchorface.data.dataset.ClipDataset` (precomputed latents, landmarks, source candidates; the sampler of §3.1 with
  the joint condition dropout of supp. §4). Example k and the diffusion noise of step s are pure functions of the
  seed, so `--resume` continues exactly: same step count and, with deterministic kernels, the same losses.
- Loss: DiT's learned-sigma hybrid loss, the ε-MSE weighted by 1 + λ_ex on expressive landmark pixels (§4.1).
- Optimiser: AdamW (default betas/eps), cosine schedule with optional warmup; two parameter groups, the mapping
  network at lr * mapping_lr_scale (§4.1: 10x smaller) and everything else (with the learned G) at lr.
- EMA of all trainable weights (DiT: updated after every step); checkpoints hold the EMA weights.

Output directory::

    OUT/config.yaml                 the run's config
    OUT/log.csv, OUT/tb/            step, loss, mse, vb, lr, lr_mapping, samples_per_s (CSV and TensorBoard)
    OUT/samples/step-XXXXXXX.png    driving | generated rows for a few held-out examples
    OUT/checkpoint-XXXXXXX/         from_pretrained directory (anchorface.methods.anchored.checkpoint, EMA weights) +
        training_state/             accelerator.save_state (raw weights, AdamW, schedule, RNG) + trainer_state.json
    OUT/latest                      name of the newest complete checkpoint
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from anchorface.config import Config, save_config
from anchorface.errors import AnchorfaceError, CheckpointError, require

LOG_FIELDS = ["step", "loss", "mse", "vb", "lr", "lr_mapping", "samples_per_s", "elapsed_s"]
PREVIEW_EXAMPLES = 2  # held-out examples in the periodic sample grid
LATEST = "latest"
TRAINER_STATE = "trainer_state.json"


# --------------------------------------------------------------------------------------------------------------
# What learns
# --------------------------------------------------------------------------------------------------------------

class Denoiser(nn.Module):
    """The trainable system: the sDiT (with its mapping network) and, for `data.encoder: learned`, the global
    encoder G trained jointly. `source` is a precomputed embedding [B, D] (frozen CLIP) or pixels [B, 3, H, W]."""

    def __init__(self, sdit: nn.Module, encoder: nn.Module | None = None):
        super().__init__()
        self.sdit, self.encoder = sdit, encoder

    def forward(self, x_t, t, source, landmarks, drop):
        if self.sdit.mapping is None:  # global_dim == 0: a plain DiT
            return self.sdit(x_t, t)
        g = self.encoder.encode_images(source) if self.encoder is not None else source
        return self.sdit(x_t, t, g, landmarks, drop=drop)


def build_denoiser(cfg: Config, latent_shape) -> Denoiser:
    from anchorface.methods.anchored.global_encoder import load_encoder
    from anchorface.methods.anchored.sdit import SDiT, SDiTConfig

    C, h, w = latent_shape
    sdit = SDiT(SDiTConfig.from_model_config(cfg.model, input_size=h, in_channels=C))
    encoder = None
    if cfg.data.encoder == "learned":
        encoder = load_encoder(cfg.data, cfg.model.global_dim)
    return Denoiser(sdit, encoder)


def param_groups(model: Denoiser, lr: float, mapping_lr_scale: float) -> list[dict]:
    """§4.1: the mapping network at lr * mapping_lr_scale, everything else (and the learned G) at lr."""
    mapping = list(model.sdit.mapping.parameters()) if model.sdit.mapping is not None else []
    ids = {id(p) for p in mapping}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": rest, "lr": lr, "name": "main"}]
    if mapping:
        groups.append({"params": mapping, "lr": lr * mapping_lr_scale, "name": "mapping"})
    return groups


class EMA:
    """Exponential moving average of the weights (DiT: decay 0.9999, started from the initial weights, updated after
    every optimizer step). Kept in float32 on the training device.

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates: without it the average of a short run is
    still mostly the adaLN-Zero initialisation (whose output is 0), e.g. 37% of it after 1000 steps at 0.999."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    def decay_at(self, num_updates: int) -> float:
        return min(self.decay, (1.0 + num_updates) / (10.0 + num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module, num_updates: int) -> None:
        """Fold in the weights after update number `num_updates` (0-based; a pure function of the step, so a
        resumed run averages exactly as an uninterrupted one)."""
        decay = self.decay_at(num_updates)
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach().float(), 1.0 - decay)


def diffusion_loss(model, diffusion, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> dict:
    """The per-sample hybrid loss of one batch (DiT; ε-MSE weighted by the expressive map, §4.1)."""
    x0 = batch["latents"]
    x_t = diffusion.q_sample(x0, t, noise)
    out = model(x_t, t, batch["source"], batch["landmarks"], batch["drop"])
    return diffusion.training_losses(out.float(), x0, x_t, t, noise, weight=batch["weight"])


def example_noise(seed: int, indices, frame_shape, num_timesteps: int):
    """Timesteps [B] and noise [B, *frame_shape] of training examples `indices` (global sample counters k): each a
    pure function of (seed, k), so a step's noise does not depend on how the global batch is split over processes
    and accumulation micro-steps, and a resumed run draws exactly what an uninterrupted one would."""
    ts, noises = [], []
    for k in torch.as_tensor(indices).tolist():
        s = int(np.random.SeedSequence([seed, 1, int(k)]).generate_state(1, np.uint64)[0]) >> 1
        gen = torch.Generator().manual_seed(s)
        ts.append(torch.randint(0, num_timesteps, (1,), generator=gen))
        noises.append(torch.randn(tuple(frame_shape), generator=gen))
    return torch.cat(ts), torch.stack(noises)


# --------------------------------------------------------------------------------------------------------------
# Checkpoints, logs, previews
# --------------------------------------------------------------------------------------------------------------

def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:07d}"


def find_resume(output: Path, resume: str | None) -> Path | None:
    """`--resume`: None -> start fresh; "auto" -> OUT/latest (or nothing to resume); else a checkpoint path."""
    if resume is None:
        return None
    if resume != "auto":
        path = Path(resume)
        if not (path / "training_state" / TRAINER_STATE).exists():
            raise CheckpointError(f"{path} is not a resumable training checkpoint (no training_state/{TRAINER_STATE})")
        return path
    latest = output / LATEST
    if latest.exists():
        path = output / latest.read_text().strip()
        if (path / "training_state" / TRAINER_STATE).exists():
            return path
    found = sorted(p for p in output.glob("checkpoint-*") if (p / "training_state" / TRAINER_STATE).exists())
    return found[-1] if found else None


def save_training_checkpoint(accelerator, cfg: Config, output: Path, step: int, ema: EMA, trainer_state: dict):
    """OUT/checkpoint-XXXXXXX (EMA weights, from_pretrained-loadable) + training_state/, renamed into place only
    when complete; then OUT/latest. Collective: every process calls it."""
    from anchorface.methods.anchored.checkpoint import save_checkpoint

    name = checkpoint_name(step)
    partial = output / f".{name}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        save_checkpoint(partial, cfg, ema.model.sdit, ema.model.encoder)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial / "training_state"))
    if accelerator.is_main_process:
        (partial / "training_state" / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=1))
        final = output / name
        if final.exists():
            shutil.rmtree(final)
        os.rename(partial, final)
        tmp = output / f".{LATEST}.tmp"
        tmp.write_text(name + "\n")
        os.replace(tmp, output / LATEST)
    accelerator.wait_for_everyone()
    return output / name


def prune_training_states(output: Path, keep: int) -> None:
    """Delete training_state/ of all but the newest `keep` checkpoints (their EMA weights stay)."""
    states = sorted(p.parent for p in output.glob("checkpoint-*/training_state"))
    for ckpt in states[:-keep]:
        shutil.rmtree(ckpt / "training_state", ignore_errors=True)


class CSVLog:
    """OUT/log.csv, appended row by row; on resume the rows after the resumed step are dropped first."""

    def __init__(self, path: Path, start_step: int):
        self.path = path
        rows = []
        if start_step > 0 and path.exists():
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, LOG_FIELDS, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
        self.f = path.open("a", newline="")
        self.w = csv.DictWriter(self.f, LOG_FIELDS, lineterminator="\n")

    def write(self, row: dict) -> None:
        self.w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def read_log(path: str | Path) -> list[dict]:
    """log.csv as a list of dicts of floats (step as int)."""
    with Path(path).open() as f:
        return [{k: int(v) if k == "step" else float(v) if v != "" else math.nan for k, v in r.items()}
                for r in csv.DictReader(f)]


@torch.no_grad()
def render_preview(ema: EMA, diffusion, codec, examples: list[dict], steps: int, seed: int, device) -> np.ndarray:
    """uint8 grid: for each example a row of driving frames and a row of generated ones (DDIM, `steps` steps,
    EMA weights, no guidance); with pixel sources the source crop leads the generated row."""
    from anchorface.frozen.codecs import to_uint8
    from anchorface.diffusion.sampling import learns_sigma, sample_loop

    batch = {k: torch.stack([e[k] for e in examples]).to(device) for k in examples[0]}
    B, T, C, h, w = batch["latents"].shape
    gen = torch.Generator().manual_seed(seed)
    x_T = torch.randn((B, T, C, h, w), generator=gen).to(device)
    model = ema.model
    scheduler = diffusion.make_scheduler("ddim", steps, learned_sigma=learns_sigma(model.sdit))

    def model_fn(x, t):
        return model(x, t, batch["source"], batch["landmarks"], batch["drop"]).float()

    z = sample_loop(model_fn, x_T, scheduler, generator=gen, progress=False)

    def decode(lat):  # [B, T, C, h, w] -> [B, T, 3, H, W]
        px = codec.decode(lat.reshape(B * T, C, h, w).float().cpu())
        return px.reshape(B, T, *px.shape[1:])

    driving, generated = decode(batch["latents"]), decode(z)
    H, W = driving.shape[-2:]
    pixel_source = batch["source"].ndim == 4
    cols = T + int(pixel_source)
    grid = -torch.ones(2 * B, cols, 3, H, W)
    for b in range(B):
        grid[2 * b, cols - T:] = driving[b]
        grid[2 * b + 1, cols - T:] = generated[b]
        if pixel_source:
            src = torch.nn.functional.interpolate(batch["source"][b:b + 1].float().cpu(), size=(H, W), mode="area")
            grid[2 * b + 1, 0] = src[0]
    return to_uint8(grid).transpose(0, 2, 1, 3, 4).reshape(2 * B * H, cols * W, 3)  # [2B, cols, H, W, 3] -> rows


def split_clips(index: dict, holdout_videos: int) -> tuple[list[str], list[str]]:
    """Clip names for training and for previews: the clips of the last `holdout_videos` source videos (by name) are
    held out when there are more videos than that; otherwise previews use training clips."""
    videos = sorted({c["source_video"] for c in index["clips"]})
    if holdout_videos <= 0 or len(videos) <= holdout_videos:
        names = [c["name"] for c in index["clips"]]
        return names, names
    held = set(videos[-holdout_videos:])
    return ([c["name"] for c in index["clips"] if c["source_video"] not in held],
            [c["name"] for c in index["clips"] if c["source_video"] in held])


# --------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------

# TrainConfig fields that must be at least this (a 0 batch or logging period would crash deep in the loop)
_MINIMA = {"batch_size": 1, "grad_accum": 1, "max_steps": 0, "warmup_steps": 0, "num_workers": 0, "log_every": 1,
           "ckpt_every": 1, "sample_every": 0, "sample_steps": 1}


def check_train_config(tc) -> None:
    """AnchorfaceError (naming the option) for a training setting outside its range."""
    for name, low in _MINIMA.items():
        if getattr(tc, name) < low:
            flag = f"--{name.replace('_', '-')} / " if name != "sample_steps" else ""  # (no flag of its own)
            raise AnchorfaceError(f"{flag}train.{name} must be >= {low}, got {getattr(tc, name)}")
    if not tc.lr > 0:
        raise AnchorfaceError(f"--lr / train.lr must be positive, got {tc.lr}")


def train(cfg: Config, data_dir: str | Path, output: str | Path, resume: str | None = None,
          max_steps: int | None = None, holdout_videos: int = 1, keep_states: int = 2, deterministic: bool = False,
          progress: bool = True) -> dict:
    """Train (or resume) a run; returns dict(step, checkpoint, last_loss, main). See the module docstring.

    resume: None (fresh run), "auto" (the latest checkpoint in `output`, if any) or a checkpoint directory; a resumed
    run uses its saved config, except `max_steps` when given. keep_states: training_state/ is kept in the newest
    `keep_states` checkpoints only (0 = all); the EMA weights of every checkpoint are kept.
    """
    require("accelerate", "train", "training")
    require("tensorboard", "train", "training")  # (torch.utils.tensorboard imports it)
    from accelerate import Accelerator
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    from anchorface.methods.anchored.checkpoint import load_checkpoint, read_config
    from anchorface.frozen.codecs import load_codec
    from anchorface.data.dataset import ClipDataset, StepSampler, check_compatible, load_index, sample_training_example
    from anchorface.diffusion.gaussian import GaussianDiffusion
    from anchorface.errors import MissingWeightsError
    from anchorface.io.video import save_image

    output, data_dir = Path(output), Path(data_dir)
    if output.exists() and not output.is_dir():
        raise AnchorfaceError(f"--output {output} exists and is not a directory")
    if keep_states < 0:
        raise AnchorfaceError(f"--keep-states must be >= 0 (0 keeps all), got {keep_states}")
    resume_from = find_resume(output, resume)
    if resume_from is None and (output / LATEST).exists():
        raise AnchorfaceError(f"{output} already holds a training run; pass --resume to continue it or choose "
                              "another --output")
    if resume_from is not None:  # the run's own config; only the step budget may change
        cfg = read_config(resume_from)
    if max_steps is not None:
        cfg.train.max_steps = max_steps
    tc = cfg.train
    check_train_config(tc)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False

    # ---- devices
    gpu = torch.cuda.is_available()
    mixed = tc.mixed_precision if gpu else "no"  # bf16 autocast on GPU; CPU runs in fp32
    accelerator = Accelerator(mixed_precision=mixed, gradient_accumulation_steps=tc.grad_accum, cpu=not gpu)
    device, P, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    if tc.batch_size % (P * tc.grad_accum):
        raise AnchorfaceError(f"batch_size {tc.batch_size} is not divisible by processes ({P}) x grad_accum "
                              f"({tc.grad_accum})")
    local_batch = tc.batch_size // (P * tc.grad_accum)
    main = accelerator.is_main_process

    # ---- data
    index = load_index(data_dir)
    check_compatible(index, cfg)
    train_clips, preview_clips = split_clips(index, holdout_videos)
    dataset = ClipDataset(data_dir, cfg.model.num_frames, cfg.data.cond_dropout, cfg.diffusion.lambda_ex, tc.seed,
                          clip_names=train_clips, index=index)
    try:
        preview_set = ClipDataset(data_dir, cfg.model.num_frames, 0.0, cfg.diffusion.lambda_ex, tc.seed,
                                  clip_names=preview_clips, index=index)
    except AnchorfaceError:  # held-out clips too short: preview training clips
        preview_clips = train_clips
        preview_set = ClipDataset(data_dir, cfg.model.num_frames, 0.0, cfg.diffusion.lambda_ex, tc.seed,
                                  clip_names=preview_clips, index=index)

    # ---- model, optimiser, schedule, EMA
    torch.manual_seed(tc.seed)
    model = build_denoiser(cfg, index["latent_shape"])
    diffusion = GaussianDiffusion(cfg.diffusion)
    optimizer = torch.optim.AdamW(param_groups(model, tc.lr, tc.mapping_lr_scale), lr=tc.lr,
                                  weight_decay=tc.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, tc.warmup_steps, tc.max_steps)
    ema = EMA(model, tc.ema_decay)
    ema.model.to(device)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped by us once per optimizer step (not prepared)

    step, elapsed = 0, 0.0
    if resume_from is not None:
        accelerator.load_state(str(resume_from / "training_state"))
        state = json.loads((resume_from / "training_state" / TRAINER_STATE).read_text())
        step, elapsed = int(state["step"]), float(state.get("elapsed_s", 0.0))
        _, ema_sdit, ema_encoder = load_checkpoint(resume_from, device=device)
        ema.model.sdit.load_state_dict(ema_sdit.state_dict())
        if ema.model.encoder is not None:
            ema.model.encoder.load_state_dict(ema_encoder.state_dict())
        if main:
            print(f"resuming from {resume_from} at step {step}", file=sys.stderr)
    if main:
        output.mkdir(parents=True, exist_ok=True)
        save_config(cfg, output / "config.yaml")
        n_params = sum(p.numel() for p in model.parameters())
        print(f"train: {len(dataset.clips)} clips ({dataset.skipped_short} too short, {len(preview_clips)} for "
              f"previews), {n_params / 1e6:.2f} M parameters, global batch {tc.batch_size} = {P} processes x "
              f"{tc.grad_accum} accumulation x {local_batch}, {device}, mixed precision {mixed}", file=sys.stderr)

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=local_batch, num_workers=tc.num_workers, pin_memory=device.type == "cuda",
        sampler=StepSampler(local_batch, tc.grad_accum, P, rank, start_step=step, max_steps=tc.max_steps))

    # ---- previews: fixed held-out examples, decoded with the frozen codec
    codec, examples = None, []
    if main and tc.sample_every > 0:
        try:
            codec = load_codec(cfg.data)
        except MissingWeightsError as e:
            print(f"anchorface: warning: no sample grids ({e})", file=sys.stderr)
        rng = np.random.default_rng(tc.seed)
        for i in range(PREVIEW_EXAMPLES):
            clip = i % len(preview_set.clips)
            frames, src = sample_training_example(preview_set.clips[clip]["num_frames"], cfg.model.num_frames, rng)
            examples.append(preview_set.load(clip, frames, src, drop=False))

    log = CSVLog(output / "log.csv", step) if main else None
    tb = SummaryWriter(str(output / "tb"), purge_step=step + 1 if step else None) if main else None
    sums = torch.zeros(3, device=device)  # loss, mse, vb summed over the log interval
    count, t0, overhead = 0, time.perf_counter(), 0.0  # overhead: checkpoint / preview time, not training
    last_loss = float("nan")
    bar = tqdm(total=tc.max_steps, initial=step, desc="train", unit="step", disable=not (progress and main))

    model.train()
    data_iter = iter(loader)
    while step < tc.max_steps:
        for _micro in range(tc.grad_accum):
            batch = {k: v.to(device, non_blocking=True) for k, v in next(data_iter).items()}
            t, noise = example_noise(tc.seed, batch["index"], batch["latents"].shape[1:], diffusion.num_timesteps)
            t, noise = t.to(device), noise.to(device)
            with accelerator.accumulate(model):
                losses = diffusion_loss(model, diffusion, batch, t, noise)
                loss = losses["loss"].mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients and tc.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            sums += torch.stack([losses[k].detach().float().mean() for k in ("loss", "mse", "vb")]) / tc.grad_accum
        lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}  # used in this step
        scheduler.step()
        ema.update(accelerator.unwrap_model(model), step)
        step += 1
        count += 1
        bar.update(1)

        if step % tc.log_every == 0 or step == tc.max_steps:
            mean = accelerator.reduce(sums, "mean") / count
            dt = time.perf_counter() - t0 - overhead
            elapsed += dt
            row = {"step": step, "loss": mean[0].item(), "mse": mean[1].item(), "vb": mean[2].item(),
                   "lr": lrs.get("main"), "lr_mapping": lrs.get("mapping", ""),
                   "samples_per_s": count * tc.batch_size / max(dt, 1e-9), "elapsed_s": elapsed}
            last_loss = row["loss"]
            if main:
                log.write(row)
                for k in ("loss", "mse", "vb"):
                    tb.add_scalar(f"loss/{k}", row[k], step)
                tb.add_scalar("lr/main", row["lr"], step)
                if row["lr_mapping"] != "":
                    tb.add_scalar("lr/mapping", row["lr_mapping"], step)
                tb.add_scalar("samples_per_s", row["samples_per_s"], step)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
            sums.zero_()
            count, t0, overhead = 0, time.perf_counter(), 0.0

        tick = time.perf_counter()
        if main and codec is not None and examples and (step % tc.sample_every == 0 or step == tc.max_steps):
            grid = render_preview(ema, diffusion, codec, examples, tc.sample_steps, tc.seed, device)
            (output / "samples").mkdir(exist_ok=True)
            save_image(output / "samples" / f"step-{step:07d}.png", grid)
            tb.add_image("samples", grid, step, dataformats="HWC")

        if step % tc.ckpt_every == 0 or step == tc.max_steps:
            state = {"step": step, "samples_seen": step * tc.batch_size, "seed": tc.seed,
                     "global_batch": tc.batch_size, "grad_accum": tc.grad_accum, "num_processes": P,
                     "train_clips": len(dataset.clips), "elapsed_s": elapsed}
            save_training_checkpoint(accelerator, cfg, output, step, ema, state)
            if main and keep_states > 0:
                prune_training_states(output, keep_states)
        overhead += time.perf_counter() - tick

    bar.close()
    if main:
        log.close()
        tb.close()
    ckpt = output / checkpoint_name(step)
    accelerator.end_training()
    return {"step": step, "checkpoint": ckpt, "last_loss": last_loss, "main": main}


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------
