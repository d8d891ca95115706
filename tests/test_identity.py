"""faces/identity.py: dlib's face-recognition embedding (the identity distance of §3.3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dlib", reason="the face-recognition embedding needs dlib-bin (pip install 'anchorface[curate]')")

from anchorface.errors import AnchorfaceError
from anchorface.faces import identity

FACES = Path(__file__).resolve().parents[2] / "shared/data/faces"
needs_faces = pytest.mark.skipif(not FACES.is_dir(), reason=f"face corpus not found at {FACES}")


@pytest.fixture(scope="module")
def emb():
    return identity.IdentityEmbedder()


def _photo(name):
    from anchorface.io.images import load_image

    return load_image(FACES / "source" / f"{name}.jpg")


@needs_faces
def test_same_photo_zero_other_person_far_flipped_and_resized_close(emb):
    import cv2

    a, b = _photo("s1"), _photo("s2")  # two different people (a woman, a man)
    small = cv2.resize(a, (a.shape[1] // 3, a.shape[0] // 3), interpolation=cv2.INTER_AREA)
    m = emb.measure([a, a, b, a[:, ::-1].copy(), small])
    v = m.vectors
    assert v.shape == (5, 128) and v.dtype == np.float32 and m.measured == 5 and m.detected.all()
    assert identity.distance(v[0], v[1]) == pytest.approx(0.0, abs=1e-6)
    assert identity.distance(v[0], v[2]) > identity.SAME_PERSON
    assert identity.distance(v[0], v[3]) < identity.SAME_PERSON
    assert identity.distance(v[0], v[4]) < identity.SAME_PERSON
    assert identity.distance(v[:1], v).shape == (5,)


@needs_faces
def test_known_box_and_fallback(emb):
    from anchorface.faces.detect import FaceDetector

    a = _photo("s1")
    with FaceDetector() as det:
        box = det.detect(a)[0]
    tiny = a[::8, ::8].copy()  # the face ~40 px wide: upsampled before detection
    m = emb.measure([a, tiny, np.full((200, 200, 3), 128, np.uint8)],
                    [box.as_array(), box.as_array() / 8, (50, 50, 150, 150)])
    assert m.detected[:2].all() and not m.detected[2]  # a blank image: the known box is used, still measured
    assert np.isfinite(m.vectors).all()
    assert identity.distance(m.vectors[0], emb.embed([a])[0]) < 0.2
    assert identity.distance(m.vectors[0], m.vectors[1]) < identity.SAME_PERSON


def test_missing_package_is_one_line_error(monkeypatch):
    monkeypatch.setattr(identity.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AnchorfaceError, match="face-recognition-models"):
        identity.IdentityEmbedder()


def test_bad_input(emb):
    with pytest.raises(AnchorfaceError, match="RGB uint8"):
        emb.embed([np.zeros((10, 10), np.float32)])
    with pytest.raises(ValueError):
        emb.embed([np.zeros((10, 10, 3), np.uint8)], boxes=[None, None])
    assert emb.embed([]).shape == (0, 128)
