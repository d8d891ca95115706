"""The `Reenactor` interface every reenactment method implements, and what the shared video flow hands it.

A method turns a source (a face photo, or a text) plus a driving clip into face crops at its resolution, in the
clip's frame order (§3: one source + N driving frames -> N frames). The expensive per-clip work is done once by the
caller, whatever the method (`methods/flow.py` for `reenact`, the cases of `evaluation/protocols.py`): the source
crop box and landmarks (`Source`), the driving crop boxes, landmarks and target motion (`DrivingClip`, App. B and
supp. §1). A method declares in `needs` which of these it uses, so the flow can skip the others:

- "landmarks": the target motion (`DrivingClip.motion`, MediaPipe landmarks, §3.1);
- "frames": the driving frames themselves (`DrivingClip.crops`);
- "source_image": a source photo (`Source.image` / `Source.crop`);
- "text": a text may replace (or edit) the source photo (§4.4).

Generation is split in two so a caller can render once and stream the frames more than once (the `--compare`
video decodes the same result twice): `render` does the model work and returns a `Rendered`, whose `frames()`
starts a new stream of uint8 crops each time it is called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator

import numpy as np

from anchorface.errors import AnchorfaceError

NEEDS = ("landmarks", "frames", "source_image", "text")


@dataclass
class Source:
    """The source of a reenactment: a photo with its face crop box and landmarks (the crop of App. B; landmarks
    on the crop at `landmark_crop_size` px), and/or a text for text-to-video or editing (§4.4)."""

    image: np.ndarray | None = None  # full uint8 RGB photo
    box: Any = None  # faces.detect.Box: the face crop box in `image`
    landmarks: np.ndarray | None = None  # [478, 3] on the crop, None when no face landmarks were found
    text: str | None = None  # text-to-video: the text replaces the photo
    edit: str | None = None  # editing: a text mixed into the photo's global signal
    edit_weight: float = 0.5
    name: str = "the source image"

    def crop(self, size: int) -> np.ndarray:
        """The face crop at `size` px (uint8 [size, size, 3])."""
        from anchorface.faces.detect import crop

        if self.image is None or self.box is None:
            raise AnchorfaceError("a source image is needed")
        return crop(self.image, self.box, size)


@dataclass
class DrivingClip:
    """A driving clip of N frames as pass 1 of the flow leaves it: crop boxes (App. B), the driving landmarks on the
    crops and the target motion (the driving landmarks, or re-targeted onto the source face, supp. §1). The
    frames themselves are not held: `frames()` streams them again (from the file, or from frames in memory)."""

    frames: Callable[[], Iterable[np.ndarray]]  # a new iterator over the full uint8 RGB frames on each call
    boxes: np.ndarray  # [N, 4] crop boxes
    landmarks: np.ndarray | None = None  # [N, 478, 3] driving landmarks (crop coordinates), when computed
    found: np.ndarray | None = None  # [N] bool: a face was found in that frame's crop
    motion: np.ndarray | None = None  # [N, 478, 3] the landmarks a method follows
    fps: Any = None
    cuts: tuple[int, ...] = ()  # frames that start a new shot (multi-shot video, §5); empty: one shot

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def shots(self) -> list[tuple[int, int]]:
        """The shots as [start, end) frame ranges (one range without cuts)."""
        from anchorface.io.shots import shot_ranges

        return shot_ranges(self.cuts, len(self))

    def crops(self, size: int) -> Iterator[np.ndarray]:
        """The driving face crops at `size` px, streamed in frame order."""
        from anchorface.faces.detect import Box, crop

        for frame, box in zip(self.frames(), self.boxes):
            yield crop(frame, Box.from_array(box), size)

    @classmethod
    def from_frames(cls, frames: list[np.ndarray], boxes: np.ndarray, **kwargs) -> "DrivingClip":
        """A clip held in memory (e.g. an evaluation window)."""
        return cls(frames=lambda: iter(frames), boxes=boxes, **kwargs)


@dataclass
class Rendered:
    """What `Reenactor.render` returns: a restartable stream of uint8 [res, res, 3] crops in timeline order, and a
    few facts about how they were made (for messages and reports, e.g. the merge strategy and number of sequences)."""

    stream: Callable[[], Iterator[np.ndarray]]
    num_frames: int
    info: dict = field(default_factory=dict)
    summary: str = ""

    def frames(self) -> Iterator[np.ndarray]:
        return self.stream()

    def array(self) -> np.ndarray:
        """All frames at once [N, res, res, 3] (evaluation windows are short)."""
        return np.stack(list(self.frames()))


class Reenactor:
    """A reenactment method (one entry of `methods.registry`). Subclasses set `needs` and `resolution`, load with
    `from_pretrained` and implement `render`; `check` validates their options before any work is done."""

    name: ClassVar[str] = "method"
    needs: ClassVar[frozenset[str]] = frozenset()
    resolution: int
    trained_on: dict | None = None  # a model made from stills: what it saw (`anchored.checkpoint.read_trained_on`)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str = "cpu", **kwargs) -> "Reenactor":
        raise NotImplementedError

    def check(self, *, text: str | None = None, edit: str | None = None, **options) -> None:
        """One-line AnchorfaceError for options (or a text) this method cannot use, before any work is done."""
        if (text is not None or edit is not None) and "text" not in self.needs:
            raise AnchorfaceError(f"method {self.name} takes no text (--text / --edit)")
        if options:
            raise AnchorfaceError(f"method {self.name} takes no option {', '.join(sorted(options))}")

    def resolve_options(self, options: dict) -> dict:
        """The options with the method's defaults filled in where the caller left them unset (None)."""
        return {k: v for k, v in options.items() if v is not None}

    def render(self, source: Source, clip: DrivingClip, *, seed: int = 0, progress: bool = True,
               **options) -> Rendered:
        raise NotImplementedError

    def unseen_photo(self, source: Source) -> str | None:
        """For a model trained on stills (`trained_on`): what it was trained on, when `source` is a photo that is
        none of them (`faces.signature`); else None (also for a source without face landmarks)."""
        from anchorface.faces.signature import SAME_PHOTO, best_match, photo_signature

        rec = self.trained_on
        if rec is None or source.image is None or source.box is None or source.landmarks is None:
            return None
        try:
            match = best_match(photo_signature(source.image, source.box, source.landmarks), rec["signatures"])
        except (ValueError, TypeError):  # a malformed record: no hint rather than an error
            return None
        return None if match >= SAME_PHOTO else rec["what"]

    def compare_variants(self, options: dict) -> list[tuple[str, dict]]:
        """The panels of a side-by-side `--compare` video after the driving crop: (label, options) pairs."""
        return [(self.name, dict(options))]
