"""`anchorface personalize` (issue 14): pseudo-clips of any stills, fine-tuning from the demo checkpoint within a
bound, an atomic checkpoint that reenacts, one-line errors, and the hint `reenact` gives with the demo model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from anchorface.apps.cli import main
from anchorface.apps.demo import DEMO_CHECKPOINT
from anchorface.data import synthetic
from anchorface.errors import AnchorfaceError, NoFaceError
from anchorface.faces import signature
from anchorface.io.images import load_image, save_image
from anchorface.io.video import VideoWriter, iter_frames, probe_video
from tests.helpers import leftovers, one_line

pytestmark = pytest.mark.skipif(not (DEMO_CHECKPOINT / "anchorface.json").exists(), reason="no demo checkpoint")

FAST = ["--steps", "2", "--clips", "2", "--frames", "8", "--quiet"]


@pytest.fixture(scope="module")
def photo(face_corpus):
    """A real portrait photograph the demo model never saw."""
    return face_corpus / "source" / "s1.jpg"


@pytest.fixture(scope="module")
def driving(face_corpus, tmp_path_factory):
    """The first 8 frames of a real driving clip (another person)."""
    path = tmp_path_factory.mktemp("driving") / "d0-8.mp4"
    with VideoWriter(path, 25) as w:
        for frame in iter_frames(face_corpus / "driving" / "d0.mp4", max_frames=8):
            w.write(frame)
    return path


@pytest.fixture(scope="module")
def personalized(photo, tmp_path_factory):
    """The photo personalised for 2 steps (the CLI), and the folder it was written into."""
    root = tmp_path_factory.mktemp("personal")
    assert main(["personalize", str(photo), "-o", str(root / "me"), *FAST]) == 0
    return root / "me"


# ------------------------------------------------------------------------------------------------- pseudo-clips

def test_pseudo_clips_from_a_folder_of_stills(face_corpus, tmp_path):
    """Every still with a face gives clips in turn; other files are ignored, a faceless still is skipped with a
    warning; each clip moves (its frames differ) and starts near its still."""
    stills = tmp_path / "stills"
    stills.mkdir()
    shutil.copy(face_corpus / "source" / "s1.jpg", stills / "a.jpg")
    save_image(stills / "b.png", synthetic.astronaut())
    save_image(stills / "flat.png", np.full((200, 200, 3), 128, np.uint8))  # no face
    (stills / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="no face found in the photo .*flat.png; skipped"):
        portraits = synthetic.load_portraits(stills)
    assert [p.name for p in portraits] == ["a", "b"]
    paths = synthetic.make_pseudo_clips(tmp_path / "clips", 3, 6, seed=2, size=64, progress=False,
                                        portraits=portraits)
    assert [p.name for p in paths] == ["a-002-0000.mp4", "b-002-0001.mp4", "a-002-0002.mp4"]
    for path, portrait in zip(paths, [portraits[0], portraits[1], portraits[0]]):
        assert probe_video(path).num_frames == 6
        frames = np.stack(list(iter_frames(path))).astype(float)
        assert np.abs(frames[1:] - frames[:1]).mean() > 1.0  # it moves
        still = synthetic.cv2.resize(portrait.image, (64, 64), interpolation=synthetic.cv2.INTER_AREA)
        others = [p for p in portraits if p is not portrait]
        other = synthetic.cv2.resize(others[0].image, (64, 64), interpolation=synthetic.cv2.INTER_AREA)
        assert np.abs(frames[0] - still).mean() < np.abs(frames[0] - other).mean()  # of its own still


def test_the_demo_recipe_is_unchanged():
    """The astronaut is still the default portrait, with the demo's clip names."""
    (p,) = [synthetic.astronaut_portrait()]
    assert p.name == "astronaut" and p.image.shape[0] == p.image.shape[1]


# ------------------------------------------------------------------------------------------------- signatures

def test_signature_tells_a_photo_and_its_copies_from_other_photos(photo, face_corpus):
    img = load_image(photo)
    sig = signature.image_signature(img)
    copy = synthetic.cv2.resize(img[40:-10, 25:], None, fx=0.5, fy=0.5, interpolation=synthetic.cv2.INTER_AREA)
    assert signature.best_match(signature.image_signature(copy), [signature.encode(sig)]) >= signature.SAME_PHOTO
    for other in ("s12.jpg", "drv_d9.jpg"):
        s = signature.image_signature(load_image(face_corpus / "source" / other))
        assert signature.best_match(s, [signature.encode(sig)]) < signature.SAME_PHOTO
    assert np.allclose(signature.decode(signature.encode(sig)), sig, atol=1e-3)
    with pytest.raises(ValueError):
        signature.decode("AAAA")


# ------------------------------------------------------------------------------------------------- personalize

def test_personalize_writes_a_fine_tuned_checkpoint_that_reenacts(personalized, photo, driving, tmp_path, capsys):
    from anchorface.methods.anchored.checkpoint import load_checkpoint

    assert leftovers(personalized.parent) == ["me"]  # no work folder, no temporary left
    meta = json.loads((personalized / "anchorface.json").read_text())
    assert meta["trained_on"]["what"] == "1 photo (s1.jpg)" and len(meta["trained_on"]["signatures"]) == 1
    _, base, base_g = load_checkpoint(DEMO_CHECKPOINT)
    _, sdit, g = load_checkpoint(personalized)
    a = torch.cat([p.flatten() for p in base.parameters()] + [p.flatten() for p in base_g.parameters()])
    b = torch.cat([p.flatten() for p in sdit.parameters()] + [p.flatten() for p in g.parameters()])
    assert torch.isfinite(b).all()
    change = ((b - a).norm() / a.norm()).item()
    assert 0 < change < 0.05  # fine-tuned from the demo weights (a fresh initialisation would be far away)
    out = tmp_path / "out.mp4"
    capsys.readouterr()
    assert main(["reenact", str(photo), str(driving), "-o", str(out), "--checkpoint", str(personalized),
                 "--steps", "2", "--quiet"]) == 0
    assert probe_video(out).num_frames == 8
    assert "personalize" not in capsys.readouterr().err  # the photo it was trained on: no hint


def test_reenact_with_the_demo_model_on_another_photo_suggests_personalize(photo, driving, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    assert main(["reenact", str(photo), str(driving), "-o", str(out), "--steps", "2", "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    notes = [line for line in err if line.startswith("anchorface: note:")]
    assert len(notes) == 1 and "one portrait (scikit-image's astronaut)" in notes[0]
    assert f"anchorface personalize {photo} -o my-model" in notes[0] and "--checkpoint my-model" in notes[0]


def test_no_hint_for_the_photo_a_model_was_trained_on(personalized, photo, face_corpus):
    """The demo model and its own portrait (as `anchorface demo` frames it); a personalised model and its photo,
    also resized; but the personalised model on another photo gives the hint."""
    from anchorface.faces import detect
    from anchorface.methods.base import Source
    from anchorface.methods.flow import personalize_hint
    from anchorface.methods.registry import get_method

    def source(img):
        box = detect.source_crop_box(img)
        return Source(image=img, box=box, landmarks=detect.source_landmarks(img, box))

    demo = get_method("anchored").from_pretrained(DEMO_CHECKPOINT)
    mine = get_method("anchored").from_pretrained(personalized)
    astronaut = synthetic.head_and_shoulders(synthetic.astronaut())[0]
    img = load_image(photo)
    small = synthetic.cv2.resize(img, None, fx=0.6, fy=0.6, interpolation=synthetic.cv2.INTER_AREA)
    assert personalize_hint(demo, source(astronaut), "astronaut.png") == ""
    assert personalize_hint(mine, source(img), photo) == ""
    assert personalize_hint(mine, source(small), "small.jpg") == ""
    other = face_corpus / "source" / "s12.jpg"
    assert "1 photo (s1.jpg)" in personalize_hint(mine, source(load_image(other)), other)
    assert "scikit-image's astronaut" in personalize_hint(demo, source(img), photo)


# ------------------------------------------------------------------------------------------------- errors

def _error(capsys, *args) -> str:
    capsys.readouterr()
    assert main(["personalize", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("anchorface: error: ") and err.count("\n") == 1, err
    return err


def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "out" / "ckpt"
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    flat = tmp_path / "flat.png"
    save_image(flat, np.full((300, 300, 3), 128, np.uint8))
    assert "not found" in _error(capsys, str(tmp_path / "missing.jpg"), "-o", str(out), *FAST)
    assert f"no images (.jpg, .jpeg, .png, .webp, .bmp) in folder {empty}" in _error(capsys, str(empty), "-o",
                                                                                     str(out), *FAST)
    assert f"cannot read image {bad}" in _error(capsys, str(bad), "-o", str(out), *FAST)
    assert f"no face found in the photo {flat}" in _error(capsys, str(flat), "-o", str(out), *FAST)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert "not an anchorface checkpoint" in _error(capsys, str(flat), "-o", str(taken), *FAST)
    assert "cannot write checkpoint" in _error(capsys, str(flat), "-o", str(bad / "ckpt"), *FAST)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bad.jpg", "empty", "flat.png", "keep.txt", "out",
                                                           "taken"]
    assert leftovers(tmp_path / "out") == []
    for flag, value in (("--minutes", "nan"), ("--minutes", "inf"), ("--minutes", "0"), ("--lr", "nan"),
                        ("--steps", "0")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(["personalize", str(flat), "-o", str(out), flag, value])
        assert e.value.code == 2 and "anchorface: error: personalize: argument" in capsys.readouterr().err


def test_the_bounds_are_checked(photo, tmp_path):
    from anchorface.training.personalize import personalize

    for kwargs, message in ((dict(), "give a bound"), (dict(minutes=float("nan")), "--minutes must be"),
                            (dict(steps=2, lr=float("inf")), "--lr must be"),
                            (dict(minutes=1e308), "--minutes must be"), (dict(steps=2, frames=2), "frames")):
        with pytest.raises(AnchorfaceError, match=message) as e:
            personalize(photo, tmp_path / "ckpt", DEMO_CHECKPOINT, progress=False, **kwargs)
        one_line(e)
    assert leftovers(tmp_path) == []


def test_read_only_output_folder(unprivileged, photo):
    from anchorface.training.personalize import personalize

    ro = unprivileged.tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)

    def attempt():
        try:
            personalize(photo, ro / "ckpt", DEMO_CHECKPOINT, steps=1, progress=False)
        except AnchorfaceError as e:
            return str(e)
        return "wrote"

    assert unprivileged.run(attempt) == f"cannot write checkpoint {ro / 'ckpt'}: Permission denied"
    assert leftovers(ro) == []


def test_interrupted_personalize_leaves_nothing(photo, tmp_path, monkeypatch):
    """Ctrl-C / SIGTERM (both unwind as KeyboardInterrupt) during training: no checkpoint, no work folder."""
    import anchorface.training.loop as loop

    real = loop.train

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted)
    from anchorface.training.personalize import personalize

    with pytest.raises(KeyboardInterrupt):
        personalize(photo, tmp_path / "ckpt", DEMO_CHECKPOINT, steps=1, clips=1, frames=6, progress=False)
    assert leftovers(tmp_path) == []


def test_no_face_in_any_still_of_a_folder(tmp_path):
    stills = tmp_path / "stills"
    stills.mkdir()
    save_image(stills / "flat.png", np.full((100, 100, 3), 90, np.uint8))
    with pytest.warns(UserWarning), pytest.raises(NoFaceError, match="no face found in any image of folder"):
        synthetic.load_portraits(stills)


# ------------------------------------------------------------------------------------------------- the loop's time budget

def test_a_time_budget_stops_the_loop_with_a_checkpoint(tiny_config, write_synthetic_dataset, tmp_path):
    """Every step takes more than a microsecond: a 1-us budget stops after exactly one step, checkpointed."""
    from anchorface.training.loop import LATEST, train

    cfg = tiny_config()
    cfg.train.batch_size, cfg.train.max_steps, cfg.train.sample_every, cfg.train.ckpt_every = 2, 50, 0, 50
    cfg.train.log_every = 50
    write_synthetic_dataset(tmp_path / "data", cfg)
    run = train(cfg, tmp_path / "data", tmp_path / "run", progress=False, max_seconds=1e-6)
    assert run["step"] == 1 and (tmp_path / "run" / LATEST).read_text().strip() == "checkpoint-0000001"
    assert np.isfinite(run["last_loss"])
    with pytest.raises(AnchorfaceError, match="time budget must be a positive"):
        train(cfg, tmp_path / "data", tmp_path / "run2", progress=False, max_seconds=float("nan"))
    with pytest.raises(AnchorfaceError, match="time budget must be a positive"):  # (not an OverflowError)
        train(cfg, tmp_path / "data", tmp_path / "run3", progress=False, max_seconds=float("inf"))


def test_the_output_may_not_be_the_base_and_the_base_must_be_anchored(photo, tmp_path):
    """-o the base checkpoint (by default the installed demo model) would replace it; a base of another method is
    named as such, before the long preparation."""
    import json
    import shutil

    from anchorface.training.personalize import personalize

    base = tmp_path / "base"
    shutil.copytree(DEMO_CHECKPOINT, base)
    stamp = (base / "anchorface.json").read_bytes()
    for output in (base, tmp_path / "." / "base"):
        with pytest.raises(AnchorfaceError, match="the base checkpoint") as e:
            personalize(photo, output, base, steps=1, progress=False)
        one_line(e)
    assert (base / "anchorface.json").read_bytes() == stamp
    other = tmp_path / "other"
    shutil.copytree(DEMO_CHECKPOINT, other)
    meta = json.loads((other / "anchorface.json").read_text())
    meta["config"]["method"] = "diffusionact"
    (other / "anchorface.json").write_text(json.dumps(meta))
    with pytest.raises(AnchorfaceError, match="method diffusionact, not anchored"):
        personalize(photo, tmp_path / "ckpt", other, steps=1, progress=False)
    assert leftovers(tmp_path) == ["base", "other"]


def test_a_short_budget_makes_fewer_pseudo_clips(tmp_path):
    """--minutes bounds the preparation too: past the deadline no clip is started, once each portrait has one."""
    import time

    portraits = [synthetic.astronaut_portrait()] * 2
    paths = synthetic.make_pseudo_clips(tmp_path / "late", 5, 4, size=32, progress=False, portraits=portraits,
                                        deadline=time.perf_counter() - 1.0)
    assert len(paths) == 2
    paths = synthetic.make_pseudo_clips(tmp_path / "open", 3, 4, size=32, progress=False,
                                        deadline=time.perf_counter() + 600.0)
    assert len(paths) == 3


def test_an_overrun_budget_is_said():
    from anchorface.training.personalize import overrun_note

    assert overrun_note(None, 500.0, 1) == "" and overrun_note(1.0, 66.0, 9) == ""  # no budget; kept (10 % + 1 s)
    assert "took 30 s, more than --minutes 0.1: the least it can do" in overrun_note(0.1, 30.0, 1)
    assert overrun_note(1.0, 90.0, 40) == " (took 90 s, more than --minutes 1)"  # (it did more than the least)


def test_a_diverged_fine_tuning_says_so_and_leaves_nothing(photo, tmp_path, monkeypatch):
    """Weights that became NaN (a finite last loss) read as divergence with the remedy, not as a broken checkpoint
    in a work folder that no longer exists."""
    import anchorface.training.loop as loop

    real = loop.train

    def diverged(*args, **kwargs):
        run = real(*args, **kwargs)
        from safetensors.torch import load_file, save_file

        path = next(run["checkpoint"].rglob("model.safetensors"))  # a weight of the trained checkpoint -> NaN
        state = load_file(str(path))
        name = next(iter(state))
        state[name] = torch.full_like(state[name], float("nan"))
        save_file(state, str(path))
        return run

    monkeypatch.setattr(loop, "train", diverged)
    from anchorface.training.personalize import personalize

    with pytest.raises(AnchorfaceError) as e:
        personalize(photo, tmp_path / "ckpt", DEMO_CHECKPOINT, steps=1, clips=1, frames=6, progress=False)
    assert "fine-tuning diverged" in one_line(e) and "smaller --lr" in one_line(e)
    assert leftovers(tmp_path) == []
