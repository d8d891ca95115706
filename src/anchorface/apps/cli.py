"""The `anchorface` command. Each sub-command lives in the module that implements it and exposes
`register(subparsers)`; this file only wires them together and turns `AnchorfaceError` into one line + exit 1."""

from __future__ import annotations

import argparse
import importlib
import sys

# module -> provides `register(subparsers)`; order = order in `anchorface --help`
COMMAND_MODULES = [
    "anchorface.apps.reenact",
    "anchorface.apps.demo",
    "anchorface.apps.prepare",
    "anchorface.apps.train",
    "anchorface.apps.evaluate",
]


def build_parser() -> argparse.ArgumentParser:
    from anchorface import __version__

    parser = argparse.ArgumentParser(prog="anchorface", description="Anchored Diffusion for video face reenactment.")
    parser.add_argument("--version", action="version", version=f"anchorface {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from anchorface.faces.native_logs import quiet_process

    quiet_process(filter_stderr=argv is None)  # filter fd 2 only as the console command (not from Python, tests)
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
