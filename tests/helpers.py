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
