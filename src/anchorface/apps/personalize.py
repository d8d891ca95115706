"""`anchorface personalize PHOTO_OR_FOLDER -o CKPT`: fine-tune the demo checkpoint on pseudo-clips of your own
photo, or a folder of stills (`training.personalize`, issue 14; supplement §3), for a bounded time."""

from __future__ import annotations

import argparse

from anchorface.apps.arguments import positive_float, positive_int, seed
from anchorface.training.personalize import CLIPS, FRAMES, LR

DEFAULT_MINUTES = 5.0


def _cmd_personalize(args: argparse.Namespace) -> int:
    from anchorface.apps.demo import DEMO_CHECKPOINT
    from anchorface.training.personalize import personalize

    minutes = args.minutes if args.minutes is not None or args.steps is not None else DEFAULT_MINUTES
    personalize(args.photos, args.output, args.base or DEMO_CHECKPOINT, minutes=minutes, steps=args.steps,
                clips=args.clips, frames=args.frames, lr=args.lr, seed=args.seed, progress=not args.quiet)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "personalize", help="make a model of your own photo (fine-tunes the demo model, minutes on a CPU)",
        description="Turn PHOTO (or every still in a folder) into pseudo-clips with the demo's head and expression "
                    "warps, fine-tune the demo checkpoint on them for a bounded time, and write a checkpoint for "
                    "`anchorface reenact --checkpoint CKPT`.")
    p.add_argument("photos", metavar="PHOTO_OR_FOLDER", help="a face photo, or a folder of stills (e.g. artworks)")
    p.add_argument("-o", "--output", required=True, metavar="CKPT", help="the checkpoint folder to write")
    p.add_argument("--minutes", type=positive_float,
                   help=f"wall-time budget, preparation included (default: {DEFAULT_MINUTES:g} without --steps)")
    p.add_argument("--steps", type=positive_int, help="optimizer steps (the first bound reached stops)")
    p.add_argument("--base", help="the checkpoint to start from (default: the installed demo checkpoint)")
    p.add_argument("--clips", type=positive_int, default=CLIPS, help=f"pseudo-clips in all (default: {CLIPS})")
    p.add_argument("--frames", type=positive_int, default=FRAMES, help=f"frames per pseudo-clip (default: {FRAMES})")
    p.add_argument("--lr", type=positive_float, default=LR, help=f"learning rate (default: {LR:g})")
    p.add_argument("--seed", type=seed, default=0, help="motions, data and noise seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_personalize)
