"""The ``cervixautoseg`` command line (also ``python -m CervixAutoSegLib``).

Each sub-command lives in its own module of :mod:`CervixAutoSegLib.commands` and
provides ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Any error the package reports on purpose (:class:`~CervixAutoSegLib.errors.CervixAutoSegError`) becomes one line on stderr
and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from . import __version__
from .errors import Cancelled, CervixAutoSegError

COMMANDS = (
    "phantom",
    "series",
    "segment",
    "evaluate",
    "export_rtstruct",
    "train",
    "benchmark",
)
"""Sub-command module names; the command name is the module name with '-' for '_'."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cervixautoseg",
        description="Auto-contouring of cervical-cancer radiotherapy structures on CT and T2w MRI.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMANDS:
        module = importlib.import_module(f".commands.{module_name}", __package__)
        name = module_name.replace("_", "-")
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except Cancelled:
        print(f"cervixautoseg {args.command}: cancelled", file=sys.stderr)
        return Cancelled.exit_code
    except CervixAutoSegError as error:
        message = " ".join(str(error).split())
        print(f"cervixautoseg {args.command}: error: {message}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"cervixautoseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
