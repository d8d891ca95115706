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


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): what a one-line error quotes."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
