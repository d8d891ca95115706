"""The method registry and the `Reenactor` interface: names, lazy imports, one-line errors, the baselines as
methods (on real frames), `reenact --method` end to end on a real clip, and the one home of sampling options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anchorface.errors import AnchorfaceError
from anchorface.methods import get_method, method_names, register
from anchorface.methods.base import DrivingClip, Reenactor, Source

FACES = Path(__file__).resolve().parents[2] / "shared/data/faces"
SRC = Path(__file__).resolve().parents[1] / "src"
needs_faces = pytest.mark.skipif(not FACES.is_dir(), reason=f"real face data not found at {FACES}")


def test_registry_names_specs_and_recipe():
    assert method_names() == ("anchored", "diffusionact", "copy-driving", "still-source")
    assert method_names(baselines=False) == ("anchored", "diffusionact")
    spec = get_method("anchored")
    assert spec.needs_checkpoint and not spec.baseline and spec.variant_option == "merge"
    assert spec.variants == ("anchored", "multidiffusion", "independent", "anchored-sorted")
    assert spec.recipe == "anchorface.methods.anchored.training:AnchoredRecipe"
    cls = spec.load()
    assert issubclass(cls, Reenactor) and cls.name == "anchored"
    assert cls.needs == {"landmarks", "source_image", "text"}
    for name, needs in (("copy-driving", {"frames"}), ("still-source", {"source_image"})):
        s = get_method(name)
        assert s.baseline and not s.needs_checkpoint and s.load().needs == needs and s.load().name == name
    with pytest.raises(AnchorfaceError, match="needs a checkpoint directory"):
        spec.from_pretrained(None)


def test_unknown_method_is_a_one_line_error(capsys, tmp_path):
    with pytest.raises(AnchorfaceError, match="unknown method 'nope'; choose one of anchored, diffusionact, "
                                              "copy-driving, still-source") as e:
        get_method("nope")
    assert "\n" not in str(e.value)
    with pytest.raises(AnchorfaceError, match="already registered"):
        register("anchored", "x:Y", summary="again")
    from anchorface.apps.cli import main

    assert main(["reenact", "a.jpg", "b.mp4", "-o", str(tmp_path / "o.mp4"), "--method", "nope", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("anchorface: error: unknown method 'nope'") and len(err.strip().splitlines()) == 1


def test_importing_the_registry_imports_no_method():
    code = ("import sys, anchorface.methods as m; m.method_names(); m.get_method('anchored'); "
            "bad = [k for k in ('torch', 'anchorface.methods.anchored.pipeline', 'anchorface.methods.baselines', "
            "'cv2') if k in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(SRC), "PATH": ""}, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_recipe_that_does_not_exist_is_a_one_line_error():
    spec = register("test-fake", "anchorface.methods.baselines:CopyDriving", summary="x",
                    recipe="anchorface.no_such_module:Recipe", needs_checkpoint=False, replace=True)
    try:
        with pytest.raises(AnchorfaceError, match="cannot load the training recipe of method test-fake"):
            spec.load_recipe()
        assert spec.load().name == "copy-driving"
    finally:
        from anchorface.methods import registry

        registry._METHODS.pop("test-fake")


def _clip(n=5, size=96):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (size, size + 20, 3), dtype=np.uint8) for _ in range(n)]
    boxes = np.array([[10 + i, 5, 10 + i + 80, 85] for i in range(n)], np.float64)
    return frames, DrivingClip.from_frames(frames, boxes)


def test_baselines_render_the_driving_crops_and_the_still_source():
    from anchorface.faces.detect import Box, crop

    frames, clip = _clip()
    copy = get_method("copy-driving").from_pretrained(resolution=32)
    out = copy.render(Source(), clip).array()
    assert out.shape == (5, 32, 32, 3)
    assert all(np.array_equal(o, crop(f, Box.from_array(b), 32)) for o, f, b in zip(out, frames, clip.boxes))
    r = copy.render(Source(), clip)
    assert np.array_equal(np.stack(list(r.frames())), np.stack(list(r.frames())))  # restartable stream
    image = frames[0]
    still = get_method("still-source").from_pretrained(resolution=16)
    src = Source(image=image, box=Box(0, 0, 50, 50))
    out = still.render(src, clip).array()
    assert out.shape == (5, 16, 16, 3) and all(np.array_equal(o, crop(image, Box(0, 0, 50, 50), 16)) for o in out)
    with pytest.raises(AnchorfaceError, match="takes no checkpoint"):
        get_method("still-source").from_pretrained("some/dir")
    with pytest.raises(AnchorfaceError, match="takes no option merge"):
        still.check(merge="anchored")
    with pytest.raises(AnchorfaceError, match="takes no text"):
        still.check(text="a statue")


@needs_faces
@pytest.mark.parametrize("method", ["copy-driving", "still-source"])
def test_reenact_with_a_baseline_end_to_end(tmp_path, capsys, method):
    """`reenact --method copy-driving|still-source` on a real clip, without any checkpoint: the shared flow writes
    every frame at the clip's fps with its audio; copying the driving crops reproduces them (up to H.264)."""
    from anchorface.apps.cli import main
    from anchorface.faces import detect as faces
    from anchorface.io.video import VideoWriter, iter_frames, probe_video

    src = FACES / "driving/d20.mp4"
    drv = tmp_path / "d20_short.mp4"
    with VideoWriter(drv, probe_video(src).fps, audio_from=src) as w:
        for frame in iter_frames(src, max_frames=12):
            w.write(frame)
    out = tmp_path / "out.mp4"
    code = main(["reenact", str(FACES / "source/s1.jpg"), str(drv), "-o", str(out), "--method", method])
    err = capsys.readouterr().err
    assert code == 0, err
    info = probe_video(out)
    assert (info.num_frames, info.fps, info.has_audio, info.width) == (12, probe_video(drv).fps, True, 256)
    got = np.stack(list(iter_frames(out))).astype(np.float64)
    if method == "copy-driving":
        boxes = faces.track_crop_boxes(iter_frames(drv), progress=False)
        want = np.stack([faces.crop(f, faces.Box.from_array(b), 256) for f, b in zip(iter_frames(drv), boxes)])
        assert np.abs(got - want).mean() < 4.0  # the driving crops, through one H.264 encode
        assert "the driving crops" in err
    else:
        assert np.abs(got - got[0]).max() < 20  # one still picture
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d20_short.mp4", "out.mp4"]
    code = main(["reenact", str(FACES / "source/s1.jpg"), str(drv), "-o", str(tmp_path / "o2.mp4"), "--method",
                 method, "--steps", "3", "--quiet"])
    assert code == 1 and "takes no option steps" in capsys.readouterr().err
    assert not (tmp_path / "o2.mp4").exists()
    code = main(["reenact", str(FACES / "source/s1.jpg"), str(drv), "-o", str(tmp_path / "o2.mp4"),
                 "--inversion-steps", "3", "--quiet"])  # (DiffusionAct's option: the anchored demo refuses it)
    assert code == 1 and "method anchored takes no option inversion_steps" in capsys.readouterr().err


@pytest.mark.parametrize("scale", ["nan", "inf", "1e30"])
def test_reenact_rejects_a_non_finite_or_huge_guidance_scale(tmp_path, capsys, scale):
    """`--guidance-scale nan` (or inf, 1e30) used to write black frames with exit 0; it is now a one-line error,
    given before any file is read or any weight loaded."""
    from anchorface.apps.cli import main

    out = tmp_path / "out.mp4"
    try:
        code = main(["reenact", str(tmp_path / "me.jpg"), str(tmp_path / "drv.mp4"), "-o", str(out), "--checkpoint",
                     str(tmp_path / "no-checkpoint"), "--guidance-scale", scale, "--quiet"])
    except SystemExit as e:  # a non-finite number is refused by the option's type (exit 2), a huge one by the check
        code = e.code
    err = capsys.readouterr().err
    assert code in (1, 2) and err.startswith("anchorface: error: ") and "guidance" in err
    assert ("finite" in err) if scale in ("nan", "inf") else ("guidance scale must be" in err)
    assert len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
