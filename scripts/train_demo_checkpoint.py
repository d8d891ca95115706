"""Train the committed demo checkpoint from data the project generates itself.

    python scripts/train_demo_checkpoint.py --work /tmp/demo-train --steps 3000
    python scripts/train_demo_checkpoint.py --work /tmp/demo-train --steps 6000   # resumes: the committed one

(The committed checkpoint was trained in these two runs, the second resuming the first with a longer cosine
schedule; 2 x 12 min on 2 CPU cores.)

1. pseudo-clips of scikit-image's public-domain astronaut portrait (anchorface.data.synthetic, supplement §3's recipe);
2. `anchorface prepare` on them (face crops, MediaPipe landmarks, pixel-codec latents);
3. `anchorface train --config demo` (`tiny`, narrower: the checkpoint is a few MB);
4. the EMA weights are exported in float16 to src/anchorface/assets/demo (a from_pretrained directory), with the
   portrait's signature (`trained_on`), so that `reenact` suggests `anchorface personalize` for other photos.
(`anchorface personalize` is the same recipe for any photo, starting from this checkpoint.)
No file of ../shared is read: the checkpoint may be committed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/anchorface-demo-train")
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--config", default="demo")
    ap.add_argument("--out", default=str(ROOT / "src/anchorface/assets/demo"))
    a = ap.parse_args()
    work = Path(a.work)
    clips, data, run = work / "clips", work / "data", work / "run"
    if not clips.exists():
        from anchorface.data.synthetic import make_pseudo_clips

        make_pseudo_clips(clips, a.clips, a.frames, seed=1)
    if not (data / "index.json").exists():
        sh(sys.executable, "-m", "anchorface", "prepare", str(clips), str(data), "--config", a.config)
    sh(sys.executable, "-m", "anchorface", "train", "--config", a.config, "--data", str(data),
       "--output", str(run), "--max-steps", str(a.steps), "--resume")

    from anchorface.data.synthetic import DEMO_TRAINED_ON, astronaut_portrait, trained_on
    from anchorface.methods.anchored.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    cfg, model, encoder = load_checkpoint(latest_checkpoint(run))
    out = Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    save_checkpoint(out, cfg, model.half(), encoder.half() if encoder is not None else None,
                    trained_on=trained_on([astronaut_portrait()], DEMO_TRAINED_ON))
    print(f"demo checkpoint written to {out}")


if __name__ == "__main__":
    from anchorface.apps.cli import run_command

    sys.exit(run_command(main, "train_demo_checkpoint"))
