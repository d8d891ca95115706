"""`anchorface evaluate`: protocol selection (§4.3), the conditions ablation hook, aggregation, and an end-to-end
smoke run on a randomly initialised tiny checkpoint with a real driving clip."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from anchorface.evaluation import protocols as evaluate
from anchorface.errors import AnchorfaceError
from anchorface.methods.anchored.plans import KINDS
from anchorface.io.video import list_videos


# ---------------------------------------------------------------------------------------------------------------
# Selection


def test_self_window_is_consecutive_and_source_is_furthest():
    for seed in range(50):
        n, L = 30, 8
        idx, src = evaluate.self_window(n, L, random.Random(seed))
        assert idx == list(range(idx[0], idx[0] + L)) and 0 <= idx[0] and idx[-1] < n
        assert src not in idx

        def dist(f, idx=idx):
            return min(abs(f - i) for i in idx)

        assert dist(src) == max(dist(f) for f in range(n))  # the frame furthest in time from the window
    assert evaluate.self_window(8, 8, random.Random(0)) is None  # no frame left for the source
    idx, src = evaluate.self_window(9, 8, random.Random(0))
    assert src in (0, 8) and src not in idx


def test_pair_sources_skips_faceless_and_same_identity():
    videos = [Path("d1.mp4"), Path("d2.mp4"), Path("d3.mp4")]
    photos = [Path("drv_d1.jpg"), Path("cat.jpg"), Path("s1.jpg"), Path("d2.jpg")]
    checked = []

    def has_face(p):
        checked.append(p)
        return p.name != "cat.jpg"

    pairs, notes = evaluate.pair_sources(videos, photos, has_face, seed=0)
    assert set(pairs) == set(videos)
    for v, p in pairs.items():
        assert p.name != "cat.jpg" and not evaluate.same_identity(p, v)
    assert len(checked) == len(set(checked))  # each photo is checked once
    assert any("cat.jpg" in n for n in notes)
    pairs, notes = evaluate.pair_sources([Path("d1.mp4")], [Path("drv_d1.jpg")], lambda p: True, seed=0)
    assert pairs == {} and "no usable photo" in notes[0]


def test_pair_sources_skips_unreadable_photos():
    from anchorface.errors import ImageError

    def has_face(p):
        if p.name == "broken.jpg":
            raise ImageError(f"cannot read image {p}: not an image file (or a format Pillow cannot read)")
        return True

    pairs, notes = evaluate.pair_sources([Path("d1.mp4"), Path("d2.mp4")], [Path("broken.jpg"), Path("s1.jpg")],
                                         has_face, seed=0)
    assert pairs == {Path("d1.mp4"): Path("s1.jpg"), Path("d2.mp4"): Path("s1.jpg")}
    assert [n for n in notes if "broken.jpg" in n and "not an image file" in n] and len(notes) == 1


class RecordingSDiT(nn.Module):
    def __init__(self):
        super().__init__()
        self.mapping = nn.Identity()
        self.calls = []

    def forward(self, x, t, g=None, lmk=None, drop=None, drop_global=None, drop_landmarks=None, anchor=None):
        self.calls.append((drop, drop_global, drop_landmarks))
        return x


def test_ablation_settings_clamp_default_steps_and_keep_zero_scale(tmp_path):
    from anchorface.frozen.codecs import PixelCodec
    from anchorface.config import load_config
    from anchorface.methods.anchored.pipeline import AnchorFacePipeline

    cfg = load_config("tiny")
    cfg.sample.steps = 600
    pipe = AnchorFacePipeline(cfg, RecordingSDiT(), PixelCodec(4))
    o = evaluate.Options(checkpoints=[tmp_path], driving=[], output=tmp_path / "o", ablation_scales=(1.0, 0.0),
                         ablation_conditions=("none",))
    rows = evaluate.ablation_settings(o, pipe)
    assert rows == [(600, 1.0, "both"), (600, 0.0, "both"), (1000, 1.0, "both"), (600, 1.0, "none")]  # 2 x 600 > 1000
    assert evaluate._first_set(None, 0.0, 3.0) == 0.0  # CFG 0 given on the command line is not "unset"
    with pytest.raises(AnchorfaceError, match="got 1200"):
        evaluate.ablation_settings(evaluate.Options(**{**vars(o), "ablation_steps": (1200,)}), pipe)
    sdit = RecordingSDiT()
    sdit.mapping = None  # an unconditional checkpoint: CFG and the conditions subsets cannot run
    unconditional = AnchorFacePipeline(cfg, sdit, PixelCodec(4))
    with pytest.raises(AnchorfaceError, match="conditional model"):
        evaluate.ablation_settings(evaluate.Options(**{**vars(o), "ablation_scales": (1.0,)}), unconditional)


def test_aggregate_means_and_frechet_over_pooled_features():
    rng = np.random.default_rng(0)
    feats = lambda: dict(fid_fake=rng.normal(size=(4, 3)), fid_real=rng.normal(size=(4, 3)))  # noqa: E731
    scored = [{"metrics": {"lmse": 2.0, "csim": 0.5, "face_found_rate": 1.0}, "features": feats()},
              {"metrics": {"lmse": float("nan"), "csim": 0.7, "face_found_rate": 0.0}, "features": feats()}]
    notes = []
    out = evaluate.aggregate(scored, notes, "x")
    assert out["lmse"] == 2.0  # the video without any face has no LMSE and is left out
    assert out["csim"] == pytest.approx(0.6) and out["face_found_rate"] == 0.5
    real = np.concatenate([s["features"]["fid_real"] for s in scored])
    fake = np.concatenate([s["features"]["fid_fake"] for s in scored])
    from anchorface.evaluation.metrics import fid_from_features

    assert out["fid"] == pytest.approx(fid_from_features(real, fake)) and out["fid_samples"] == 8
    one = [{"metrics": {}, "features": {"fvd_fake": np.zeros((1, 3)), "fvd_real": np.zeros((1, 3))}}]
    evaluate.aggregate(one, notes, "y")
    assert "fvd" not in evaluate.aggregate(one, [], "y") and "FVD needs at least 2 videos" in notes[-1]


def test_checkpoint_names_are_unique_and_never_the_baseline_column():
    names = evaluate._unique_names([Path("/a/ckpt"), Path("/b/ckpt"), Path("/c/baseline"), Path("/d/run")])
    assert len(set(names)) == 4 and evaluate.BASELINE_COLUMN not in names and names[3] == "run"


def test_jsonable_is_strict_json():
    obj = {"a": float("nan"), "b": float("inf"), "c": np.float32(1.5), "d": [np.int64(3)], "e": Path("x")}
    text = json.dumps(evaluate.jsonable(obj), allow_nan=False)
    assert json.loads(text) == {"a": None, "b": "inf", "c": 1.5, "d": [3], "e": "x"}


def test_bad_options_raise_one_line_errors(tmp_path):
    base = dict(checkpoints=[tmp_path], driving=[str(tmp_path)], output=tmp_path / "out")
    with pytest.raises(AnchorfaceError, match="--sources"):
        evaluate._check_options(evaluate.Options(**base, protocols=("cross",)))
    with pytest.raises(AnchorfaceError, match="unknown merge"):
        evaluate._check_options(evaluate.Options(**base, merges=("averaged",), protocols=("self",)))
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "thesis.tex").write_text("x")
    with pytest.raises(AnchorfaceError, match="not an earlier evaluation report"):
        evaluate._check_options(evaluate.Options(checkpoints=[tmp_path], driving=[], output=keep,
                                                 protocols=("self",)))
    # a folder with a report.json that is not ours, or with the user's own files beside an earlier report, is kept
    # (it used to be replaced whole: data lost)
    (keep / "report.json").write_text('{"coverage": 93}')
    report = tmp_path / "earlier"
    report.mkdir()
    (report / "report.json").write_text('{"settings": {}, "results": {}, "images": ["consistency.png"]}')
    (report / "report.md").write_text("# old")
    (report / "consistency.png").write_bytes(b"png")
    evaluate._check_options(evaluate.Options(checkpoints=[tmp_path], driving=[], output=report, protocols=("self",)))
    (report / "notes.txt").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    for folder, words in ((keep, "not an earlier evaluation report"), (report, "not an earlier evaluation report"),
                          (link, "is a symbolic link")):
        with pytest.raises(AnchorfaceError, match=words):
            evaluate._check_options(evaluate.Options(checkpoints=[tmp_path], driving=[], output=folder,
                                                     protocols=("self",)))
    with pytest.raises(AnchorfaceError, match="no driving videos"):
        list_videos([str(keep)], "driving video")
    with pytest.raises(AnchorfaceError, match="--ablation-steps"):
        evaluate._check_options(evaluate.Options(**base, protocols=("self",), ablation_steps=(0, 50)))
    for scale in (float("nan"), float("inf"), 1e30):  # used to give black frames with exit 0
        with pytest.raises(AnchorfaceError, match="guidance scale must be"):
            evaluate._check_options(evaluate.Options(**base, protocols=("self",), guidance_scale=scale))
        with pytest.raises(AnchorfaceError, match="guidance scale must be"):
            evaluate._check_options(evaluate.Options(**base, protocols=("self",), ablation_scales=(1.0, scale)))
    with pytest.raises(AnchorfaceError, match="unknown method 'nope'; choose one of anchored, diffusionact, copy-driving"):
        evaluate._check_options(evaluate.Options(**base, protocols=("self",), methods=("nope",)))
    with pytest.raises(AnchorfaceError, match="method anchored needs --checkpoint DIR"):
        evaluate._check_options(evaluate.Options(**{**base, "checkpoints": []}, protocols=("self",)))


# ---------------------------------------------------------------------------------------------------------------
# End to end on a tiny random checkpoint


def test_table1_columns_come_from_the_registry(tmp_path, tiny_checkpoint):
    """Each checkpointed method x checkpoint x variant (the --merge strategies, in their order), then one column
    per baseline of the registry at the model's resolution; --no-baselines and --methods select from them."""
    from anchorface.methods.registry import method_names

    ckpt = tiny_checkpoint
    o = evaluate.Options(checkpoints=[ckpt], driving=[], output=tmp_path / "o", merges=("independent", "anchored"),
                         steps=1)
    specs = evaluate.selected_methods(o)
    assert [s.name for s in specs] == [n for n in method_names() if n != "diffusionact"]  # (the checkpoint's)
    models, columns, baselines = evaluate.load_columns(o, specs)
    assert list(models) == ["ckpt"]
    assert [(c.group, c.label, c.options) for c in columns] == [
        ("ckpt", "independent", {"steps": 1, "merge": "independent"}), ("ckpt", "anchored", {"steps": 1, "merge": "anchored"})]
    assert [(c.group, c.label) for c in baselines] == [("baseline", "copy driving"), ("baseline", "still source")]
    assert all(c.method.resolution == 32 for c in baselines)  # the model's resolution
    assert [s.name for s in evaluate.selected_methods(evaluate.Options(**{**vars(o), "baselines": False}))] == \
        ["anchored"]
    only = evaluate.Options(**{**vars(o), "methods": ("still-source",), "checkpoints": []})
    _, columns, baselines = evaluate.load_columns(only, evaluate.selected_methods(only))
    assert columns == [] and [c.label for c in baselines] == ["still source"] and baselines[0].method.resolution == 256
    with pytest.raises(AnchorfaceError, match="steps must be in"):  # every column is checked before any work
        evaluate.load_columns(evaluate.Options(**{**vars(o), "steps": 5000}), specs)


def test_evaluate_baselines_only_without_checkpoint(tmp_path, face_corpus):
    """`evaluate --methods copy-driving still-source`: no checkpoint needed; Table 1 has the two baseline columns."""
    from anchorface.apps.cli import main

    out = tmp_path / "report"
    rc = main(["evaluate", "--methods", "copy-driving", "still-source", "--driving", str(face_corpus / "driving/d18.mp4"),
               "--protocol", "self", "--frames", "4", "--output", str(out), "--quiet"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["methods"] == ["copy-driving", "still-source"] and report["checkpoints"] == {}
    assert report["columns"] == [["baseline", "copy driving"], ["baseline", "still source"]]
    copy, still = (report["results"]["self"]["baseline"][k] for k in ("copy driving", "still source"))
    assert copy["psnr"] == "inf" and copy["resolution"] == 256 and still["appearance_drift"] == 0
    assert "| Metric | baseline / copy driving | baseline / still source |" in (out / "report.md").read_text()


def test_evaluate_smoke_end_to_end(tmp_path, face_corpus, tiny_checkpoint, feature_nets):
    from anchorface.apps.cli import main

    corpus, ckpt = face_corpus, tiny_checkpoint
    inception, i3d = feature_nets  # TorchScript nets with the real files' calling conventions
    sources = tmp_path / "sources"  # one photo with a face, one without (skipped with a note)
    sources.mkdir()
    for name in ("s1.jpg", "s22.jpg"):
        (sources / name).symlink_to(corpus / "source" / name)
    out = tmp_path / "report"
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--driving", str(corpus / "driving" / "d18.mp4"),
               str(corpus / "driving" / "d19.mp4"), "--sources", str(sources), "--output", str(out),
               "--steps", "2", "--frames", "4", "--lengths", "4", "8", "--ablation-steps", "1",
               "--ablation-scales", "1", "2", "--ablation-conditions", "none", "both",
               "--inception", str(inception), "--i3d", str(i3d), "--quiet"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    for png in ("consistency.png", "grid-self.png", "grid-cross.png", "guidance.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Table 1" in md and "Fig. 5" in md and "supp. Table 1" in md and "Fig. 7" in md
    guidance = report["guidance"]
    assert guidance["cases"] == 2 and len(guidance["rows"]) == 20
    assert set(guidance["mse"]) == {"both", "landmarks", "global", "none"}
    assert report["csim_embedding"].startswith("face recognition (dlib")  # the default, not the learned encoder
    assert any(n.startswith("identity embedding: dlib's face detector found the face in ") for n in report["notes"])
    self_res = report["results"]["self"]["ckpt"]
    assert set(self_res) == set(KINDS)
    for r in self_res.values():
        assert r["videos"] == 2 and -1 <= r["csim"] <= 1 and 0 <= r["self_csim"] <= 2
        assert r["psnr"] is not None and 0 <= r["face_found_rate"] <= 1
        assert r["fid"] is not None and r["fid_samples"] == 8 and r["fvd"] is not None and r["fvd_samples"] == 2
        assert [v["frames"] for v in r["per_video"]] == [4, 4]
    cross = report["results"]["cross"]["ckpt"]["anchored"]["per_video"]
    assert all(v["video"].endswith("<-s1") for v in cross)
    assert "psnr" not in report["results"]["cross"]["ckpt"]["anchored"]  # no ground truth across identities
    assert any("s22.jpg" in n and "no face" in n for n in report["notes"])  # the animal photo was skipped
    cons = {(r["length"], r["merge"]): r for r in report["consistency"]}
    assert set(cons) == {(L, m) for L in (4, 8) for m in KINDS}
    for r in cons.values():  # the drifts of the Fig. 5 study, each with its bootstrap interval over the 2 clips
        for key in ("self_csim", "id_drift_first", "id_drift_anchor", "background_drift"):
            lo, hi = r["ci"][key]
            assert lo <= r[key] <= hi
    assert (out / "strip-both.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # Fig. 4 strip
    # 8 frames with T=4: the strategies plan different sequences, so their videos differ
    assert cons[(8, "anchored")]["appearance_drift"] != cons[(8, "independent")]["appearance_drift"]
    # the baseline columns: copying the driving crops is the ground truth itself (PSNR inf, written "inf" in strict
    # JSON); a still source has CSIM 1
    copy, still = (report["results"]["self"]["baseline"][k] for k in ("copy driving", "still source"))
    assert copy["psnr"] == "inf" and copy["ssim"] == 1.0 and copy["self_csim"] == pytest.approx(0, abs=1e-9)
    assert still["csim"] == pytest.approx(1.0, abs=1e-6) and still["appearance_drift"] == 0
    assert report["results"]["cross"]["baseline"]["still source"]["csim"] == pytest.approx(1.0, abs=1e-6)
    assert "| baseline / copy driving | baseline / still source |" in md
    ablation = {(r["steps"], r["guidance_scale"], r["conditions"]): r for r in report["ablation"]}
    assert set(ablation) == {(2, 1.0, "both"), (2, 2.0, "both"), (1, 1.0, "both"), (2, 1.0, "none")}
    assert ablation[(2, 1.0, "none")]["csim"] != ablation[(2, 1.0, "both")]["csim"]


def test_scorer_on_real_clip_perfect_and_shifted_generation(face_corpus):
    """The scoring chain on real frames: a generator that returns the driving crops scores LMSE 0, Self-CSIM 0,
    PSNR inf, SSIM 1; one whose crops are shifted by 4 px (of a 256-px crop) scores LMSE ~ 4^2 = 16."""
    from anchorface.faces import detect as faces
    from anchorface.methods.anchored.global_encoder import LearnedGlobalEncoder

    video = face_corpus / "driving" / "d18.mp4"
    got = evaluate.read_frames(video, list(range(40, 46)) + [0])
    case = evaluate.make_case("d18", video, [got[i] for i in range(40, 46)], got[0], "frame 0")
    torch.manual_seed(0)
    scorer = evaluate.Scorer(evaluate.EncoderEmbedding(LearnedGlobalEncoder(16, 64).eval(), "learned"))
    real = case.driving_crops(256)
    m = scorer.score(case, real, case.drv_lmk, with_reference=True)["metrics"]
    assert m["face_found_rate"] == 1.0 and m["lmse"] == pytest.approx(0.0, abs=1e-6)
    assert m["self_csim"] == pytest.approx(0.0, abs=1e-9) and m["psnr"] == float("inf") and m["ssim"] == 1.0
    shift = 4.0
    moved = np.stack([faces.crop(f, b + np.array([1, 0, 1, 0]) * shift * (b[2] - b[0]) / 256, 256)
                      for f, b in zip(case.frames, case.boxes)])  # content moves 4 px left in the crop
    m = scorer.score(case, moved, case.drv_lmk, with_reference=True)["metrics"]
    assert 0.8 * shift ** 2 < m["lmse"] < 1.25 * shift ** 2, m["lmse"]  # measured 15.8
    assert m["psnr"] < 40


def test_long_window_plays_the_clip_forward_and_back():
    idx, src = evaluate.long_window(5, 12)
    assert idx == [0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3] and src == 4
    assert all(abs(a - b) == 1 for a, b in zip(idx, idx[1:])), "continuous motion"


def test_consistency_study_settings_seeds_and_long_windows(tmp_path, face_corpus, tiny_checkpoint):
    """Both settings of the study (full conditions; G dropped), 2 seeds, and a window longer than the clip
    (ping-pong): rows per (setting, length, strategy) with intervals over clips x seeds, a Fig. 4 strip per
    setting, and the dropped G changes the videos."""
    from anchorface.apps.cli import main
    from anchorface.io.video import probe_video

    clip = face_corpus / "driving" / "d18.mp4"
    n = probe_video(clip).num_frames
    ckpt = tiny_checkpoint
    out = tmp_path / "report"
    L = n + 8  # longer than the clip
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--driving", str(clip), "--output", str(out),
               "--protocol", "consistency", "--lengths", "4", str(L), "4", "--merge", "anchored", "multidiffusion",
               "anchored", "--consistency-conditions", "both", "landmarks", "both", "--seeds", "2", "--steps", "1",
               "--no-baselines", "--quiet"])  # (values given twice are measured once, not counted twice)
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    rows = {(r["conditions"], r["length"], r["merge"]): r for r in report["consistency"]}
    assert set(rows) == {(c, length, m) for c in ("both", "landmarks") for length in (4, L)
                         for m in ("anchored", "multidiffusion")}
    assert all(r["videos"] == 2 and r["seeds"] == 2 for r in rows.values())  # 1 clip x 2 seeds
    assert any("ping-pong" in note for note in report["notes"])
    for cond in ("both", "landmarks"):
        assert (out / f"strip-{cond}.png").is_file()
    assert rows[("both", L, "anchored")]["background_drift"] != rows[("landmarks", L, "anchored")]["background_drift"]
    md = (out / "report.md").read_text()
    assert "landmarks only (G dropped)" in md and "full conditions" in md
    assert "- sampler: checkpoint default, steps: 1, CFG scale" in md  # (the settings the videos were made with)
    for cond in ("both", "landmarks"):  # multidiffusion's paired difference from anchored, per setting and length
        a, m = rows[(cond, L, "anchored")], rows[(cond, L, "multidiffusion")]
        d = m["vs_reference"]["background_drift"]
        assert m["vs_reference"]["merge"] == "anchored" and "vs_reference" not in a
        assert d[0] == pytest.approx(m["background_drift"] - a["background_drift"]) and d[1] is None  # 1 clip
    assert md.count("Paired differences, strategy - anchored") == 2


@pytest.mark.parametrize("protocols, given, words", [
    (["guidance"], ["--steps", "3"], "--steps is used only by the ablation, consistency, cross and self protocols"),
    (["guidance"], ["--merge", "independent"], "--merge is used only by"),
    (["self"], ["--lengths", "8"], "--lengths is used only by the consistency protocol, and --protocol self does not"),
    (["consistency"], ["--sources", "."], "--sources is used only by the ablation and cross protocols"),
    (["self", "cross"], ["--ablation-steps", "3"], "--ablation-steps is used only by the ablation protocol"),
    (["ablation"], ["--guidance-scale", "3"], "--guidance-scale is used only by the consistency, cross and self"),
])
def test_an_option_no_selected_protocol_uses_is_refused(protocols, given, words, tmp_path, capsys):
    """Silently ignored, it would also be named in the report's settings as if applied."""
    from anchorface.apps.cli import main

    rc = main(["evaluate", "--checkpoint", str(tmp_path), "--driving", str(tmp_path), "-o", str(tmp_path / "r"),
               "--protocol", *protocols, *given])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and words in err and len(err.splitlines()) == 1 and not (tmp_path / "r").exists()


def test_a_clip_too_short_for_a_frames_window_still_plays_ping_pong(tmp_path, face_corpus, tiny_checkpoint):
    """The consistency study falls back to ping-pong on a clip shorter than a length + 1, also when that length is
    --frames (the self-reenactment window length, which it shared: that length used to be skipped)."""
    from anchorface.apps.cli import main
    from helpers import short_clip

    clip = short_clip(face_corpus / "driving" / "d18.mp4", tmp_path / "d18-10.mp4", 10)
    out = tmp_path / "report"
    rc = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--driving", str(clip), "--output", str(out),
               "--protocol", "consistency", "--lengths", "10", "--frames", "10", "--merge", "anchored", "--steps", "1",
               "--no-baselines", "--quiet"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert [(r["length"], r["videos"]) for r in report["consistency"]] == [(10, 1)]
    assert any("ping-pong" in note for note in report["notes"])


def test_nothing_measured_is_an_error_not_an_empty_report(tmp_path, face_corpus, tiny_checkpoint, capsys):
    """Every case skipped (here: windows shorter than the model's T for the guidance study): exit 1 with the
    reason in one line, and no report folder."""
    from anchorface.apps.cli import main

    out = tmp_path / "report"
    rc = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--driving", str(face_corpus / "driving" / "d18.mp4"),
               "--output", str(out), "--protocol", "guidance", "--frames", "2", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "nothing was measured" in err and "fewer than T=" in err and len(err.splitlines()) == 1
    assert "FID" not in err  # (the reason, not the notes on metrics that were not asked for)
    assert not out.exists()


def test_consistency_with_baselines_only_says_why_there_is_nothing(tmp_path, face_corpus, capsys):
    from anchorface.apps.cli import main

    rc = main(["evaluate", "--driving", str(face_corpus / "driving" / "d18.mp4"), "--methods", "copy-driving",
               "--protocol", "consistency", "--lengths", "8", "-o", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "consistency: needs a model method" in err and "FID" not in err


def test_identity_embedding_sees_people_apart_on_real_crops(face_corpus):
    """CSIM's default embedding on real face crops: the same face at 64 px (a tiny model's size) and at 256 px is
    one person (< 0.6), two people are not (> 0.6); frames the detector misses are embedded whole and counted."""
    pytest.importorskip("dlib")
    from anchorface.faces import detect as faces
    from anchorface.io.images import load_image

    emb = evaluate.IdentityEmbedding()
    crops = []
    for name in ("s1.jpg", "s2.jpg"):
        img = load_image(face_corpus / "source" / name)
        crops.append(faces.crop(img, faces.source_crop_box(img, name), 256))
    from anchorface.io.images import resize

    small = resize(crops[0], 64)
    v = emb([crops[0], small, crops[1]])
    assert np.linalg.norm(v[0] - v[1]) < 0.6 < np.linalg.norm(v[0] - v[2])
    assert emb.measured == 3 and 0 <= emb.detected <= 3
    m = evaluate.Scorer(emb)
    assert m.distance == "euclidean"


def test_embedding_options(tmp_path, tiny_checkpoint):
    o = evaluate.Options(checkpoints=[tiny_checkpoint], driving=[], output=tmp_path / "o", embedding="clip")
    with pytest.raises(AnchorfaceError, match="--embedding clip needs --clip"):
        evaluate._check_options(o)
    with pytest.raises(AnchorfaceError, match="unknown embedding"):
        evaluate._check_options(evaluate.Options(checkpoints=[tiny_checkpoint], driving=[], output=tmp_path / "o",
                                                 embedding="arcface"))


def test_embedded_frames_keep_first_anchor_and_last():
    assert evaluate.embedded_frames(10) == list(range(10))
    idx = evaluate.embedded_frames(513)
    assert len(idx) <= evaluate.EMBED_FRAMES and {0, 256, 512} <= set(idx) and idx == sorted(set(idx))


def test_sampler_option_reaches_every_model_column(tmp_path, tiny_checkpoint):
    o = evaluate.Options(checkpoints=[tiny_checkpoint], driving=[], output=tmp_path / "o", sampler="ddim", steps=2,
                         baselines=False)
    _, columns, _ = evaluate.load_columns(o, evaluate.selected_methods(o))
    assert columns and all(c.options["sampler"] == "ddim" and c.options["steps"] == 2 for c in columns)
    with pytest.raises(AnchorfaceError, match="unknown sampler"):
        evaluate._check_options(evaluate.Options(checkpoints=[tiny_checkpoint], driving=[], output=tmp_path / "o",
                                                 sampler="euler"))
