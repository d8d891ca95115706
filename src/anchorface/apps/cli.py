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
    the usage block plus a message. The benchmark and study scripts use it too."""

    def __init__(self, *args, help_command: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.help_command = help_command  # how to ask for help when it is not `PROG --help` (a script's path)

    def error(self, message: str):
        program, _, command = self.prog.partition(" ")
        see = self.help_command or f"{self.prog} --help"
        self.exit(2, f"{program}: error: {command + ': ' if command else ''}{message} (see {see})\n")


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


def run_command(call, program: str = "anchorface") -> int:
    """Run `call()` as a console command: its int (or 0) is the exit status; `AnchorfaceError` and OS / safetensors
    errors are one line `PROGRAM: error: ...` (exit 1), Ctrl-C 130 and SIGTERM 143 after the same unwinding
    (temporary outputs removed), warnings one line. `anchorface` and the benchmark and study scripts run this way."""
    from anchorface.errors import AnchorfaceError, io_errors, one_line

    previous_term = None
    if threading.current_thread() is threading.main_thread():  # (signal handlers can only be set there)
        previous_term = signal.signal(signal.SIGTERM, _raise_terminated)
    previous_format, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return int(call() or 0)
    except (AnchorfaceError, *io_errors()) as e:  # (a file that could not be read or written, wherever it happened)
        print(f"{program}: error: {one_line(e)}", file=sys.stderr)
        return 1
    except Terminated:
        print(f"{program}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = previous_format
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


def main(argv: list[str] | None = None) -> int:
    from anchorface.faces.native_logs import quiet_process

    quiet_process(filter_stderr=argv is None)  # filter fd 2 only as the console command (not from Python, tests)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_command(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
