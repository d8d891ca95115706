"""`anchorface train`: a method-agnostic training loop (DiT-style, every hyper-parameter visible; §4.1, App. D).

One command for CPU, one GPU or many (`accelerate launch -m anchorface train ...` or `torchrun`): Accelerate
handles devices, DDP, bf16 autocast (GPU only) and gradient accumulation. The method supplies a *recipe*
(`training/recipe.py`, found from `Config.method`): its model, parameter groups, examples, loss, preview and export.
The loop owns the rest:

- Data: the recipe's dataset read by `StepSampler`: example k is a pure function of (seed, k), so `--resume`
  continues exactly: same step count and, with deterministic kernels, the same losses.
- Optimiser: AdamW (default betas/eps) on the recipe's parameter groups, cosine schedule with optional warmup
  (or the recipe's own `scheduler(optimizer)`, e.g. per-stage rates).
- EMA of all trainable weights (DiT: updated after every step; a recipe's `ema_updates(step)` may restart its
  warm-up, e.g. at each training stage); checkpoints hold the EMA weights.
- Bounds: `max_steps`, and optionally a time budget (`max_seconds`, e.g. `anchorface personalize --minutes`): the
  run then stops after the step that reaches it, with a checkpoint there.

Output directory::

    OUT/config.yaml                 the run's config
    OUT/log.csv, OUT/tb/            step, loss, the recipe's terms, lr of each group, samples_per_s, elapsed_s
    OUT/samples/step-XXXXXXX.png    the recipe's preview (anchored: driving | generated rows)
    OUT/checkpoint-XXXXXXX/         the recipe's from_pretrained export of the EMA weights +
        training_state/             accelerator.save_state (raw weights, AdamW, schedule, RNG) + trainer_state.json
    OUT/latest                      name of the newest complete checkpoint
"""

from __future__ import annotations

import copy
import csv
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from anchorface.config import Config, save_config
from anchorface.errors import AnchorfaceError, CheckpointError, require
from anchorface.io.atomic import atomic_output, write_text
from anchorface.io.manifest import existing_directory, read_json_object, write_json
from anchorface.training.recipe import recipe_class

LATEST = "latest"
TRAINER_STATE = "trainer_state.json"


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


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------

def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:07d}"


def find_resume(output: Path, resume: str | None) -> Path | None:
    """`--resume`: None -> start fresh; "auto" -> OUT/latest (or nothing to resume); else a checkpoint path."""
    if resume is None:
        return None
    if resume != "auto":
        path = existing_directory(resume, "checkpoint", CheckpointError)
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


def read_trainer_state(checkpoint: Path) -> dict:
    return read_json_object(checkpoint / "training_state" / TRAINER_STATE, CheckpointError)


def save_training_checkpoint(accelerator, recipe, output: Path, step: int, ema: EMA, trainer_state: dict) -> Path:
    """OUT/checkpoint-XXXXXXX (the recipe's export of the EMA weights) + training_state/, renamed into place only
    when complete; then OUT/latest. Collective: every process calls it. A full disk or a lost folder is one line,
    and no partial checkpoint is left behind."""
    from anchorface.errors import io_errors, one_line

    name = checkpoint_name(step)
    partial = output / f".{name}.partial"
    try:
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            recipe.export(ema.model, partial)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial / "training_state"))
        if accelerator.is_main_process:
            write_json(partial / "training_state" / TRAINER_STATE, trainer_state, CheckpointError, indent=1)
            final = output / name
            if final.exists():
                shutil.rmtree(final)
            os.rename(partial, final)
            write_text(output / LATEST, name + "\n", CheckpointError)
    except BaseException as e:
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        if isinstance(e, io_errors()) or (isinstance(e, RuntimeError) and "write" in str(e)):  # torch.save's
            raise CheckpointError(f"cannot write checkpoint {output / name}: {one_line(e)}") from None
        raise
    accelerator.wait_for_everyone()
    return output / name


def prune_training_states(output: Path, keep: int) -> None:
    """Delete training_state/ of all but the newest `keep` checkpoints (their EMA weights stay)."""
    states = sorted(p.parent for p in output.glob("checkpoint-*/training_state"))
    for ckpt in states[:-keep]:
        shutil.rmtree(ckpt / "training_state", ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------
# Logs
# --------------------------------------------------------------------------------------------------------------

class CSVLog:
    """OUT/log.csv, appended row by row; on resume the rows after the resumed step are dropped first."""

    def __init__(self, path: Path, fields: list[str], start_step: int):
        self.path = path
        rows = []
        if start_step > 0 and path.exists():
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
        with atomic_output(path) as tmp, tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fields, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        self.f = path.open("a", newline="")
        self.w = csv.DictWriter(self.f, fields, lineterminator="\n")

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


class TrainLog:
    """The main process's record of a run: log.csv, TensorBoard (tb/), sample images and the progress bar.

    Columns: step, loss, the recipe's `log_terms`, "lr" (the first parameter group) and "lr_<name>" (the others),
    samples_per_s, elapsed_s."""

    def __init__(self, output: Path, terms: list[str], groups: list[str], start_step: int, total: int,
                 progress: bool, max_seconds: float | None = None):
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        self.output, self.terms, self.groups = output, terms, groups
        lr_columns = ["lr"] + [f"lr_{g}" for g in groups[1:]]
        self.csv = CSVLog(output / "log.csv", ["step", *terms, *lr_columns, "samples_per_s", "elapsed_s"],
                          start_step)
        self.tb = SummaryWriter(str(output / "tb"), purge_step=start_step + 1 if start_step else None)
        # a time budget: the bar counts seconds (the step is in its postfix), else steps
        self.seconds, self.loss = max_seconds, None
        self.bar = tqdm(total=total if max_seconds is None else round(max_seconds), initial=start_step
                        if max_seconds is None else 0, desc="train", unit="step" if max_seconds is None else "s",
                        disable=not progress)

    def advance(self, step: int, seconds: float) -> None:
        """The bar after optimizer step `step`, `seconds` into a time budget."""
        if self.seconds is None:
            self.bar.update(1)
        else:
            self.bar.set_postfix_str(f"step {step}" + (f", loss={self.loss:.4f}" if self.loss is not None else ""),
                                     refresh=False)
            self.bar.update(min(round(seconds), self.bar.total) - self.bar.n)

    def write(self, step: int, means: list[float], lrs: dict, samples_per_s: float, elapsed: float) -> None:
        losses = dict(zip(self.terms, means))
        lr_columns = {("lr" if i == 0 else f"lr_{g}"): lrs[g] for i, g in enumerate(self.groups)}
        self.csv.write({"step": step, **losses, **lr_columns, "samples_per_s": samples_per_s, "elapsed_s": elapsed})
        for k, v in losses.items():
            self.tb.add_scalar(f"loss/{k}", v, step)
        for g in self.groups:
            self.tb.add_scalar(f"lr/{g}", lrs[g], step)
        self.tb.add_scalar("samples_per_s", samples_per_s, step)
        self.loss = losses["loss"]
        if self.seconds is None:
            self.bar.set_postfix(loss=f"{self.loss:.4f}")

    def image(self, step: int, image) -> None:
        from anchorface.io.images import save_image

        (self.output / "samples").mkdir(exist_ok=True)
        save_image(self.output / "samples" / f"step-{step:07d}.png", image)
        self.tb.add_image("samples", image, step, dataformats="HWC")

    def close(self) -> None:
        self.bar.close()
        self.csv.close()
        self.tb.close()


class Meter:
    """The loss terms summed over a log interval, and its training time (checkpoints and previews excluded)."""

    def __init__(self, terms: list[str], device):
        self.terms = terms
        self.sums = torch.zeros(len(terms), device=device)
        self.reset()

    def reset(self) -> None:
        self.sums.zero_()
        self.count, self.t0, self.overhead = 0, time.perf_counter(), 0.0  # count: optimizer steps

    def add(self, losses: dict, scale: int) -> None:
        self.sums += torch.stack([losses[k].detach().float().mean() for k in self.terms]) / scale

    def seconds(self) -> float:
        return time.perf_counter() - self.t0 - self.overhead


# --------------------------------------------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------------------------------------------

# TrainConfig fields that must be at least this (a 0 batch or logging period would crash deep in the loop)
_MINIMA = {"batch_size": 1, "grad_accum": 1, "max_steps": 1, "seed": 0, "warmup_steps": 0, "num_workers": 0,
           "log_every": 1,
           "ckpt_every": 1, "sample_every": 0, "sample_steps": 1}


def check_train_config(tc) -> None:
    """AnchorfaceError (naming the option) for a training setting outside its range."""
    for name, low in _MINIMA.items():
        if getattr(tc, name) < low:
            flag = f"--{name.replace('_', '-')} / " if name != "sample_steps" else ""  # (no flag of its own)
            raise AnchorfaceError(f"{flag}train.{name} must be >= {low}, got {getattr(tc, name)}")
    if not tc.lr > 0:
        raise AnchorfaceError(f"--lr / train.lr must be positive, got {tc.lr}")


def check_output(output: Path, resume: str | None, keep_states: int) -> Path | None:
    """The checkpoint to resume from (None: a fresh run); AnchorfaceError for an output that is not ours to use."""
    if output.exists() and not output.is_dir():
        raise AnchorfaceError(f"--output {output} exists and is not a directory")
    if keep_states < 0:
        raise AnchorfaceError(f"--keep-states must be >= 0 (0 keeps all), got {keep_states}")
    resume_from = find_resume(output, resume)
    if resume_from is None and (output / LATEST).exists():
        raise AnchorfaceError(f"{output} already holds a training run; pass --resume to continue it or choose "
                              "another --output")
    return resume_from


def run_config(cfg: Config, resume_from: Path | None, recipe: type | None) -> tuple[Config, type]:
    """The run's config and recipe class: a resumed run's own (its trainer state names the method; runs from
    before methods had recipes are "anchored"), else `cfg`'s."""
    if resume_from is not None:
        recipe = recipe or recipe_class(read_trainer_state(resume_from).get("method", "anchored"))
        cfg = recipe.read_config(resume_from)
    return cfg, recipe or recipe_class(cfg.method)


def make_accelerator(tc, deterministic: bool, unused_parameters: bool = False):
    """The Accelerator (bf16 autocast on GPU only; CPU runs in fp32) and the per-process micro-batch.
    `unused_parameters`: some parameters get no gradient in a step (a staged recipe), so DDP must look for them."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    gpu = torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=tc.mixed_precision if gpu else "no",
                              gradient_accumulation_steps=tc.grad_accum, cpu=not gpu,
                              kwargs_handlers=[DistributedDataParallelKwargs(
                                  find_unused_parameters=unused_parameters)])
    P = accelerator.num_processes
    if tc.batch_size % (P * tc.grad_accum):
        raise AnchorfaceError(f"batch_size {tc.batch_size} is not divisible by processes ({P}) x grad_accum "
                              f"({tc.grad_accum})")
    return accelerator, tc.batch_size // (P * tc.grad_accum)


@dataclass
class Run:
    """A run's state across the loop's seams."""

    cfg: Config
    recipe: object
    accelerator: object
    model: nn.Module  # prepared by Accelerate (maybe DDP-wrapped)
    optimizer: torch.optim.Optimizer
    scheduler: object
    ema: EMA
    local_batch: int
    step: int = 0
    elapsed: float = 0.0  # training seconds so far (resumed runs included)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def build_run(cfg: Config, recipe, accelerator, local_batch: int) -> Run:
    """Model (seeded), AdamW on the recipe's groups, cosine schedule, EMA; prepared by Accelerate."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = recipe.build_model()
    optimizer = torch.optim.AdamW(recipe.param_groups(model), lr=tc.lr, weight_decay=tc.weight_decay)
    if hasattr(recipe, "scheduler"):  # a recipe with its own rates (e.g. DiffusionAct's stages)
        scheduler = recipe.scheduler(optimizer)
    else:
        scheduler = get_cosine_schedule_with_warmup(optimizer, tc.warmup_steps, tc.max_steps)
    ema = EMA(model, tc.ema_decay)
    ema.model.to(accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped by us once per optimizer step (not prepared)
    return Run(cfg, recipe, accelerator, model, optimizer, scheduler, ema, local_batch)


def resume_run(run: Run, checkpoint: Path) -> None:
    """Raw weights, AdamW, schedule and RNG from training_state/; the EMA from the recipe's export."""
    run.accelerator.load_state(str(checkpoint / "training_state"))
    state = read_trainer_state(checkpoint)
    run.step, run.elapsed = int(state["step"]), float(state.get("elapsed_s", 0.0))
    run.recipe.restore(run.ema.model, checkpoint)
    if run.main:
        print(f"resuming from {checkpoint} at step {run.step}", file=sys.stderr)


def announce(run: Run, output: Path) -> None:
    """Main process: the run directory, its config and the start line."""
    tc, acc = run.cfg.train, run.accelerator
    output.mkdir(parents=True, exist_ok=True)
    save_config(run.cfg, output / "config.yaml")
    n_params = sum(p.numel() for p in run.model.parameters())
    print(f"train: {run.recipe.summary()}, {n_params / 1e6:.2f} M parameters, global batch {tc.batch_size} = "
          f"{acc.num_processes} processes x {tc.grad_accum} accumulation x {run.local_batch}, {acc.device}, "
          f"mixed precision {acc.mixed_precision}", file=sys.stderr)


def data_loader(run: Run):
    """This process's share of examples k, from the current step on (`StepSampler`)."""
    from anchorface.data.dataset import StepSampler

    tc, acc = run.cfg.train, run.accelerator
    sampler = StepSampler(run.local_batch, tc.grad_accum, acc.num_processes, acc.process_index,
                          start_step=run.step, max_steps=tc.max_steps)
    return torch.utils.data.DataLoader(run.recipe.dataset, batch_size=run.local_batch, sampler=sampler,
                                       num_workers=tc.num_workers, pin_memory=acc.device.type == "cuda")


# --------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------

def train_step(run: Run, batches, meter: Meter) -> dict:
    """One optimizer step (`grad_accum` micro-batches), then the schedule and the EMA; the rates it used."""
    tc, acc, model = run.cfg.train, run.accelerator, run.model
    for _micro in range(tc.grad_accum):
        batch = {k: v.to(acc.device, non_blocking=True) for k, v in next(batches).items()}
        with acc.accumulate(model):
            losses = run.recipe.loss(model, batch)
            acc.backward(losses["loss"].mean())
            if acc.sync_gradients and tc.grad_clip:
                acc.clip_grad_norm_(model.parameters(), tc.grad_clip)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        meter.add(losses, tc.grad_accum)
    lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(run.optimizer.param_groups)}
    run.scheduler.step()
    ema_updates = getattr(run.recipe, "ema_updates", None)  # a recipe may restart the EMA's warm-up (stages)
    run.ema.update(acc.unwrap_model(model), ema_updates(run.step) if ema_updates else run.step)
    run.step += 1
    meter.count += 1
    return lrs


def log_interval(run: Run, meter: Meter, lrs: dict, log: TrainLog | None) -> float:
    """Collective: the interval's mean loss terms over all processes, written by the main process; its loss."""
    means = (run.accelerator.reduce(meter.sums, "mean") / meter.count).tolist()
    dt = meter.seconds()
    run.elapsed += dt
    if log is not None:
        log.write(run.step, means, lrs, meter.count * run.cfg.train.batch_size / max(dt, 1e-9), run.elapsed)
    meter.reset()
    return means[0]


def checkpoint(run: Run, output: Path, keep_states: int) -> None:
    """Collective: OUT/checkpoint-XXXXXXX with its training state; older states pruned."""
    tc = run.cfg.train
    state = {"step": run.step, "samples_seen": run.step * tc.batch_size, "seed": tc.seed, "method": run.cfg.method,
             "global_batch": tc.batch_size, "grad_accum": tc.grad_accum,
             "num_processes": run.accelerator.num_processes, "elapsed_s": run.elapsed}
    save_training_checkpoint(run.accelerator, run.recipe, output, run.step, run.ema, state)
    if run.main and keep_states > 0:
        prune_training_states(output, keep_states)


def train(cfg: Config, data_dir: str | Path, output: str | Path, resume: str | None = None,
          max_steps: int | None = None, holdout_videos: int = 1, keep_states: int = 2, deterministic: bool = False,
          progress: bool = True, recipe: type | None = None, max_seconds: float | None = None) -> dict:
    """Train (or resume) a run; returns dict(step, checkpoint, last_loss, main). See the module docstring.

    resume: None (fresh run), "auto" (the latest checkpoint in `output`, if any) or a checkpoint directory; a resumed
    run uses its saved config, except `max_steps` when given. holdout_videos: passed to the recipe (source videos
    held out for previews). keep_states: training_state/ is kept in the newest `keep_states` checkpoints only
    (0 = all); the EMA weights of every checkpoint are kept. recipe: a recipe class instead of `cfg.method`'s.
    max_seconds: stop after the step at which this many seconds of this call's training have passed (checkpoints
    and previews not counted), with a checkpoint there.
    """
    require("accelerate", "train", "training")
    require("tensorboard", "train", "training")  # (torch.utils.tensorboard imports it)
    output = Path(output)
    if max_seconds is not None and not 0 < max_seconds < math.inf:  # (also NaN)
        raise AnchorfaceError(f"the time budget must be a positive number of seconds, got {max_seconds}")
    resume_from = check_output(output, resume, keep_states)
    cfg, recipe_cls = run_config(cfg, resume_from, recipe)
    if max_steps is not None:
        cfg.train.max_steps = max_steps
    check_train_config(cfg.train)
    accelerator, local_batch = make_accelerator(cfg.train, deterministic,
                                                getattr(recipe_cls, "unused_parameters", False))
    run = build_run(cfg, recipe_cls(cfg, Path(data_dir), holdout_videos=holdout_videos), accelerator, local_batch)
    if resume_from is not None:
        resume_run(run, resume_from)
    if run.main:
        announce(run, output)
    last_loss = fit(run, output, keep_states, progress, max_seconds)
    accelerator.end_training()
    return {"step": run.step, "checkpoint": output / checkpoint_name(run.step), "last_loss": last_loss,
            "main": run.main}


def out_of_time(run: Run, seconds: float, max_seconds: float | None) -> bool:
    """Collective when there are several processes: has any of them used up the time budget?"""
    if max_seconds is None or run.accelerator.num_processes == 1:
        return max_seconds is not None and seconds >= max_seconds
    over = torch.tensor(float(seconds >= max_seconds), device=run.accelerator.device)
    return bool(run.accelerator.reduce(over, "max").item())


def fit(run: Run, output: Path, keep_states: int, progress: bool, max_seconds: float | None = None) -> float:
    """Optimizer steps up to max_steps (or the time budget), with logs, previews and checkpoints when due; the last
    logged loss."""
    tc = run.cfg.train
    loader = data_loader(run)
    preview = run.recipe.previewer(run.accelerator.device) if run.main and tc.sample_every > 0 else None
    terms = ["loss", *run.recipe.log_terms]
    log = None
    if run.main:
        groups = [g.get("name", str(i)) for i, g in enumerate(run.optimizer.param_groups)]
        log = TrainLog(output, terms, groups, run.step, tc.max_steps, progress, max_seconds)
    meter, last_loss = Meter(terms, run.accelerator.device), math.nan
    trained, stop = 0.0, False  # this call's training seconds; the time budget is spent

    def due(every: int) -> bool:
        return run.step % every == 0 or run.step == tc.max_steps or stop

    try:
        run.model.train()
        batches = iter(loader)
        while run.step < tc.max_steps and not stop:
            tick = time.perf_counter()
            lrs = train_step(run, batches, meter)
            trained += time.perf_counter() - tick
            stop = out_of_time(run, trained, max_seconds)
            if log is not None:
                log.advance(run.step, trained)
            if due(tc.log_every):
                last_loss = log_interval(run, meter, lrs, log)
            tick = time.perf_counter()
            if preview is not None and due(tc.sample_every):
                log.image(run.step, preview(run.ema.model))
            if due(tc.ckpt_every):
                checkpoint(run, output, keep_states)
            meter.overhead += time.perf_counter() - tick
    finally:
        if log is not None:
            log.close()
    return last_loss
