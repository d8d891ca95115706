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
