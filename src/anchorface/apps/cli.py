"""The `anchorface` command. Each sub-command lives in the module that implements it and exposes
`register(subparsers)`; this file only wires them together and makes every failure one line on stderr:
`AnchorfaceError` and OS / safetensors errors (exit 1), bad options (exit 2), Ctrl-C (130) and SIGTERM (143), the
last two after the same clean-up (temporary outputs removed); warnings are one line too."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import warnings

# module -> provides `register(subparsers)`; order = order in `anchorface --help`
COMMAND_MODULES = [
    "anchorface.apps.reenact",
    "anchorface.apps.demo",
    "anchorface.apps.personalize",
    "anchorface.apps.prepare",
    "anchorface.apps.train",
    "anchorface.apps.evaluate",
    "anchorface.apps.curate",
    "anchorface.apps.web",
]


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (`anchorface: error: reenact: argument --seed: ...`, exit 2) instead of
    the usage block plus a message."""

    def error(self, message: str):
        command = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        self.exit(2, f"anchorface: error: {command}{message} (see {self.prog} --help)\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds exactly as on Ctrl-C (temporary files removed)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """`warnings` as one line, without the file name and the source line Python prints by default."""
    text = str(message).strip()
    return f"anchorface: warning: {text.splitlines()[0] if text else category.__name__}\n"


def build_parser() -> argparse.ArgumentParser:
    from anchorface import __version__

    parser = Parser(prog="anchorface", description="Anchored Diffusion for video face reenactment.")
    parser.add_argument("--version", action="version", version=f"anchorface {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from anchorface.faces.native_logs import quiet_process

    quiet_process(filter_stderr=argv is None)  # filter fd 2 only as the console command (not from Python, tests)
    from anchorface.errors import AnchorfaceError, io_errors, one_line

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous_term = None
    if threading.current_thread() is threading.main_thread():  # (signal handlers can only be set there)
        previous_term = signal.signal(signal.SIGTERM, _raise_terminated)
    previous_format, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return int(args.func(args) or 0)
    except AnchorfaceError as e:
        print(f"anchorface: error: {one_line(e)}", file=sys.stderr)
        return 1
    except io_errors() as e:  # a file that could not be read or written, wherever it happened: one line
        print(f"anchorface: error: {one_line(e)}", file=sys.stderr)
        return 1
    except Terminated:
        print("anchorface: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("anchorface: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = previous_format
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


if __name__ == "__main__":
    sys.exit(main())
