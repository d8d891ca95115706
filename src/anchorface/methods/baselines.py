"""Two trivial "methods" that frame every other column of Table 1 (§4.3): copying the driving crops is perfect
motion with the driving identity (LMSE's floor at that resolution unless the motion is re-targeted; CSIM of the
wrong face in cross-reenactment), holding the source crop still is perfect identity with no motion at all.

They load without a checkpoint and render at `resolution` (default: the data config's crop size, 256 px;
`anchorface evaluate` uses the first model's resolution)."""

from __future__ import annotations

from pathlib import Path

from anchorface.config import DataConfig
from anchorface.errors import AnchorfaceError
from anchorface.methods.base import DrivingClip, Reenactor, Rendered, Source


class _Baseline(Reenactor):
    def __init__(self, resolution: int | None = None):
        self.resolution = int(resolution or DataConfig().resolution)
        if self.resolution < 1:
            raise AnchorfaceError(f"resolution must be >= 1, got {resolution}")

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str = "cpu",
                        resolution: int | None = None) -> "_Baseline":
        if path is not None:
            raise AnchorfaceError(f"method {cls.name} takes no checkpoint")
        return cls(resolution)


class CopyDriving(_Baseline):
    """The driving face crops themselves."""

    name = "copy-driving"
    needs = frozenset({"frames"})

    def render(self, source: Source, clip: DrivingClip, *, seed: int = 0, progress: bool = True,
               **options) -> Rendered:
        self.check(**options)
        return Rendered(lambda: clip.crops(self.resolution), len(clip), summary="the driving crops")


class StillSource(_Baseline):
    """The source face crop, repeated for every driving frame."""

    name = "still-source"
    needs = frozenset({"source_image"})

    def render(self, source: Source, clip: DrivingClip, *, seed: int = 0, progress: bool = True,
               **options) -> Rendered:
        self.check(**options)
        crop = source.crop(self.resolution)
        return Rendered(lambda: (crop for _ in range(len(clip))), len(clip), summary="the source crop held still")
