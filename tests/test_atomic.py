"""anchorface.io.atomic: outputs appear complete or not at all; a failure is one line and leaves no temporary."""

import os

import numpy as np
import pytest

from anchorface.errors import AnchorfaceError, CheckpointError, ImageError
from anchorface.io.atomic import atomic_output, write_bytes, write_text
from anchorface.io.images import save_image
from helpers import leftovers, one_line


def test_atomic_output_files_and_directories(tmp_path):
    target = tmp_path / "sub" / "result.json"
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".json" and tmp.name.startswith(".")
        tmp.write_text("{}")
        assert not target.exists()
    assert target.read_text() == "{}" and leftovers(target.parent) == ["result.json"]

    with pytest.raises(ValueError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise ValueError
    assert target.read_text() == "{}" and leftovers(target.parent) == ["result.json"]

    ckpt = tmp_path / "ckpt"
    for version in ("1", "2"):
        with atomic_output(ckpt) as tmp:
            tmp.mkdir()
            (tmp / "weights").write_text(version)
    assert (ckpt / "weights").read_text() == "2" and leftovers(tmp_path) == ["ckpt", "sub"]


def test_atomic_output_failed_rename_is_one_line_and_leaves_no_temp(tmp_path):
    """The final rename can fail (the target is a directory, or a file where a directory goes): the caller's error
    class in one line, the temporary output removed, whatever was at the target untouched."""
    folder = tmp_path / "out.json"
    folder.mkdir()
    (folder / "keep").write_text("x")
    with pytest.raises(CheckpointError) as e:
        with atomic_output(folder, CheckpointError) as tmp:
            tmp.write_text("{}")
    assert "out.json" in one_line(e) and "directory" in one_line(e)
    assert leftovers(tmp_path) == ["out.json"] and (folder / "keep").read_text() == "x"

    plain = tmp_path / "data"
    plain.write_text("old")
    with pytest.raises(AnchorfaceError):
        with atomic_output(plain) as tmp:
            tmp.mkdir()
            (tmp / "index.json").write_text("{}")
    assert plain.read_text() == "old" and sorted(leftovers(tmp_path)) == ["data", "out.json"]

    with pytest.raises(AnchorfaceError, match="cannot create its folder"):  # the parent is a file
        write_text(plain / "x.json", "{}")
    (tmp_path / "img.png").mkdir()
    with pytest.raises(ImageError, match="cannot write image .*img.png: it is a directory"):
        save_image(tmp_path / "img.png", np.zeros((4, 4, 3), np.uint8))
    assert sorted(leftovers(tmp_path)) == ["data", "img.png", "out.json"]


def test_an_oserror_while_writing_is_one_line_and_leaves_no_temp(tmp_path):
    """A write that fails half-way (a full disk, here a write into a missing sub-folder of the temporary
    directory) is the caller's error class in one line naming the output; the target keeps its old content."""
    target = tmp_path / "state.json"
    write_text(target, "old")
    with pytest.raises(CheckpointError) as e:
        with atomic_output(target, CheckpointError, what="checkpoint ") as tmp:
            tmp.write_text("half")
            raise OSError(28, "No space left on device")
    assert one_line(e).startswith(f"cannot write checkpoint {target}: ") and "no space left" in one_line(e).lower()
    assert leftovers(tmp_path) == ["state.json"] and target.read_text() == "old"

    with pytest.raises(AnchorfaceError, match="cannot write .*shard"):
        with atomic_output(tmp_path / "shard") as tmp:
            (tmp / "missing" / "x").write_bytes(b"1")  # FileNotFoundError
    assert leftovers(tmp_path) == ["state.json"]

    with pytest.raises(OSError):  # translate=False: the block's own OSError passes through unchanged
        with atomic_output(tmp_path / "v.mp4", translate=False) as tmp:
            tmp.write_bytes(b"x")
            raise FileNotFoundError("an input went missing")
    assert leftovers(tmp_path) == ["state.json"]


def test_write_text_and_bytes_keep_the_usual_file_mode(tmp_path):
    write_bytes(tmp_path / "a.bin", b"\x00\x01")
    write_text(tmp_path / "b.txt", "hé")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01" and (tmp_path / "b.txt").read_text("utf-8") == "hé"
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_folder_that_cannot_replace_a_folder_gives_the_real_reason(tmp_path, monkeypatch):
    """A new folder over an old one (a report, a checkpoint) whose rename fails, e.g. a read-only mount: the
    system's reason, not "it is a directory" (which only explains a file put onto a folder)."""
    from anchorface.io import atomic

    def refuse(tmp, path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic, "_rename_into_place", refuse)
    (tmp_path / "report").mkdir()
    with pytest.raises(AnchorfaceError) as e:
        with atomic_output(tmp_path / "report") as tmp:
            tmp.mkdir()
            (tmp / "report.md").write_text("#")
    assert "Permission denied" in one_line(e) and "is a directory" not in one_line(e)
    assert leftovers(tmp_path) == ["report"]
