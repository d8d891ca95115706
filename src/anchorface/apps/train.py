"""`anchorface train`: the training loop (`training/loop.py`) from the command line; flags override the config."""

from __future__ import annotations

import argparse
import sys

from anchorface.apps.arguments import non_negative_int, positive_float, positive_int, seed
from anchorface.config import load_config
from anchorface.training.loop import train


_OVERRIDES = {  # CLI flag -> TrainConfig field (max_steps is handled by `train` so that it applies on resume too)
    "batch_size": "batch_size", "lr": "lr", "grad_accum": "grad_accum", "num_workers": "num_workers",
    "seed": "seed", "log_every": "log_every", "ckpt_every": "ckpt_every", "sample_every": "sample_every",
    "warmup_steps": "warmup_steps",
}


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    for flag, field in _OVERRIDES.items():
        if getattr(args, flag) is not None:
            setattr(cfg.train, field, getattr(args, flag))
    if args.gradient_checkpointing:
        cfg.model.gradient_checkpointing = True
    if args.resume is not None and (any(getattr(args, f) is not None for f in _OVERRIDES)
                                    or args.gradient_checkpointing):
        print("anchorface: warning: a resumed run keeps its saved config (only --max-steps applies)", file=sys.stderr)
    recipe = None
    if args.init_from is not None:  # fine-tuning: the model (and its EMA) starts from a checkpoint's weights
        from anchorface.errors import AnchorfaceError
        from anchorface.methods.registry import get_method

        if args.resume is not None:
            raise AnchorfaceError("--init-from starts a new run from a checkpoint's weights, --resume continues a "
                                  "run: give one of them")
        recipe_cls = get_method(cfg.method).load_recipe()
        if not hasattr(recipe_cls, "starting_from"):
            raise AnchorfaceError(f"method {cfg.method} cannot start from a checkpoint's weights (--init-from)")
        recipe = recipe_cls.starting_from(args.init_from)
    out = train(cfg, args.data, args.output, resume=args.resume, max_steps=args.max_steps,
                holdout_videos=args.holdout_videos, keep_states=args.keep_states, deterministic=args.deterministic,
                progress=not args.quiet, recipe=recipe)
    if out["main"]:
        print(f"step {out['step']}, loss {out['last_loss']:.4f}; checkpoint {out['checkpoint']}", file=sys.stderr)
    return 0


DESCRIPTION = ("Train a method's model (the sequence DiT, §3.1, §4.1, by default) with Accelerate on CPU, one or many "
               "GPUs (`accelerate launch -m anchorface train ...`). Checkpoints are from_pretrained directories with "
               "EMA weights; --resume continues a run exactly.")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train an sDiT on a prepared dataset", description=DESCRIPTION)
    p.add_argument("--config", default="tiny", help="preset (tiny, paper-t4, paper-t8) or YAML file (default: tiny)")
    p.add_argument("--data", required=True, help="dataset directory written by `anchorface prepare`")
    p.add_argument("--output", required=True, help="run directory (checkpoints, logs, sample grids)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue a run: a checkpoint directory, or (no value) the latest one in --output")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="fine-tune: start from this checkpoint's weights (same architecture as --config; a new run, "
                        "fresh optimizer and schedule)")
    p.add_argument("--max-steps", type=positive_int, help="optimizer steps in total (config: train.max_steps)")
    p.add_argument("--batch-size", type=positive_int, help="global batch (config: train.batch_size)")
    p.add_argument("--lr", type=positive_float, help="base learning rate (config: train.lr)")
    p.add_argument("--grad-accum", type=positive_int, help="gradient accumulation steps (config: train.grad_accum)")
    p.add_argument("--warmup-steps", type=non_negative_int, help="linear warmup steps (config: train.warmup_steps)")
    p.add_argument("--num-workers", type=non_negative_int,
                   help="DataLoader workers per process (config: train.num_workers)")
    p.add_argument("--seed", type=seed, help="data, noise and init seed (config: train.seed)")
    p.add_argument("--log-every", type=positive_int, help="config: train.log_every")
    p.add_argument("--ckpt-every", type=positive_int, help="config: train.ckpt_every")
    p.add_argument("--sample-every", type=non_negative_int,
                   help="sample grid period, 0 = never (config: train.sample_every)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    p.add_argument("--holdout-videos", type=non_negative_int, default=1,
                   help="source videos held out of training for the sample grids (default: 1)")
    p.add_argument("--keep-states", type=non_negative_int, default=2,
                   help="keep training_state/ (for --resume) in the newest N checkpoints only; 0 = all (default: 2)")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels (exactly repeatable runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)
