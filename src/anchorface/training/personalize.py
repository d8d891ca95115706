"""`anchorface personalize PHOTO_OR_FOLDER -o CKPT`: a model of your own face, fine-tuned from the demo checkpoint
(issue 14).

The demo checkpoint was trained on pseudo-clips of one portrait and draws that face whatever the source. This is the
same recipe for any stills (supplement §3: geometric transformations of each still "conceptualize a series of video
clips"), then a short fine-tuning:

1. each still is cropped head-and-shoulders and turned into pseudo-clips by the landmark-driven head and expression
   warps of `data.synthetic` (the demo's recipe);
2. the clips are prepared as any training videos (`data.dataset.prepare_dataset`: face crops, MediaPipe landmarks,
   latents) with the base checkpoint's config;
3. the method-agnostic loop (`training.loop.train`) runs the anchored recipe starting from the base checkpoint's
   weights (`AnchoredRecipe.starting_from`) for `steps` optimizer steps and/or a time budget;
4. the EMA weights are written (float16, as the demo) as a from_pretrained checkpoint at CKPT, atomically, with the
   stills' signatures (`faces.signature`) so that `reenact` knows which photos the model has seen.

Intermediate files live in a hidden folder beside CKPT and are removed in every case (also on Ctrl-C / SIGTERM);
CKPT appears complete or not at all.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


from anchorface.errors import AnchorfaceError, CheckpointError, one_line, require

CLIPS, FRAMES = 24, 40  # pseudo-clips (over all stills) and frames per clip
LR, WARMUP = 1e-4, 20  # fine-tuning: a third of the demo's rate, a short warmup
OPEN_ENDED_STEPS = 1_000_000  # max_steps with a time budget only (the cosine schedule stays ~flat meanwhile)
EXPORT_RESERVE_S = 10.0  # seconds of the budget kept for writing the checkpoint
# making the pseudo-clips stops at this share of --minutes (preparing them takes about twice as long again), so a
# short budget makes fewer clips rather than overrunning (measured: 24 clips of 40 frames, ~11 s + ~22 s on 2 cores)
PREPARATION_SHARE = 0.1


@dataclass
class Personalized:
    output: Path
    photos: int  # stills with a face
    clips: int
    steps: int
    last_loss: float
    seconds: float  # wall time, all of it


def check_output(output: Path) -> None:
    """CKPT may be new or an anchorface checkpoint (replaced); anything else is not ours to replace."""
    if output.exists():
        if not output.is_dir():
            raise AnchorfaceError(f"-o {output} exists and is not a folder")
        if any(output.iterdir()) and not (output / "anchorface.json").is_file():
            raise AnchorfaceError(f"-o {output} is a folder that is not an anchorface checkpoint; choose a new path")


def work_folder(output: Path) -> Path:
    """A hidden folder beside `output` for the pseudo-clips, dataset and run (a one-line error when the folder of
    `output` cannot be written)."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.personalize-"))
    except OSError as e:
        raise AnchorfaceError(f"cannot write checkpoint {output}: {e.strerror or one_line(e)}") from None


def personalize(photos: str | Path, output: str | Path, base: str | Path, *, minutes: float | None = None,
                steps: int | None = None, clips: int = CLIPS, frames: int = FRAMES, lr: float = LR, seed: int = 0,
                progress: bool = True) -> Personalized:
    """Fine-tune checkpoint `base` on pseudo-clips of `photos` (a photo or a folder of stills) for `steps` optimizer
    steps and/or `minutes` of wall time in all (data preparation included), and write the checkpoint `output`
    (module doc). CPU or the GPU (Accelerate picks)."""
    from anchorface.data.dataset import prepare_dataset
    from anchorface.data.synthetic import load_portraits, make_pseudo_clips, trained_on
    from anchorface.devices import resolve_device
    from anchorface.methods.anchored.checkpoint import load_checkpoint, read_config, save_checkpoint
    from anchorface.methods.anchored.training import AnchoredRecipe
    from anchorface.training.loop import train

    start = time.perf_counter()
    if minutes is None and steps is None:
        raise AnchorfaceError("give a bound: --minutes and/or --steps")
    if minutes is not None and not (math.isfinite(minutes * 60.0) and minutes > 0):  # (1e308 minutes: inf seconds)
        raise AnchorfaceError(f"--minutes must be a positive number (in range), got {minutes}")
    if steps is not None and steps < 1:
        raise AnchorfaceError(f"--steps must be >= 1, got {steps}")
    if clips < 1 or frames < 4:
        raise AnchorfaceError(f"need >= 1 clip of >= 4 frames, got {clips} clips of {frames} frames")
    if not (math.isfinite(lr) and lr > 0):
        raise AnchorfaceError(f"--lr must be a positive number, got {lr}")
    require("accelerate", "train", "personalize")  # before the long preparation
    require("tensorboard", "train", "personalize")
    output = Path(output)
    check_output(output)
    if output.resolve() == Path(base).resolve():
        raise AnchorfaceError(f"-o {output} is the base checkpoint; choose a new path (the base stays as it is)")
    cfg = read_config(base, "anchored")  # CheckpointError: not a checkpoint, or one of another method
    if frames < cfg.model.num_frames:
        raise AnchorfaceError(f"--frames must be >= the model's {cfg.model.num_frames} frames per sequence")
    work = work_folder(output)  # (a read-only folder fails here, before any work)
    try:
        portraits = load_portraits(photos)  # one-line errors: missing, unreadable, empty folder, no face
        record = trained_on(portraits)
        deadline = None if minutes is None else start + PREPARATION_SHARE * minutes * 60.0
        made = make_pseudo_clips(work / "clips", clips, frames, seed=seed, progress=progress, portraits=portraits,
                                 deadline=deadline)
        if progress and len(made) < clips:
            print(f"personalize: {len(made)} of {clips} pseudo-clips fit the --minutes budget", file=sys.stderr)
        prepared = prepare_dataset(work / "clips", work / "data", cfg, device=resolve_device("auto"),
                                   progress=progress)
        tc = cfg.train
        tc.lr, tc.warmup_steps, tc.seed = lr, min(WARMUP, steps or WARMUP), seed
        tc.log_every, tc.sample_every = 10, 0
        tc.max_steps = steps or OPEN_ENDED_STEPS
        tc.ckpt_every = tc.max_steps  # one checkpoint: at the end (or when the time is up)
        budget = None
        if minutes is not None:
            budget = max(minutes * 60.0 - (time.perf_counter() - start) - EXPORT_RESERVE_S, 1.0)
        run = train(cfg, work / "data", work / "run", holdout_videos=0, keep_states=1, progress=progress,
                    recipe=AnchoredRecipe.starting_from(base), max_seconds=budget)
        diverged = AnchorfaceError(f"fine-tuning diverged (loss {run['last_loss']}); try a smaller --lr")
        if not math.isfinite(run["last_loss"]):
            raise diverged
        try:
            cfg, sdit, encoder = load_checkpoint(run["checkpoint"])
        except CheckpointError:  # (its NaN / infinite weights: `check_finite`)
            raise diverged from None
        save_checkpoint(output, cfg, sdit.half(), encoder.half() if encoder is not None else None,
                        trained_on=record)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = Personalized(output, len(portraits), prepared["clips"], run["step"], run["last_loss"],
                          time.perf_counter() - start)
    if progress:
        print(f"personalize: wrote {output} ({result.photos} photo(s), {result.clips} pseudo-clips, {result.steps} "
              f"steps, loss {result.last_loss:.4f}, {result.seconds / 60:.1f} min); use it with reenact --checkpoint "
              f"{output}{overrun_note(minutes, result.seconds, result.steps)}", file=sys.stderr)
    return result


def overrun_note(minutes: float | None, seconds: float, steps: int) -> str:
    """An overrun --minutes budget is said, rather than let the summary imply it was kept; after a single step,
    the budget was too short for the least personalize can do (a pseudo-clip per photo, a step, the export)."""
    if minutes is None or seconds <= minutes * 60.0 * 1.1 + 1.0:
        return ""
    why = ": the least it can do, one pseudo-clip per photo, one step and the export, takes longer here" \
        if steps <= 1 else ""
    return f" (took {seconds:.0f} s, more than --minutes {minutes:g}{why})"
