"""anchorface.io.images.resize: the one resize rule (area down, bicubic up)."""

import cv2
import numpy as np

from anchorface.io.images import resize


def test_resize_rule():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize(img, 20), cv2.resize(img, (20, 20), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(resize(img, 64), cv2.resize(img, (64, 64), interpolation=cv2.INTER_CUBIC))
    np.testing.assert_array_equal(resize(img, 40), img)  # same size: the image itself
    wide = resize(img, (30, 10))  # (width, height)
    assert wide.shape == (10, 30, 3)
    # area averaging: a constant image stays constant, a 2x2 block average is exact
    blocks = np.kron(rng.integers(0, 256, (5, 5, 3)), np.ones((2, 2, 1))).astype(np.uint8)
    np.testing.assert_array_equal(resize(blocks, 5), blocks[::2, ::2])
