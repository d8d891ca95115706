"""The scene-recognition study (§4.5.1, Table 2; supplementary Fig. 14): how well do frame embeddings cluster by
video?

Frames are sampled evenly from each group (an accepted segment of a curated folder, or each video of a folder of
videos), embedded by each representation, and scored with scikit-learn's Davies–Bouldin index (lower = tighter,
better separated clusters) and Calinski–Harabasz index (higher = better), the groups as cluster labels; a t-SNE
projection of each representation is plotted, one colour per group.

Representations: the face-recognition embedding (`faces.identity`, dlib's ResNet, standing in for the paper's
ArcFace row), the global encoder G of a checkpoint (`--checkpoint`: the learned encoder, or CLIP if the checkpoint
uses it), and CLIP (`--clip DIR`). The encoders see the paper-framed face crop (`faces.detect.crop_box`), as in
training; the face-recognition embedding sees the face box.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from anchorface.errors import AnchorfaceError

DEFAULT_FRAMES = 16  # frames per group (the paper: 32768 frames over 512 videos = 64 per video)


def _groups_from_curated(path: Path, frames: int) -> list[dict]:
    from anchorface.curation.runner import load_manifest

    m = load_manifest(path)
    raw = m.get("raw_dir")
    groups = []
    for v in m["videos"]:
        for s in v["segments"]:
            if not s["accepted"]:
                continue
            idx = np.unique(np.linspace(0, s["num_frames"] - 1, min(frames, s["num_frames"])).round().astype(int))
            if s.get("clip") and (path / s["clip"]).is_file():
                src, offset = path / s["clip"], 0
            elif raw:
                src, offset = Path(raw) / v["video"], s["start_frame"]
            else:
                raise AnchorfaceError(f"{path}: segment {s['id']} has no clip and the raw folder is unknown")
            groups.append({"name": s["id"], "video": src, "frames": (idx + offset).tolist(),
                           "boxes": [s["boxes"][i] for i in idx]})
    return groups


def _groups_from_videos(paths: list[Path], frames: int) -> list[dict]:
    from anchorface.faces.detect import FaceDetector
    from anchorface.io.video import iter_frames, probe_video

    groups = []
    with FaceDetector(exhaustive=False) as det:
        for p in paths:
            n = probe_video(p).num_frames
            want = set(np.unique(np.linspace(0, n - 1, min(frames, n)).round().astype(int)).tolist())
            keep, boxes = [], []
            for i, f in enumerate(iter_frames(p)):
                if i in want:
                    found = det.detect(f)
                    if found:
                        keep.append(i)
                        boxes.append(found[0].as_array().tolist())
            if len(keep) >= 2:
                groups.append({"name": p.name, "video": p, "frames": keep, "boxes": boxes})
    return groups


def _read(group: dict) -> list[np.ndarray]:
    from anchorface.io.video import iter_frames

    want = {f: k for k, f in enumerate(group["frames"])}
    out: list = [None] * len(want)
    last = max(want)
    for i, f in enumerate(iter_frames(group["video"], max_frames=last + 1)):
        if i in want:
            out[want[i]] = f
    if any(f is None for f in out):
        raise AnchorfaceError(f"{group['video']}: fewer frames than expected")
    return out


def cluster_scores(x: np.ndarray, labels: np.ndarray) -> dict:
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    return {"davies_bouldin": float(davies_bouldin_score(x, labels)),
            "calinski_harabasz": float(calinski_harabasz_score(x, labels))}


def _tsne(x: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def _plot(points: dict[str, np.ndarray], labels: np.ndarray, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(points), 4), dpi=100)
    for k, (name, p) in enumerate(points.items()):
        ax = fig.add_subplot(1, len(points), k + 1)
        ax.scatter(p[:, 0], p[:, 1], c=labels, cmap="tab20", s=8)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)


def scene_study(source, output: str | Path, checkpoint: str | None = None, clip: str | None = None,
                frames: int = DEFAULT_FRAMES, max_groups: int | None = None, device: str = "cpu",
                progress: bool = True) -> dict:
    """Run the study (module doc) on a curated folder or on videos / folders of videos; write `output`/
    table.md, results.json, tsne.png. Returns the results."""
    import torch
    from tqdm.auto import tqdm

    from anchorface.curation.runner import MANIFEST
    from anchorface.faces.detect import Box, crop, crop_box
    from anchorface.faces.identity import IdentityEmbedder
    from anchorface.frozen.codecs import to_pixels
    from anchorface.io.atomic import atomic_output
    from anchorface.io.video import list_videos

    sources = [source] if isinstance(source, (str, Path)) else list(source)
    if len(sources) == 1 and (Path(sources[0]) / MANIFEST).is_file():
        groups = _groups_from_curated(Path(sources[0]), frames)
    else:
        groups = _groups_from_videos(list_videos(sources), frames)
    if max_groups:
        groups = groups[:max_groups]
    if len(groups) < 2:
        raise AnchorfaceError(f"the scene study needs at least two videos or segments with a face, found "
                              f"{len(groups)}")
    encoders: dict = {}
    notes = []
    if checkpoint:
        from anchorface.methods.anchored.pipeline import AnchorFacePipeline

        pipe = AnchorFacePipeline.from_pretrained(checkpoint, device=device)
        if pipe.encoder is None:
            notes.append(f"checkpoint {checkpoint} has no global encoder (global_dim 0)")
        else:
            kind = pipe.config.data.encoder
            encoders[f"G of checkpoint ({kind})"] = (pipe.encoder.eval(), pipe.resolution)
    if clip:
        from anchorface.frozen.encoders import CLIPGlobalEncoder

        encoders["CLIP"] = (CLIPGlobalEncoder(clip).to(device).eval(), 224)
    face_name = "face recognition (dlib ResNet, 128-d)"
    feats: dict[str, list] = {face_name: [], **{n: [] for n in encoders}}
    labels: list[int] = []
    identity = IdentityEmbedder()
    for g_i, g in enumerate(tqdm(groups, desc="scene study", unit="group", disable=not progress)):
        imgs = _read(g)
        feats[face_name].append(identity.embed(imgs, g["boxes"]))
        for name, (enc, res) in encoders.items():
            crops = np.stack([crop(f, crop_box(Box.from_array(b), f.shape[:2]), res) for f, b in zip(imgs, g["boxes"])])
            with torch.no_grad():
                feats[name].append(enc.encode_images(to_pixels(crops).to(device)).float().cpu().numpy())
        labels += [g_i] * len(imgs)
    lab = np.array(labels)
    rows, points = {}, {}
    for name, parts in feats.items():
        x = np.concatenate(parts).astype(np.float64)
        rows[name] = cluster_scores(x, lab) | {"dim": int(x.shape[1])}
        points[name] = _tsne(x)
    result = {"groups": len(groups), "frames": int(len(lab)), "frames_per_group": frames, "rows": rows,
              "group_names": [g["name"] for g in groups], "notes": notes,
              "paper_table2": {"ArcFace": [1.516, 113], "CLIP": [0.611, 641], "MLP-Centers": [0.819, 411],
                               "MLP-ArcFace": [0.810, 413], "MLP-Focal": [0.673, 493]}}
    with atomic_output(Path(output)) as tmp:
        tmp.mkdir(parents=True)
        _plot(points, lab, tmp / "tsne.png")
        (tmp / "results.json").write_text(json.dumps(result, indent=1))
        (tmp / "table.md").write_text(render_table(result))
    return result


def render_table(r: dict) -> str:
    lines = [f"# Scene recognition (§4.5.1, Table 2): {r['frames']} frames from {r['groups']} groups", "",
             "| embedding | dim | Davies–Bouldin ↓ | Calinski–Harabasz ↑ |", "|---|---|---|---|"]
    for name, s in r["rows"].items():
        lines.append(f"| {name} | {s['dim']} | {s['davies_bouldin']:.3f} | {s['calinski_harabasz']:.1f} |")
    lines += ["", "Paper (32768 frames, 512 videos): " + ", ".join(
        f"{k} {v[0]} / {v[1]}" for k, v in r["paper_table2"].items()), ""]
    lines += [f"- note: {n}" for n in r["notes"]]
    lines += ["", "![t-SNE](tsne.png)", ""]
    return "\n".join(lines)
