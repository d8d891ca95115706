"""A held-out test split by identity (§3.3, ReenactFaces-Test-1K): no test identity appears in training.

The accepted segments of a curated folder are clustered by identity: the face-recognition embedding of each
segment's first frame (`curation.filters`, kept in the manifest) with average-linkage agglomerative clustering cut
at `faces.identity.SAME_PERSON` (scikit-learn). Whole clusters, in a seeded random order, go to the test split until
it holds `test_fraction` of the segments (at least one cluster, and at least one left for training).

Written to SPLIT_DIR (default `<curated>/split`; needs the clips, `anchorface curate --write-clips`):

    split.json          settings, every segment's cluster, the train and test segment ids
    train/              links to the training clips         -> `anchorface prepare SPLIT_DIR/train DATASET`
    test/driving/       links to the test clips             -> `anchorface evaluate --driving SPLIT_DIR/test/driving`
    test/sources/       the first frame of each test clip (a photo of its identity)
    self_pairs.tsv      driving clip <TAB> source: the clip itself (§4.3.1 takes the source from its own frames)
    cross_pairs.tsv     driving clip <TAB> a photo of another identity cluster (§4.3.2)
                                                            -> `anchorface evaluate --cross-pairs SPLIT_DIR/cross_pairs.tsv`
Paths in the TSV files are relative to SPLIT_DIR.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np

from anchorface.errors import AnchorfaceError

DEFAULT_TEST_FRACTION = 0.2


def identity_clusters(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Cluster labels [N] (0..K-1, numbered by first appearance) of identity embeddings [N, D]."""
    n = len(vectors)
    if n == 0:
        return np.zeros(0, int)
    if n == 1:
        return np.zeros(1, int)
    from sklearn.cluster import AgglomerativeClustering

    raw = AgglomerativeClustering(n_clusters=None, distance_threshold=threshold, linkage="average",
                                  metric="euclidean").fit_predict(np.asarray(vectors, np.float64))
    order = {c: k for k, c in enumerate(dict.fromkeys(raw.tolist()))}
    return np.array([order[c] for c in raw], int)


def choose_test_clusters(labels: np.ndarray, fraction: float, seed: int) -> set[int]:
    """Whole clusters in a seeded random order until the test side has `fraction` of the items: at least one
    cluster on each side, and two on the test side when there are three or more (so that cross-identity pairs can
    be formed within the test identities)."""
    clusters = sorted(set(labels.tolist()))
    if len(clusters) < 2:
        raise AnchorfaceError(f"a split by identity needs at least two identity clusters, found {len(clusters)}")
    random.Random(seed).shuffle(clusters)
    sizes = {c: int((labels == c).sum()) for c in clusters}
    test, count = set(), 0
    for c in clusters[:-1]:
        if len(test) >= min(2, len(clusters) - 1) and count >= fraction * len(labels):
            break
        test.add(c)
        count += sizes[c]
    return test


def _first_frame(clip: Path) -> np.ndarray:
    from anchorface.io.video import iter_frames

    return next(iter_frames(clip, max_frames=1))


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(target, link.parent), link)


def make_split(curated_dir: str | Path, output: str | Path | None = None, test_fraction: float = DEFAULT_TEST_FRACTION,
               threshold: float | None = None, seed: int = 0) -> dict:
    """Write the split (module doc); returns split.json's content."""
    from anchorface.curation.runner import load_manifest
    from anchorface.faces.identity import SAME_PERSON
    from anchorface.io.atomic import atomic_output
    from anchorface.io.images import save_image

    if not 0 < test_fraction < 1:
        raise AnchorfaceError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    threshold = SAME_PERSON if threshold is None else float(threshold)
    curated = Path(curated_dir)
    m = load_manifest(curated)
    segs = [s for v in m["videos"] for s in v["segments"] if s["accepted"]]
    if not segs:
        raise AnchorfaceError(f"{curated}: no accepted segment to split")
    missing = [s["id"] for s in segs if not s.get("clip") or not (curated / s["clip"]).is_file()]
    if missing:
        raise AnchorfaceError(f"{curated}: clip of segment {missing[0]} not found (run `anchorface curate` with "
                              "--write-clips)")
    vecs = np.array([s["scores"]["identity_embedding"] for s in segs], np.float64)
    labels = identity_clusters(vecs, threshold)
    test_clusters = choose_test_clusters(labels, test_fraction, seed)
    test = [s for s, c in zip(segs, labels) if c in test_clusters]
    train = [s for s, c in zip(segs, labels) if c not in test_clusters]
    cluster_of = {s["id"]: int(c) for s, c in zip(segs, labels)}

    # cross-identity: each test clip with the first frame of a test clip from another cluster (seeded rotation)
    rng = random.Random(seed)
    order = list(test)
    rng.shuffle(order)
    cross = []
    for k, s in enumerate(test):
        others = [o for o in order if cluster_of[o["id"]] != cluster_of[s["id"]]]
        if others:
            cross.append((s, others[k % len(others)]))
    out = Path(output) if output else curated / "split"
    info = {"curated": str(curated), "threshold": threshold, "test_fraction": test_fraction, "seed": seed,
            "clusters": int(labels.max() + 1), "test_clusters": sorted(int(c) for c in test_clusters),
            "cluster_of": cluster_of, "train": [s["id"] for s in train], "test": [s["id"] for s in test],
            "cross_pairs": [[a["id"], b["id"]] for a, b in cross]}
    with atomic_output(out) as tmp:
        tmp.mkdir(parents=True)
        for s in train:
            _link(curated / s["clip"], tmp / "train" / Path(s["clip"]).name)
        for s in test:
            _link(curated / s["clip"], tmp / "test" / "driving" / Path(s["clip"]).name)
            save_image(tmp / "test" / "sources" / f"{s['id']}.jpg", _first_frame(curated / s["clip"]))
        (tmp / "self_pairs.tsv").write_text("".join(
            f"test/driving/{Path(s['clip']).name}\ttest/driving/{Path(s['clip']).name}\n" for s in test))
        (tmp / "cross_pairs.tsv").write_text("".join(
            f"test/driving/{Path(a['clip']).name}\ttest/sources/{b['id']}.jpg\n" for a, b in cross))
        (tmp / "split.json").write_text(json.dumps(info, indent=1))
    return info
