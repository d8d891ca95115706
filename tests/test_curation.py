"""curation/: shots, tracks, filters, the per-video pipeline, the resumable Ray/serial runner, App. B statistics,
the identity split and the scene study (§3.3, App. B, §4.5.1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dlib", reason="curation needs the [curate] extra")
pytest.importorskip("scenedetect", reason="curation needs PySceneDetect (pip install --no-deps scenedetect)")
pytest.importorskip("sklearn", reason="curation needs scikit-learn")

from anchorface.apps.cli import main
from anchorface.curation import scenes, tracks
from anchorface.curation.pipeline import CurateOptions
from anchorface.curation.runner import MANIFEST, RESULTS_DIR, run_curation
from anchorface.errors import AnchorfaceError

sys.path.insert(0, str(Path(__file__).parent))
import curation_corpus as corpus

needs_faces = pytest.mark.skipif(not corpus.FACES.is_dir(), reason=f"face corpus not found at {corpus.FACES}")
SRC = Path(__file__).resolve().parents[1] / "src"
# thresholds scaled to the 256-px test corpus (faces ~100-160 px wide)
OPTS = CurateOptions(min_height=200, min_face=60, min_seconds=1.0, write_clips=True)
CLI_FLAGS = ["--min-height", "200", "--min-face", "60", "--min-seconds", "1", "--write-clips", "--quiet"]


# ------------------------------------------------------------------------------------------------ pure parts
def test_tracker_cut_gap_jump_and_lost():
    t = tracks.Tracker(min_face=50, max_gap=2)
    box = np.array([100, 100, 200, 200.0])
    closed = []
    for i in range(30):
        faces = [] if i in (5, 6) or 20 <= i < 24 else [box + (i if i < 12 else 200)]  # gap, jump at 12, loss
        closed += t.update(i, faces, cut=(i == 26))
    closed += t.finish()
    got = [(c.start, c.end, c.end_reason) for c in closed]
    assert got == [(0, 12, tracks.END_JUMP), (12, 20, tracks.END_LOST), (24, 26, tracks.END_CUT),
                   (26, 30, tracks.END_VIDEO)]
    first = closed[0]
    assert not first.detected[5] and first.detected[4]
    np.testing.assert_allclose(first.boxes[5], box + 5)  # the 2-frame gap is interpolated
    with pytest.raises(ValueError):
        t.update(99, [])


def test_tracker_small_faces_and_several_faces():
    big, other, small = [0, 0, 100, 100.0], [300, 0, 390, 90.0], [500, 0, 520, 20.0]
    t = tracks.Tracker(min_face=80, multiple="largest")
    for i in range(5):
        t.update(i, [other, big, small])
    (tr,) = t.finish()
    np.testing.assert_allclose(tr.boxes[0], big)  # the largest face, followed
    r = tracks.Tracker(min_face=80, multiple="reject")
    out = [r.update(0, [big, small])]  # a far smaller face does not count
    out += [r.update(i, [big, other]) for i in (1, 2)]
    assert out[1][0].end_reason == tracks.END_MULTIPLE and r.finish() == []
    s = tracks.Tracker(min_face=80)
    s.update(0, [[0, 0, 60, 60]])
    assert s.finish() == []  # below min_face: no track


def test_check_opencv_refuses_two_distributions(monkeypatch):
    monkeypatch.setattr(scenes, "installed_opencv", lambda: ["opencv-python", "opencv-contrib-python"])
    with pytest.raises(AnchorfaceError, match="overwrite each other"):
        scenes.check_opencv()
    monkeypatch.setattr(scenes, "installed_opencv", lambda: ["opencv-contrib-python"])
    scenes.check_opencv()


def test_laplacian_sharpness_drops_with_blur():
    import cv2

    from anchorface.curation.filters import laplacian_sharpness

    rng = np.random.default_rng(0)
    img = (rng.random((256, 256, 3)) * 255).astype(np.uint8)
    blurred = cv2.GaussianBlur(img, (0, 0), 3)
    assert laplacian_sharpness(img) > 10 * laplacian_sharpness(blurred) > 0


def test_split_clusters_and_held_out_identities():
    from anchorface.curation.split import choose_test_clusters, identity_clusters

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 128))
    centres *= 3 / np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.concatenate([c + rng.normal(scale=0.01, size=(5, 128)) for c in centres])
    labels = identity_clusters(x, 0.6)
    assert labels.tolist() == [k for k in range(4) for _ in range(5)]
    test = choose_test_clusters(labels, 0.2, seed=1)
    assert 2 <= len(test) < 4 and test == choose_test_clusters(labels, 0.2, seed=1)
    with pytest.raises(AnchorfaceError):
        choose_test_clusters(np.zeros(3, int), 0.2, 0)


def test_cluster_scores_rank_separated_above_mixed():
    from anchorface.curation.scene_study import cluster_scores

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 20)
    sep = rng.normal(size=(80, 8)) * 0.1 + labels[:, None]
    mixed = rng.normal(size=(80, 8))
    a, b = cluster_scores(sep, labels), cluster_scores(mixed, labels)
    assert a["davies_bouldin"] < b["davies_bouldin"] and a["calinski_harabasz"] > b["calinski_harabasz"]


def test_read_cross_pairs(tmp_path):
    from anchorface.evaluation.protocols import read_cross_pairs

    (tmp_path / "d").mkdir()
    v1, v2 = tmp_path / "d" / "a.mp4", tmp_path / "d" / "b.mp4"
    (tmp_path / "pairs.tsv").write_text("d/a.mp4\ts/x.jpg\n")
    pairs, notes = read_cross_pairs(tmp_path / "pairs.tsv", [v1, v2])
    assert pairs == {v1: tmp_path / "s" / "x.jpg"} and len(notes) == 1 and "b.mp4" in notes[0]
    (tmp_path / "bad.tsv").write_text("only-one-column\n")
    with pytest.raises(AnchorfaceError):
        read_cross_pairs(tmp_path / "bad.tsv", [v1])


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["curate", str(tmp_path / "missing"), str(tmp_path / "out"), "--quiet"]) == 1
    assert main(["stats", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("anchorface: error: ") for e in err)


# ------------------------------------------------------------------------------------- end to end, real faces
@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    if not corpus.FACES.is_dir():
        pytest.skip(f"face corpus not found at {corpus.FACES}")
    return corpus.build_raw(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def curated(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("curated") / "out"
    return out, run_curation(raw, out, OPTS, workers=1, progress=False)


@needs_faces
def test_shot_boundaries_at_known_cuts(raw):
    shots, n = scenes.shot_boundaries(raw / "cuts.mp4")
    assert n == corpus.NUM_FRAMES and len(shots) == len(corpus.CUTS) + 1
    for (start, _), cut in zip(shots[1:], corpus.CUTS):
        assert abs(start - cut) <= 1


@needs_faces
def test_curation_segments_reasons_thresholds(curated):
    out, m = curated
    videos = {v["video"]: v for v in m["videos"]}
    assert sorted(videos) == ["animal.mp4", "corrupt.mp4", "cuts.mp4", "lowres.mp4", "notes.mp4",
                              "sub/two_faces.mp4"]
    # segments start and end within one frame of the true cuts
    segs = videos["cuts.mp4"]["segments"]
    bounds = [0, *corpus.CUTS, corpus.NUM_FRAMES]
    assert len(segs) == len(bounds) - 1
    for s, a, b in zip(segs, bounds[:-1], bounds[1:]):
        assert abs(s["start_frame"] - a) <= 1 and abs(s["end_frame"] - b) <= 1
        assert len(s["boxes"]) == s["num_frames"] == s["end_frame"] - s["start_frame"]
    assert [s["accepted"] for s in segs] == [True, True, True, False]  # the last shot is 0.6 s
    assert "shorter than 1 s" in segs[-1]["reason"]
    # every rejection carries its reason
    for v in m["videos"]:
        assert (v["status"] == "curated") == (v["reason"] is None)
        for s in v["segments"]:
            assert s["accepted"] == (s["reason"] is None)
    assert videos["corrupt.mp4"]["reason"].startswith(("unreadable", "undecodable"))
    assert videos["notes.mp4"]["reason"].startswith("unreadable")
    assert "below 200p" in videos["lowres.mp4"]["reason"]
    assert videos["animal.mp4"]["status"] == "rejected" and not any(s["accepted"] for s in
                                                                   videos["animal.mp4"]["segments"])
    assert videos["sub/two_faces.mp4"]["status"] == "curated"  # --multiple largest
    # thresholds obeyed by every accepted segment
    acc = [s for v in m["videos"] for s in v["segments"] if s["accepted"]]
    for s in acc:
        w = np.asarray(s["boxes"])[:, 2] - np.asarray(s["boxes"])[:, 0]
        assert s["duration"] >= OPTS.min_seconds and w.min() >= OPTS.min_face - 1
        assert s["scores"]["identity_max_distance"] <= OPTS.max_identity_distance
        assert s["scores"]["identity_frames"] >= 2 and (out / s["clip"]).is_file()
    # the clips are the segments, frame for frame, and nothing else is in clips/
    from anchorface.io.video import probe_video

    assert sorted(p.name for p in (out / "clips").iterdir()) == sorted(Path(s["clip"]).name for s in acc)
    assert probe_video(out / segs[1]["clip"]).num_frames == segs[1]["num_frames"]
    assert json.loads((out / MANIFEST).read_text()) == m


@needs_faces
def test_several_faces_rejected_on_request(raw, tmp_path):
    from anchorface.curation.pipeline import curate_video

    rec = curate_video(raw / "sub" / "two_faces.mp4", "two", tmp_path,
                       CurateOptions(min_height=200, min_face=60, min_seconds=1.0, multiple="reject"))
    assert rec["status"] == "rejected" and "several faces" in rec["reason"]


@needs_faces
def test_ray_two_workers_gives_the_serial_manifest(raw, curated, tmp_path):
    pytest.importorskip("ray")
    out, _ = curated
    run_curation(raw, tmp_path / "out", OPTS, workers=2, progress=False)
    assert (tmp_path / "out" / MANIFEST).read_bytes() == (out / MANIFEST).read_bytes()


@needs_faces
def test_kill_9_then_rerun_gives_the_uninterrupted_manifest(raw, curated, tmp_path):
    out, _ = curated
    dest = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "anchorface", "curate", str(raw), str(dest), *CLI_FLAGS, "--workers", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = dest / RESULTS_DIR
    while proc.poll() is None and len(list(results.glob("*.json")) if results.is_dir() else []) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (dest / MANIFEST).exists(), "the run finished before it could be killed"
    assert main(["curate", str(raw), str(dest), *CLI_FLAGS, "--workers", "1"]) == 0
    assert (dest / MANIFEST).read_bytes() == (out / MANIFEST).read_bytes()
    assert sorted(p.name for p in (dest / "clips").iterdir()) == sorted(p.name for p in (out / "clips").iterdir())
    assert not [p for p in dest.rglob(".*") if p.name != ".curate.lock"]  # no temporary leftovers
    # a third run finds everything done: the same manifest, no video redone
    stamps = {p: p.stat().st_mtime_ns for p in results.glob("*.json")}
    assert main(["curate", str(raw), str(dest), *CLI_FLAGS, "--workers", "1"]) == 0
    assert {p: p.stat().st_mtime_ns for p in results.glob("*.json")} == stamps


@needs_faces
def test_stats_of_curated_folder(curated, tmp_path):
    out, m = curated
    assert main(["stats", str(out), "-o", str(tmp_path / "stats")]) == 0
    r = json.loads((tmp_path / "stats" / "stats.json").read_text())
    durs = [s["duration"] for v in m["videos"] for s in v["segments"] if s["accepted"]]
    assert r["count"] == len(durs) and r["metrics"]["duration"]["mean"] == pytest.approx(np.mean(durs))
    assert r["metrics"]["duration"]["std"] == pytest.approx(np.std(durs))
    assert r["metrics"]["resolution"]["mean"] == corpus.SIZE
    assert 0 < r["metrics"]["face_width_ratio"]["mean"] < 1
    assert sum(r["metrics"]["quality"]["histogram"]["counts"]) == len(durs)
    for name in ("duration.png", "resolution.png", "quality.png", "face_ratio.png", "stats.md"):
        assert (tmp_path / "stats" / name).stat().st_size > 0


def test_stats_of_prepared_dataset(tmp_path):
    import torch

    from anchorface.curation.stats import dataset_stats
    from anchorface.data.dataset import DatasetWriter

    lmk = np.zeros((10, 478, 3), np.float32)
    lmk[:, :, 0] = np.linspace(0.3, 0.7, 478)  # landmark extent: 0.4 of the crop wide, 0.5 high
    lmk[:, :, 1] = np.linspace(0.25, 0.75, 478)
    with DatasetWriter(tmp_path / "ds", {"resolution": 64, "codec": "pixel"}, (3, 16, 16)) as w:
        for k, n in enumerate((10, 5)):
            w.add_clip(f"c{k}", torch.zeros(n, 3, 16, 16), lmk[:n], np.zeros(8), np.zeros(8), fps=25.0)
    r = dataset_stats(tmp_path / "ds")
    assert r["count"] == 2 and (tmp_path / "ds-stats" / "stats.md").is_file()
    assert r["metrics"]["duration"]["mean"] == pytest.approx((10 + 5) / 25 / 2)
    assert r["metrics"]["face_width_ratio"]["mean"] == pytest.approx(0.4, abs=1e-6)
    assert r["metrics"]["face_height_ratio"]["mean"] == pytest.approx(0.5, abs=1e-6)
    assert r["metrics"]["quality"]["n"] == 0


@needs_faces
def test_split_and_scene_study(curated, tmp_path):
    from anchorface.curation.scene_study import scene_study
    from anchorface.curation.split import make_split

    out, _ = curated
    info = make_split(out, tmp_path / "split", test_fraction=0.3)
    train, test = set(info["train"]), set(info["test"])
    assert train and test and not train & test
    assert not {info["cluster_of"][s] for s in train} & {info["cluster_of"][s] for s in test}
    for line in (tmp_path / "split" / "cross_pairs.tsv").read_text().splitlines():
        d, p = line.split("\t")
        assert (tmp_path / "split" / d).is_file() and (tmp_path / "split" / p).is_file()
    assert len(list((tmp_path / "split" / "train").iterdir())) == len(train)

    ckpt = SRC / "anchorface" / "assets" / "demo"
    r = scene_study(out, tmp_path / "study", checkpoint=str(ckpt), frames=4, progress=False)
    assert r["groups"] == len(train | test) and len(r["rows"]) == 2
    for row in r["rows"].values():
        assert row["davies_bouldin"] > 0 and row["calinski_harabasz"] > 0
    assert (tmp_path / "study" / "tsne.png").stat().st_size > 0 and (tmp_path / "study" / "table.md").is_file()


@pytest.mark.slow
@needs_faces
def test_curate_prepare_train(curated, tmp_path):
    out, _ = curated
    assert main(["prepare", str(out / "clips"), str(tmp_path / "ds"), "--quiet"]) == 0
    assert main(["stats", str(tmp_path / "ds")]) == 0
    assert main(["train", "--data", str(tmp_path / "ds"), "--output", str(tmp_path / "run"), "--max-steps", "2",
                 "--batch-size", "1", "--sample-every", "0", "--holdout-videos", "0", "--quiet"]) == 0
