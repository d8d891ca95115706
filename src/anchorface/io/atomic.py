"""Atomic outputs: every file or folder anchorface writes appears complete or not at all.

`atomic_output` yields a temporary path beside the target and renames it into place when the block succeeds, so an
interrupted or failed run never leaves a half-written file (nor its temporary). `write_text` / `write_bytes` are the
one-shot forms. A failure to write (a missing or read-only folder, a full disk, a directory in the way) is the
caller's one-line error class, `cannot write PATH: reason`.
"""

from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator

from anchorface.errors import AnchorfaceError, one_line


@contextmanager
def atomic_output(path: str | Path, error: type[AnchorfaceError] = AnchorfaceError, what: str = "",
                  translate: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, so formats are still picked by extension); rename it
    onto `path` when the block succeeds, delete it when the block raises. Works for files and directories (an
    existing directory at `path` is replaced only once the new one is complete). Parent folders are created.

    An OSError from the folder creation or the final rename, or one in the block (unless `translate` is False:
    for long blocks that also read, e.g. a video writer), becomes `error("cannot write {what}{path}: reason")`;
    other exceptions pass through. The temporary output is removed in every failure."""
    path = Path(path)
    where = f"cannot write {what}{path}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise error(f"{where}: cannot create its folder ({one_line(e)})") from None
    tmp = path.with_name(f".{path.stem}.tmp-{secrets.token_hex(4)}{path.suffix}")
    try:
        yield tmp
    except OSError as e:
        _remove(tmp)
        if not translate:
            raise
        raise error(f"{where}: {one_line(e)}") from None
    except BaseException:
        _remove(tmp)
        raise
    if not tmp.exists():
        raise FileNotFoundError(f"atomic_output: nothing was written to the temporary path for {path}")
    try:
        _rename_into_place(tmp, path)
    except OSError as e:
        a_file_onto_a_folder = path.is_dir() and not tmp.is_dir()  # (asked before the temporary is removed)
        _remove(tmp)
        reason = "it is a directory" if a_file_onto_a_folder else one_line(e)
        raise error(f"{where}: {reason}") from None


def write_text(path: str | Path, text: str, error: type[AnchorfaceError] = AnchorfaceError, what: str = "") -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_output(path, error, what) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | Path, data: bytes, error: type[AnchorfaceError] = AnchorfaceError,
                what: str = "") -> None:
    """Write `data` to `path` atomically."""
    with atomic_output(path, error, what) as tmp:
        tmp.write_bytes(data)


def _rename_into_place(tmp: Path, path: Path) -> None:
    """os.replace, except that a directory replaces an existing directory too (the old one is moved aside and
    put back if the new one cannot take its place)."""
    if not (tmp.is_dir() and path.is_dir()):
        os.replace(tmp, path)
        return
    old = path.with_name(f".{path.name}.old-{secrets.token_hex(4)}")
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except OSError:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def write_safetensors(path: str | Path, tensors: dict, error: type[AnchorfaceError] = AnchorfaceError,
                      metadata: dict[str, str] | None = None) -> None:
    """`tensors` (name -> torch tensor) as a safetensors file, atomically and with the mode a plain open() gives
    (safetensors itself creates files private to their writer)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        with atomic_output(path, error) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod(0o666 & ~umask)
    except SafetensorError as e:
        raise error(f"cannot write {path}: {one_line(e)}") from None
