"""Versioned JSON manifests: the checkpoint's `anchorface.json`, the dataset's `index.json`, and the plain JSON
objects beside them (component `config.json`, the trainer state).

    {"format": NAME, "version": N, ...body}

Written atomically (`io.atomic`); read with every check a hand-edited or foreign file needs: readable, valid
JSON, a JSON object, the expected format and version, the required keys. Each failure is the caller's one-line
error class naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anchorface.errors import AnchorfaceError, one_line
from anchorface.io.atomic import write_text


def write_json(path: str | Path, obj: Any, error: type[AnchorfaceError] = AnchorfaceError, indent: int = 2) -> None:
    """`obj` as JSON in `path`, atomically."""
    write_text(path, json.dumps(obj, indent=indent), error)


def write_manifest(path: str | Path, fmt: str, version: int, body: dict, error: type[AnchorfaceError] = AnchorfaceError,
                   indent: int = 2) -> None:
    """`{"format": fmt, "version": version, **body}` in `path`, atomically."""
    write_json(path, {"format": fmt, "version": version} | body, error, indent)


def read_json_object(path: str | Path, error: type[AnchorfaceError] = AnchorfaceError) -> dict:
    """The JSON object in `path`; `error` in one line if it cannot be read, is not JSON or not an object."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON ({e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"cannot read {path}: {one_line(e)}") from None
    if not isinstance(obj, dict):
        raise error(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def existing_directory(directory: str | Path, kind: str, error: type[AnchorfaceError] = AnchorfaceError) -> Path:
    """`directory` as a Path; `error` in one line when it does not exist or is a file (named as such)."""
    directory = Path(directory)
    if not directory.exists():
        raise error(f"{kind} directory not found: {directory}")
    if not directory.is_dir():
        raise error(f"{directory} is a file, expected a {kind} directory")
    return directory


def manifest_in(directory: str | Path, name: str, kind: str, not_one: str,
                error: type[AnchorfaceError] = AnchorfaceError) -> Path:
    """`directory/name`, the manifest of a `kind` directory (checkpoint, dataset); `error` in one line when
    `directory` does not exist, is a file, or lacks the manifest (then "{directory} is not {not_one}")."""
    directory = existing_directory(directory, kind, error)
    path = directory / name
    if not path.is_file():
        raise error(f"{directory} is not {not_one}")
    return path


def read_manifest(path: str | Path, fmt: str, version: int, required: tuple[str, ...] = (),
                  error: type[AnchorfaceError] = AnchorfaceError, what: str = "file") -> dict:
    """The manifest in `path`, checked: a JSON object of format `fmt`, version `version`, holding the `required`
    keys. `what` names the kind of file in the messages ("checkpoint", "index")."""
    path = Path(path)
    meta = read_json_object(path, error)
    if meta.get("format") != fmt or meta.get("version") != version:
        raise error(f"{path}: unsupported {what} format {meta.get('format')!r} v{meta.get('version')} "
                    f"(expected {fmt} v{version})")
    missing = [k for k in required if k not in meta]
    if missing:
        raise error(f"{path}: incomplete {what} (missing {missing})")
    return meta
