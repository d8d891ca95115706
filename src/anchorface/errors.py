"""User-facing errors. Anything raised as `AnchorfaceError` is printed by the CLI as one line, exit code 1."""


class AnchorfaceError(RuntimeError):
    """A problem with the user's input or setup, explained in one line."""


class NoFaceError(AnchorfaceError):
    """No face was found where one is required."""


class VideoError(AnchorfaceError):
    """A video could not be read or written."""


class ImageError(AnchorfaceError):
    """An image could not be read."""


class MissingWeightsError(AnchorfaceError):
    """Pretrained weights (CLIP, SD-VAE, Inception, I3D, a checkpoint) are not where they were asked for."""


class CheckpointError(AnchorfaceError):
    """A checkpoint directory is missing, incomplete or of the wrong kind."""


class AnchorfaceWarning(UserWarning):
    """Something the user should know that does not stop the run (a skipped video, a fallback): the CLI prints it
    as one line, `anchorface: warning: ...`, never with the Python source line."""


def one_line(e: BaseException) -> str:
    """A one-line reason for an exception: `strerror: filename` for OS errors (disk full, permission denied, ...),
    else the first line of its message (with the next one when the first is a heading ending in a colon, as
    PyTorch's state-dict errors are)."""
    import errno

    if isinstance(e, OSError) and e.strerror:
        reason = "disk full (no space left on device)" if e.errno == errno.ENOSPC else e.strerror
        return f"{reason}: {e.filename}" if e.filename else reason
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    if len(lines) > 1 and lines[0].endswith(":"):  # a heading ("Error(s) in loading state_dict for X:"): + the first item
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        return f"{lines[0]} {lines[1]}{more}"
    return lines[0]


def io_errors() -> tuple[type[BaseException], ...]:
    """The exceptions reading or writing files raises: OSError, and safetensors' SafetensorError (a truncated or
    corrupt .safetensors file, or a failed write) when safetensors is installed."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors is a dependency
        return (OSError,)
    return (OSError, SafetensorError)


class translate_io_errors:
    """`with translate_io_errors("cannot write dataset shard x"):` turns OSError / SafetensorError raised in the
    block into `cls(f"{what}: {reason}")`, one line (the original is not chained into the message)."""

    def __init__(self, what: str, cls: type[AnchorfaceError] = AnchorfaceError):
        self.what, self.cls = what, cls

    def __enter__(self) -> "translate_io_errors":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None and isinstance(exc, io_errors()):
            raise self.cls(f"{self.what}: {one_line(exc)}") from None
        return False


class MissingExtraError(AnchorfaceError):
    """An optional dependency (a pip extra of anchorface) is not installed."""


def require(module: str, extra: str, what: str):
    """Import and return `module`, or raise a one-line `MissingExtraError` naming the pip extra that brings it:
    `<what> needs the '<extra>' extra: pip install 'anchorface[<extra>]'`. Used at every optional import."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:  # the extra, or a package it needs (installing the extra brings both)
        same = e.name is None or e.name.split(".")[0] == module.split(".")[0]
        why = "" if same else f" (no module named '{e.name}')"
        raise MissingExtraError(f"{what} needs the '{extra}' extra{why}: pip install 'anchorface[{extra}]'") from None
