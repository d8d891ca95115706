"""`anchorface evaluate`: the evaluation protocols of §4.3 (`evaluation/protocols.py`) from the command line."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from anchorface.apps.arguments import int_range, non_negative_float, positive_int, seed
from anchorface.diffusion.sampling import SAMPLERS
from anchorface.evaluation import protocols
from anchorface.evaluation.protocols import (ABLATION_SCALES, CONDITIONS, DEFAULT_LENGTHS, MERGES, PROTOCOLS,
                                             SELF_FRAMES, Options, run_evaluation)
from anchorface.methods.registry import method_names


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluation protocols of §4.3, the Fig. 5 consistency study and the "
                              "supp. Table 1 ablation -> report.md / report.json / PNGs",
                              description=protocols.__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", metavar="NAME",
                   help=f"methods of the registry, Table 1's columns: {' '.join(method_names())} (default: all)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="DIR",
                   help="checkpoint directory of the model methods (repeat to compare several)")
    p.add_argument("--driving", nargs="+", required=True, metavar="DIR_OR_FILE",
                   help="driving videos, or directories of them")
    p.add_argument("--sources", metavar="DIR", help="photos of other identities (cross-identity and ablation)")
    p.add_argument("--cross-pairs", metavar="TSV",
                   help="explicit cross-identity pairs, lines 'driving<TAB>photo' (`anchorface split`), instead of "
                        "a rotation over --sources")
    p.add_argument("--output", "-o", required=True, metavar="REPORT_DIR")
    p.add_argument("--merge", nargs="+", default=list(MERGES), choices=MERGES, metavar="KIND",
                   help=f"merge strategies to compare: {' '.join(MERGES)} (default: all; the ablation uses the first)")
    p.add_argument("--protocol", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS, metavar="NAME",
                   help=f"what to run: {' '.join(PROTOCOLS)} (default: all)")
    p.add_argument("--sampler", choices=SAMPLERS, help="diffusion sampler (default: each checkpoint's)")
    p.add_argument("--steps", type=positive_int, metavar="N", help="denoising steps (default: each checkpoint's)")
    p.add_argument("--guidance-scale", type=non_negative_float, metavar="S",
                   help="CFG scale (default: each checkpoint's)")
    p.add_argument("--frames", type=int_range(2), default=SELF_FRAMES, metavar="N",
                   help="driving window length for self/cross (default 8, §4.3.1)")
    p.add_argument("--max-videos", type=positive_int, default=8, metavar="K",
                   help="use at most K driving videos (default 8)")
    p.add_argument("--lengths", type=int_range(2, protocols.MAX_LENGTH), nargs="+", default=list(DEFAULT_LENGTHS),
                   metavar="L",
                   help="video lengths of the consistency study (default: 8 16 32 64)")
    p.add_argument("--ablation-steps", type=positive_int, nargs="+", metavar="N",
                   help="step counts of the ablation (default: --steps and twice that)")
    p.add_argument("--ablation-scales", type=non_negative_float, nargs="+", default=list(ABLATION_SCALES), metavar="S",
                   help="CFG scales of the ablation (default: 1 2 4 8, as supp. Table 1)")
    p.add_argument("--ablation-conditions", nargs="+", default=["none", "landmarks", "global", "both"],
                   choices=list(CONDITIONS), metavar="C",
                   help="conditions given at sampling in the ablation: none landmarks global both (default: all)")
    p.add_argument("--embedding", choices=list(protocols.EMBEDDINGS),
                   help="what CSIM, Self-CSIM and the identity drift embed with: identity (dlib's face-recognition "
                        "network; default), clip (needs --clip; the default when --clip is given) or learned (the "
                        "checkpoint's own global encoder)")
    p.add_argument("--clip", metavar="PATH", help="CLIP model directory (for --embedding clip)")
    p.add_argument("--inception", metavar="PATH", help="inception-2015-12-05.pt (StyleGAN2-ADA TorchScript) for FID")
    p.add_argument("--i3d", metavar="PATH", help="i3d_torchscript.pt (StyleGAN-V TorchScript) for FVD")
    p.add_argument("--relative", action="store_true", help="condition on motion re-targeted to the source face")
    p.add_argument("--no-baselines", dest="baselines", action="store_false",
                   help="leave out Table 1's 'copy driving' and 'still source' reference columns")
    p.add_argument("--consistency-conditions", nargs="+", default=["both"], choices=list(CONDITIONS), metavar="C",
                   help="settings of the consistency study: the signals given (both = full conditions, landmarks = "
                        "G dropped; default: both)")
    p.add_argument("--seeds", type=positive_int, default=1, metavar="K",
                   help="seeds per clip, length and strategy in the consistency study (default 1)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=partial(_main, parser=p))


# option -> the protocols that use it: given (not at its default) when none of them is selected, a one-line error
# rather than silently ignored (and named in the report's settings as if applied)
_SAMPLING = set(PROTOCOLS) - {"guidance"}  # (the guidance study measures x0-recovery, it does not sample)
USED_BY = {"lengths": {"consistency"}, "seeds": {"consistency"}, "consistency_conditions": {"consistency"},
           "ablation_steps": {"ablation"}, "ablation_scales": {"ablation"}, "ablation_conditions": {"ablation"},
           "sources": {"cross", "ablation"}, "cross_pairs": {"cross", "ablation"}, "merge": _SAMPLING,
           "sampler": _SAMPLING, "steps": _SAMPLING,
           "guidance_scale": {"self", "cross", "consistency"}}  # (the ablation sets its own, --ablation-scales)


def check_used(a, parser) -> None:
    """Every option given is used by a selected protocol (`USED_BY`)."""
    from anchorface.errors import AnchorfaceError

    for key, users in USED_BY.items():
        if getattr(a, key) != parser.get_default(key) and not users & set(a.protocol):
            names = sorted(users)
            names = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
            selected = f"--protocol {' '.join(a.protocol)}"
            raise AnchorfaceError(f"--{key.replace('_', '-')} is used only by the {names} protocol"
                                  + (f"s, and {selected} selects none of them" if len(users) > 1 else
                                     f", and {selected} does not select it"))


def _main(a, parser) -> int:
    from anchorface.apps.arguments import writable_folder
    from anchorface.errors import AnchorfaceError

    check_used(a, parser)
    out = Path(a.output)
    if out.exists() and not out.is_dir():
        raise AnchorfaceError(f"the --output folder {out} is a file, expected a folder")
    writable_folder(out.parent, "the folder of --output")  # before any work (the report is written last)
    o = Options(checkpoints=[Path(c) for c in a.checkpoint], driving=a.driving, output=Path(a.output),
                sources=Path(a.sources) if a.sources else None,
                cross_pairs=Path(a.cross_pairs) if a.cross_pairs else None, merges=tuple(a.merge), protocols=tuple(a.protocol),
                sampler=a.sampler, steps=a.steps, guidance_scale=a.guidance_scale, frames=a.frames, max_videos=a.max_videos,
                lengths=tuple(a.lengths), ablation_steps=tuple(a.ablation_steps) if a.ablation_steps else None,
                ablation_scales=tuple(a.ablation_scales), ablation_conditions=tuple(a.ablation_conditions),
                clip=a.clip, embedding=a.embedding, inception=a.inception, i3d=a.i3d, relative=a.relative,
                baselines=a.baselines,
                methods=tuple(a.methods) if a.methods else None, seed=a.seed, seeds=a.seeds,
                consistency_conditions=tuple(a.consistency_conditions), device=a.device, progress=not a.quiet)
    report = run_evaluation(o)
    print(f"evaluate: wrote {Path(a.output) / 'report.md'} ({len(report['videos'])} videos, "
          f"{report['seconds']:.0f} s)")
    return 0
