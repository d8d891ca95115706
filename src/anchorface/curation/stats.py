"""Dataset statistics of App. B (Figs. 10-13): histograms with mean ± std of clip duration, resolution, quality and
face width / height ratio, as PNGs plus `stats.md` and `stats.json`.

Two kinds of input:
- a curated folder (`anchorface curate`, `manifest.json`): its accepted segments. Resolution is the source video's
  shorter side ("745p"); quality is `laplacian_sharpness` (the paper's is HyperIQA, `curation.filters`); the face
  ratios are the median face box over the segment's frame size (the clip as cut).
- a prepared dataset (`anchorface prepare`, `index.json`): its clips. Duration is frames / fps; resolution is the
  crop resolution the dataset was prepared at; the face ratios are the extent of MediaPipe's landmarks over the
  crop (median over up to `LANDMARK_FRAMES` frames per clip: the dataset keeps landmarks, not detector boxes), which
  is what App. B's 0.45 / 0.53 describe; quality is not stored in a dataset and is left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anchorface.errors import AnchorfaceError

BINS = 30
LANDMARK_FRAMES = 16
PAPER = {  # App. B, ReenactFaces-1M: (mean, std)
    "duration": (3.29, 2.07), "resolution": (745.1, 247.8), "quality": (51.5, 10.72),
    "face_width_ratio": (0.45, 0.05), "face_height_ratio": (0.53, 0.07),
}
LABELS = {
    "duration": "clip duration (s)", "resolution": "resolution (px, shorter side)", "quality": "quality",
    "face_width_ratio": "face width / clip width", "face_height_ratio": "face height / clip height",
}


def _from_manifest(path: Path) -> tuple[dict, dict]:
    from anchorface.curation.runner import load_manifest

    m = load_manifest(path)
    v = {k: [] for k in PAPER}
    for video in m["videos"]:
        for s in video["segments"]:
            if not s["accepted"]:
                continue
            b = np.asarray(s["boxes"], dtype=np.float64)
            v["duration"].append(s["duration"])
            v["resolution"].append(min(video["width"], video["height"]))
            q = s["scores"].get("laplacian_sharpness")
            if q is not None:
                v["quality"].append(q)
            v["face_width_ratio"].append(float(np.median(b[:, 2] - b[:, 0])) / video["width"])
            v["face_height_ratio"].append(float(np.median(b[:, 3] - b[:, 1])) / video["height"])
    info = {"kind": "curated", "path": str(path), "units": "segments",
            "quality": "laplacian_sharpness (variance of the Laplacian of the 256-px face crop; not HyperIQA)",
            "face_ratio": "median MediaPipe face box / frame size of the source video",
            "resolution": "shorter side of the source video"}
    return v, info


def _from_dataset(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    from anchorface.data.dataset import load_index

    index = load_index(path)
    res = index["data"]["resolution"]
    v = {k: [] for k in PAPER}
    handles: dict = {}
    for c in index["clips"]:
        v["duration"].append(c["num_frames"] / c["fps"])
        v["resolution"].append(res)
        if c["shard"] not in handles:
            handles[c["shard"]] = safe_open(str(path / c["shard"]), framework="np")
        sl = handles[c["shard"]].get_slice(f"{c['name']}/landmarks")
        n = c["num_frames"]
        idx = np.unique(np.linspace(0, n - 1, min(n, LANDMARK_FRAMES)).round().astype(int))
        lmk = np.stack([sl[int(i):int(i) + 1][0] for i in idx])  # [k, 478, 3], x/y in [0, 1] of the crop
        ok = np.isfinite(lmk).all(axis=(1, 2)) & (np.abs(lmk[..., :2]).sum(axis=(1, 2)) > 0)
        if ok.any():
            ext = lmk[ok, :, :2].max(axis=1) - lmk[ok, :, :2].min(axis=1)
            v["face_width_ratio"].append(float(np.median(ext[:, 0])))
            v["face_height_ratio"].append(float(np.median(ext[:, 1])))
    info = {"kind": "dataset", "path": str(path), "units": "clips",
            "quality": "not stored in a prepared dataset",
            "face_ratio": "extent of MediaPipe's landmarks over the face crop (median over sampled frames)",
            "resolution": f"the crop resolution the dataset was prepared at ({res} px)"}
    return v, info


def summarize(values) -> dict:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    counts, edges = np.histogram(a, bins=BINS if np.ptp(a) > 0 else 1)
    return {"n": int(a.size), "mean": float(a.mean()), "std": float(a.std()), "median": float(np.median(a)),
            "min": float(a.min()), "max": float(a.max()),
            "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}}


def _plot(values: dict, out: Path) -> list[str]:
    from matplotlib.figure import Figure

    names = []
    for key, fname in (("duration", "duration.png"), ("resolution", "resolution.png"), ("quality", "quality.png")):
        if not values[key]:
            continue
        fig = Figure(figsize=(5, 3.2), dpi=100)
        ax = fig.add_subplot()
        a = np.asarray(values[key])
        ax.hist(a, bins=BINS, color="#4c72b0")
        ax.set_xlabel(LABELS[key])
        ax.set_ylabel("count")
        ax.set_title(f"{LABELS[key]}: {a.mean():.3g} ± {a.std():.3g}")
        fig.tight_layout()
        fig.savefig(out / fname)
        names.append(fname)
    if values["face_width_ratio"]:
        fig = Figure(figsize=(5, 3.2), dpi=100)
        ax = fig.add_subplot()
        for key, color in (("face_width_ratio", "#4c72b0"), ("face_height_ratio", "#dd8452")):
            a = np.asarray(values[key])
            ax.hist(a, bins=BINS, alpha=0.6, color=color,
                    label=f"{key.split('_')[1]}: {a.mean():.3f} ± {a.std():.3f}")
        ax.set_xlabel("face size / clip size")
        ax.set_ylabel("count")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "face_ratio.png")
        names.append("face_ratio.png")
    return names


def dataset_stats(path: str | Path, output: str | Path | None = None) -> dict:
    """Statistics of a curated folder or a prepared dataset (module doc), written to `output` (default:
    `<curated>/stats`, or `<dataset>-stats` beside a dataset, which may hold nothing else)."""
    from anchorface.curation.runner import MANIFEST, write_json_atomic
    from anchorface.io.atomic import atomic_output

    path = Path(path)
    if (path / MANIFEST).is_file():
        values, info = _from_manifest(path)
        default = path / "stats"
    elif (path / "index.json").is_file():
        values, info = _from_dataset(path)
        default = path.with_name(path.name + "-stats")
    else:
        raise AnchorfaceError(f"{path} is neither a curated folder (manifest.json) nor a prepared dataset "
                              "(index.json)")
    if not values["duration"]:
        raise AnchorfaceError(f"{path}: no accepted segment to describe")
    out = Path(output) if output else default
    report = {**info, "count": len(values["duration"]),
              "total_hours": float(np.sum(values["duration"]) / 3600),
              "metrics": {k: summarize(v) for k, v in values.items()},
              "paper": {k: {"mean": m, "std": s} for k, (m, s) in PAPER.items()}}
    with atomic_output(out) as tmp:
        tmp.mkdir(parents=True)
        report["images"] = _plot(values, tmp)
        write_json_atomic(tmp / "stats.json", report)
        (tmp / "stats.md").write_text(render_markdown(report))
    return report


def render_markdown(r: dict) -> str:
    lines = [f"# Dataset statistics (App. B): {r['kind']} `{r['path']}`", "",
             f"{r['count']} {r['units']}, {r['total_hours'] * 60:.2f} minutes in all.", "",
             "| measure | mean ± std | median | min – max | n | paper (ReenactFaces-1M) |",
             "|---|---|---|---|---|---|"]
    for k, s in r["metrics"].items():
        p = r["paper"][k]
        paper = f"{p['mean']:g} ± {p['std']:g}" + (" (HyperIQA)" if k == "quality" else "")
        if s["n"] == 0:
            lines.append(f"| {LABELS[k]} | – | – | – | 0 | {paper} |")
            continue
        lines.append(f"| {LABELS[k]} | {s['mean']:.3f} ± {s['std']:.3f} | {s['median']:.3f} | "
                     f"{s['min']:.3f} – {s['max']:.3f} | {s['n']} | {paper} |")
    lines += ["", f"- quality: {r['quality']}", f"- face ratio: {r['face_ratio']}",
              f"- resolution: {r['resolution']}", ""]
    lines += [f"![{name}]({name})" for name in r.get("images", [])]
    return "\n".join(lines) + "\n"
