"""Small assertions shared by the test modules (not a test module itself)."""

from pathlib import Path

import pytest


def one_line(e: pytest.ExceptionInfo) -> str:
    """The message of a raised error, checked to be one non-empty line."""
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def leftovers(d: Path) -> list[str]:
    """The names in folder `d` (a failed write must leave no temporary behind)."""
    return sorted(p.name for p in d.iterdir())


def short_clip(src: Path, out: Path, frames: int) -> Path:
    """The first `frames` frames of video `src`, with its audio, written to `out` (a tmp path: the corpus' clips
    are never copied into the repository)."""
    from anchorface.io.video import VideoWriter, iter_frames, probe_video

    with VideoWriter(out, probe_video(src).fps, audio_from=src) as w:
        for frame in iter_frames(src, max_frames=frames):
            w.write(frame)
    return out
