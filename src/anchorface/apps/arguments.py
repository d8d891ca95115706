"""Command-line option types, one home for every command: numbers are finite and in range, or argparse reports a
one-line error naming the option (`cli.Parser` prints it as `anchorface: error: ...`)."""

from __future__ import annotations

import argparse
import math

SEED_MAX = 2**63 - 1  # what torch.manual_seed and numpy's SeedSequence both take


def _number(kind, text: str, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_range(low: int | None = None, high: int | None = None, name: str | None = None):
    """An argparse type: an integer in [low, high] (either bound may be None)."""
    what = name or ("an integer" if low is None else
                    f"an integer >= {low}" if high is None else f"an integer in {low}..{high}")

    def parse(text: str) -> int:
        value = _number(int, text, what)
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


def float_range(low: float | None = None, high: float | None = None, low_open: bool = False, name: str | None = None):
    """An argparse type: a finite float in [low, high] (`low_open`: (low, high]); either bound may be None."""
    bounds = ("" if low is None else f"{'>' if low_open else '>='} {low:g}") + \
             ("" if high is None else f"{' and ' if low is not None else ''}<= {high:g}")
    what = name or (f"a number {bounds}" if bounds else "a finite number")

    def parse(text: str) -> float:
        value = _number(float, text, "a number")
        if low is not None and (value < low or (low_open and value == low)) or high is not None and value > high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = what
    return parse


finite_float = float_range()
positive_float = float_range(0.0, low_open=True, name="a positive number")
non_negative_float = float_range(0.0, name="a number >= 0")
unit_float = float_range(0.0, 1.0, name="a number in [0, 1]")
positive_int = int_range(1, name="an integer >= 1")
non_negative_int = int_range(0, name="an integer >= 0")
seed = int_range(0, SEED_MAX, name=f"a seed in 0..{SEED_MAX} (2**63 - 1)")


def writable_folder(path, what: str = "the output folder"):
    """Check, before any work, that files can be written into folder `path` (created if missing): AnchorfaceError
    when it is a file, read-only, on a full disk... Returns `path` as a Path."""
    import tempfile
    from pathlib import Path

    from anchorface.errors import AnchorfaceError, one_line

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AnchorfaceError(f"{what} {path} is a file, expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".anchorface-write-test-"):
            pass
    except OSError as e:
        raise AnchorfaceError(f"cannot write {what} {path}: {e.strerror or one_line(e)}") from None
    return path
