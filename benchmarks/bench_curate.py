"""Curation throughput (videos/minute, frames/s) of `anchorface curate` (§3.3) on the real face corpus.

RAW = links to ../shared/data/faces/driving/*.mp4 and source/*.mp4 (13 talking-head clips, 480-1364 px, 3-20 s),
curated with thresholds scaled to the corpus (below 720p: --min-height 480, --min-face 150, --min-seconds 2),
serially and on local Ray with 2 workers; each run starts from an empty OUT_DIR (models loaded once per process,
as in a real run). CPU user time of the whole process tree is reported beside wall time: on a shared machine the
wall time depends on what else runs.

    python benchmarks/bench_curate.py [--workers 1 2] [--out /tmp/bench-curate] [--write-clips]
"""

from __future__ import annotations

import argparse
import sys
import json
import os
import resource
import shutil
import time
from pathlib import Path

from anchorface.curation.pipeline import CurateOptions
from anchorface.curation.runner import run_curation

FACES = Path(__file__).resolve().parents[2] / "shared/data/faces"
SCALED = dict(min_height=480, min_face=150.0, min_seconds=2.0)


def raw_folder(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted((FACES / "driving").glob("*.mp4")) + sorted((FACES / "source").glob("*.mp4")):
        link = dest / f"{p.parent.name}_{p.name}"
        if not link.exists():
            os.symlink(p, link)
    return dest


def _cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default="/tmp/bench-curate")
    ap.add_argument("--write-clips", action="store_true")
    a = ap.parse_args()
    base = Path(a.out)
    raw = raw_folder(base / "raw")
    opts = CurateOptions(**SCALED, write_clips=a.write_clips)
    rows = []
    for w in a.workers:
        out = base / f"out-w{w}"
        shutil.rmtree(out, ignore_errors=True)
        t0, c0 = time.perf_counter(), _cpu()
        m = run_curation(raw, out, opts, workers=w, progress=False)
        dt, cpu = time.perf_counter() - t0, _cpu() - c0
        frames = sum(v.get("num_frames", 0) for v in m["videos"])
        row = {"workers": w, "videos": len(m["videos"]), "frames": frames, "wall_s": round(dt, 1),
               "videos_per_min": round(60 * len(m["videos"]) / dt, 2), "frames_per_s": round(frames / dt, 1),
               "cpu_s_driver_tree": round(cpu, 1), "segments_accepted": m["summary"]["segments_accepted"]}
        rows.append(row)
        print(json.dumps(row))
    (base / "bench.json").write_text(json.dumps(rows, indent=1))
    if len(rows) > 1:
        a_, b_ = (base / f"out-w{rows[0]['workers']}" / "manifest.json"), (base / f"out-w{rows[1]['workers']}" /
                                                                           "manifest.json")
        print("manifests identical:", a_.read_bytes() == b_.read_bytes())


if __name__ == "__main__":
    from anchorface.apps.cli import run_command

    sys.exit(run_command(main, "bench_curate"))
