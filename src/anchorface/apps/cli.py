"""The `anchorface` command. Each sub-command lives in the module that implements it and exposes
`register(subparsers)`; this file only wires them together and turns `AnchorfaceError` into one line + exit 1."""

from __future__ import annotations

import argparse
import importlib
import io
import os
import re
import sys
import threading

# module -> provides `register(subparsers)`; order = order in `anchorface --help`
COMMAND_MODULES = [
    "anchorface.apps.reenact",
    "anchorface.apps.demo",
    "anchorface.apps.prepare",
    "anchorface.apps.train",
    "anchorface.apps.evaluate",
    "anchorface.apps.curate",
]


def build_parser() -> argparse.ArgumentParser:
    from anchorface import __version__

    parser = argparse.ArgumentParser(prog="anchorface", description="Anchored Diffusion for video face reenactment.")
    parser.add_argument("--version", action="version", version=f"anchorface {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


# what MediaPipe's C++ graphs and TFLite print straight to file descriptor 2, from their own threads, whatever
# the logging settings: start-up notices, not for users
_NATIVE_NOISE = re.compile(rb"^(?:[WI]0000 |INFO: Created TensorFlow Lite|WARNING: All log messages before absl)")


def _filter_native_stderr() -> None:
    """Route fd 2 through a pipe that drops MediaPipe/TFLite notices; Python's own stderr (progress bars, errors)
    keeps writing to the terminal directly, so it is neither delayed nor filtered."""
    try:
        terminal = os.dup(2)
    except OSError:
        return
    sys.stderr.flush()
    sys.stderr = io.TextIOWrapper(os.fdopen(terminal, "wb", buffering=0), write_through=True,
                                  encoding=sys.stderr.encoding or "utf-8", errors="backslashreplace")
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not _NATIVE_NOISE.match(line):
                    os.write(terminal, line)

    threading.Thread(target=pump, name="native-stderr", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if argv is None:  # the console command (not a call from Python or a test)
        _filter_native_stderr()
    from anchorface.errors import AnchorfaceError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except AnchorfaceError as e:
        print(f"anchorface: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("anchorface: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
