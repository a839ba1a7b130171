"""``cervixautoseg benchmark TARGET``: time and memory of one part of the pipeline."""

from __future__ import annotations

import argparse
import importlib

from ..benchmarks import TARGETS

HELP = "measure speed and peak memory (targets: " + ", ".join(TARGETS) + ")"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    targets = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name in TARGETS:
        module = importlib.import_module(f"..benchmarks.{name}", __package__)
        sub = targets.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(benchmark=module.run)


def run(args: argparse.Namespace) -> int:
    return int(args.benchmark(args) or 0)
