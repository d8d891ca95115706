"""`anchorface demo`: renders a synthetic driving clip of scikit-image's astronaut (a motion the model never saw,
`data/synthetic.py`), reenacts the astronaut with the committed demo checkpoint, and writes the video and a
side-by-side comparison (driving | anchored | multidiffusion)."""

from __future__ import annotations

import time
from pathlib import Path

from anchorface.apps.arguments import positive_int, seed as seed_type
from anchorface.data.synthetic import astronaut, head_and_shoulders, random_motion, write_pseudo_clip
from anchorface.errors import AnchorfaceError

DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "demo"


def run_demo(output_dir: str | Path = "demo-output", checkpoint: str | Path | None = None, num_frames: int = 50,
             steps: int | None = None, seed: int = 0, device: str = "cpu", progress: bool = True) -> dict[str, Path]:
    """Render a synthetic driving clip, reenact the astronaut with it, write the video and a comparison."""
    from anchorface.methods.anchored.pipeline import AnchorFacePipeline
    from anchorface.io.images import save_image

    from anchorface.apps.arguments import writable_folder
    from anchorface.methods.anchored.checkpoint import read_config

    if num_frames < 1:
        raise AnchorfaceError(f"--frames must be an integer >= 1 (the length of the driving clip), got {num_frames}")
    ckpt = Path(checkpoint) if checkpoint else DEMO_CHECKPOINT
    if checkpoint is None and not (ckpt / "anchorface.json").exists():
        raise AnchorfaceError(f"demo checkpoint not found at {ckpt}; train one with scripts/train_demo_checkpoint.py")
    read_config(ckpt)  # a one-line error for a missing / wrong checkpoint, before any work
    out = writable_folder(output_dir, "the output folder")
    t0 = time.time()
    image, geo = head_and_shoulders(astronaut())
    source = out / "source.png"
    save_image(source, image)
    driving = out / "driving.mp4"
    # an unseen motion (seed outside the training range) of the same portrait
    write_pseudo_clip(driving, image, geo, random_motion(num_frames, 9_000_000 + seed))
    pipe = AnchorFacePipeline.from_pretrained(ckpt, device=device)
    result_path = out / "reenacted.mp4"
    compare_path = out / "compare.mp4"
    kwargs = {} if steps is None else {"steps": steps}
    pipe.reenact(source, driving, result_path, seed=seed, compare_path=compare_path, progress=progress, **kwargs)
    print(f"demo: wrote {result_path} and {compare_path} in {time.time() - t0:.0f} s")
    return {"source": source, "driving": driving, "video": result_path, "compare": compare_path}


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="reenact a built-in portrait with the committed demo checkpoint",
                              description=run_demo.__doc__)
    p.add_argument("-o", "--output", default="demo-output", help="output directory (default: demo-output)")
    p.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the committed demo model)")
    p.add_argument("--frames", type=positive_int, default=50,
                   help="length of the synthetic driving clip (default: 50 = 2 s)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="denoising steps (default: the checkpoint's; the demo model samples with DPM-Solver++(2M), 10)")
    p.add_argument("--seed", type=seed_type, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=lambda a: run_demo(a.output, a.checkpoint, a.frames, a.steps, a.seed, a.device,
                                           not a.quiet) and 0)
