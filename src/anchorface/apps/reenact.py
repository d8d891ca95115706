"""`anchorface reenact SOURCE DRIVING -o OUT.mp4`: face reenactment with Anchored Diffusion (§3.2), or another
method of the registry (`--method`, e.g. the `copy-driving` / `still-source` baselines, which need no checkpoint).

Thin command over the shared video flow (`methods.flow.reenact`, which `AnchorFacePipeline.reenact` runs too);
every option maps to one of its arguments. Errors are `AnchorfaceError`s (one line, exit 1) and no output file is
left behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anchorface.apps.arguments import non_negative_float, positive_int, seed, unit_float
from anchorface.apps.batch import read_jobs, run_jobs
from anchorface.devices import close_world, init_world
from anchorface.errors import AnchorfaceError
from anchorface.methods.anchored.options import MERGES, SAMPLERS, check_sampling
from anchorface.methods.registry import get_method, method_names

# given -> passed to the method (which refuses those it does not take)
METHOD_OPTIONS = ("merge", "sampler", "steps", "guidance_scale", "micro_batch", "inversion_steps")


def demo_checkpoint() -> Path:
    """Where the committed demo checkpoint lives inside the package (`anchorface.apps.demo.DEMO_CHECKPOINT`)."""
    from anchorface.apps.demo import DEMO_CHECKPOINT

    return DEMO_CHECKPOINT


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reenact", help="animate a face photo with the motion of a driving video",
        description="Animate SOURCE (a face photo) with the motion of DRIVING (a video): a long, consistent video "
                    "generated with Anchored Diffusion. With --text, give DRIVING only (text-to-video).")
    p.add_argument("source", nargs="?", metavar="SOURCE", help="the face photo to animate (omit with --text)")
    p.add_argument("driving", nargs="?", metavar="DRIVING", help="the driving video")
    p.add_argument("-o", "--output", help="output video (.mp4)")
    p.add_argument("--method", default="anchored", metavar="NAME",
                   help=f"reenactment method: {', '.join(method_names())} (default: anchored; the baselines need no "
                        "checkpoint)")
    p.add_argument("--checkpoint", help="checkpoint directory (default: the installed demo checkpoint)")
    p.add_argument("--merge", choices=MERGES, help="how sequences form the long video (default: checkpoint's, "
                                                   "anchored)")
    p.add_argument("--sampler", choices=SAMPLERS, help="diffusion sampler (default: checkpoint's)")
    p.add_argument("--steps", type=positive_int, help="denoising steps (default: checkpoint's)")
    p.add_argument("--guidance-scale", type=non_negative_float,
                   help="classifier-free guidance scale (1 = none, the paper's best)")
    p.add_argument("--inversion-steps", type=positive_int, metavar="N",
                   help="--method diffusionact: DDIM steps inverting the source, T_xT (default: checkpoint's, 50)")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    motion = p.add_mutually_exclusive_group()
    motion.add_argument("--relative", dest="relative", action="store_true", default=None,
                        help="re-target the driving motion onto the source face (default with a source photo)")
    motion.add_argument("--absolute", dest="relative", action="store_false",
                        help="use the driving landmarks as they are (default with --text)")
    p.add_argument("--no-crop", dest="crop", action="store_false",
                   help="the inputs are already square face crops: use whole frames")
    p.add_argument("--paste-back", action="store_true", help="paste the generated face back into the full frames")
    p.add_argument("--micro-batch", type=positive_int,
                   help="sequences per forward pass (memory; default: checkpoint's)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--compare", metavar="PATH", help="also write driving | anchored | multidiffusion side by side")
    p.add_argument("--text", help="text-to-video: a text prompt instead of the source photo (CLIP checkpoints)")
    p.add_argument("--edit", help="edit the source with a text prompt (CLIP checkpoints)")
    p.add_argument("--edit-weight", type=unit_float, help="weight of --edit in G (default 0.5)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--shots", choices=("auto", "off"), default="auto",  # methods.flow.SHOTS (imported lazily)
                   help="auto: find shot cuts in the driving video and give each shot its own anchor, crop track and "
                        "motion reference; off: one shot (default auto)")
    p.add_argument("--batch", metavar="CSV", help="many jobs, one model load: rows photo,driving,output; rows whose "
                                                  "output exists are skipped (resume); a bad row is reported and "
                                                  "skipped (exit 1 at the end)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    source, driving = args.source, args.driving
    if args.batch is not None:
        if source is not None or driving is not None or args.output is not None or args.compare is not None:
            raise AnchorfaceError("--batch takes its photos, driving videos and outputs from the CSV: give no "
                                  "SOURCE, DRIVING, -o or --compare")
        if args.text is not None:
            raise AnchorfaceError("--batch animates photos; --text is not supported with it")
    else:
        if driving is None and source is not None:
            source, driving = None, source  # one positional: the driving video (the error below names the rest)
        if args.text is not None and source is not None:
            raise AnchorfaceError("with --text give only the driving video (the text replaces the source photo)")
        if driving is None or (args.text is None and source is None):
            raise AnchorfaceError("expected SOURCE DRIVING (a face photo and a driving video)")
        if args.output is None:
            raise AnchorfaceError("expected -o OUTPUT (the video to write), or --batch CSV")
    if args.edit_weight is not None and args.edit is None:
        raise AnchorfaceError("--edit-weight needs --edit (the text prompt it weighs)")
    edit_weight = 0.5 if args.edit_weight is None else args.edit_weight
    spec = get_method(args.method)
    options = {k: getattr(args, k) for k in METHOD_OPTIONS if getattr(args, k) is not None}
    check_sampling(**{k: v for k, v in options.items() if k in ("steps", "micro_batch", "guidance_scale")})
    checkpoint = args.checkpoint
    if spec.needs_checkpoint and checkpoint is None:
        checkpoint = demo_checkpoint()
        if not (checkpoint / "anchorface.json").exists():
            raise AnchorfaceError("no checkpoint given and no demo checkpoint installed; pass --checkpoint DIR")

    from anchorface.methods.flow import check_inputs, reenact

    jobs = read_jobs(args.batch) if args.batch is not None else None
    world, device = init_world(args.device)  # torchrun / accelerate launch: this rank's process and device
    try:
        if jobs is None:
            check_inputs(source, driving, args.output, args.compare, edit_weight)  # before loading weights
        method = spec.from_pretrained(checkpoint, device=device)
        if hasattr(method, "world"):
            method.world = world  # the method splits its work across the ranks (Anchored Diffusion)
        common = dict(seed=args.seed, relative=args.relative, crop=args.crop, paste_back=args.paste_back,
                      edit=args.edit, edit_weight=edit_weight, progress=not args.quiet, shots=args.shots,
                      world=world, **options)

        def describe(result) -> str:
            missing = f", {result.frames_without_face} frames without a face filled" \
                if result.frames_without_face else ""
            return (f"{result.num_frames} frames at {float(result.fps):g} fps, {result.summary}{missing} "
                    f"({result.seconds:.1f} s)")

        if jobs is not None:
            failed = run_jobs(jobs, lambda job: f"wrote {job.output}: " + describe(
                reenact(method, job.photo, job.driving, job.output, **common)), is_main=world.is_main)
            return 1 if failed else 0
        result = reenact(method, source, driving, args.output, compare_path=args.compare, text=args.text, **common)
        if result.note and world.is_main:
            print(f"anchorface: note: {result.note}", file=sys.stderr)
        if not args.quiet and world.is_main:
            extra = f" and {result.compare}" if result.compare else ""
            print(f"wrote {result.output}{extra}: {describe(result)}", file=sys.stderr)
        return 0
    finally:
        close_world(world)
