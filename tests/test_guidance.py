"""The guidance study (§4.5.2, Fig. 7): the condition subsets reach the model as drop flags, and the summary's
improvements follow from the errors (closed forms with an oracle denoiser)."""

import numpy as np
import torch
from torch import nn

from anchorface.config import DiffusionConfig
from anchorface.diffusion.gaussian import GaussianDiffusion
from anchorface.evaluation.guidance import recovery_errors, study_timesteps, summarize
from anchorface.frozen.codecs import PixelCodec

T, RES = 4, 16


class LandmarkOracle(nn.Module):
    """Predicts x0 exactly when it is given the landmarks, and 0 when they are dropped; ignores G."""

    def __init__(self, x0):
        super().__init__()
        self.x0, self.mapping = x0, object()
        self.w = nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, x, t, g=None, lmk=None, drop=None, drop_global=None, drop_landmarks=None):
        self.seen.append((drop_global is not None, drop_landmarks is not None))
        return torch.zeros_like(self.x0) if drop_landmarks is not None else self.x0.clone()


class Pipe:
    def __init__(self, crops):
        self.codec, self.device = PixelCodec(4), torch.device("cpu")
        self.diffusion = GaussianDiffusion(DiffusionConfig(prediction="x0"))
        from anchorface.frozen.codecs import to_pixels

        self.x0 = self.codec.encode(to_pixels(crops))[None]
        self.sdit = LandmarkOracle(self.x0)


def test_subsets_reach_the_model_and_improvements_are_exact():
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (T, RES, RES, 3), dtype=np.uint8)
    pipe = Pipe(crops)
    lmk = rng.random((T, 478, 3)).astype(np.float32)
    ts = study_timesteps(1000, 5)
    assert ts == [100, 300, 500, 700, 900]
    errors = recovery_errors(pipe, [(crops, torch.zeros(1, 8), lmk)] * 3, ts)
    # none / global drop the landmarks: x0_hat = 0; landmarks / both: x0_hat = x0
    base = float((pipe.x0 ** 2).mean())
    np.testing.assert_allclose(errors["none"], base, rtol=1e-6)
    np.testing.assert_allclose(errors["global"], base, rtol=1e-6)
    np.testing.assert_allclose(errors["landmarks"], 0, atol=1e-12)
    np.testing.assert_allclose(errors["both"], 0, atol=1e-12)
    # both flags seen: G dropped alone (landmarks), L dropped alone (global), both (none), neither (both)
    assert set(pipe.sdit.seen) == {(True, False), (False, True), (True, True), (False, False)}
    rows = summarize(errors, ts)
    assert [r["t"] for r in rows] == ts
    for r in rows:
        assert r["landmarks"]["relative_pct"] == 100.0 and r["both"]["relative_pct"] == 100.0
        assert r["global"]["relative_pct"] == 0.0 and r["global"]["improvement"] == 0.0
