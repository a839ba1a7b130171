"""``cervixautoseg dataset``: placeholder while issue 17 is built (replaced by its owner)."""

from __future__ import annotations

import argparse

HELP = "(dataset: being built, issue 17)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs="*")


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError

    raise InputError("dataset is not built yet")
