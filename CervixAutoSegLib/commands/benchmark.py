"""``cervixautoseg benchmark TARGET``: time and memory of one part of the pipeline."""

from __future__ import annotations

import argparse
import importlib

from ..benchmarks import TOOL_TARGETS

HELP = "measure speed and peak memory (targets: a model family such as ct, or " + ", ".join(TOOL_TARGETS) + ")"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..benchmarks import segment
    from ..families import families

    targets = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    for family in families():
        if family.benchmark is not None and family.runner is not None:
            sub = targets.add_parser(family.name, help=f"{family.title}: {segment.HELP}",
                                     description=f"{family.title}: {segment.HELP}")
            segment.add_arguments(sub, family)
            sub.set_defaults(benchmark=segment.run)
    for name in TOOL_TARGETS:
        module = importlib.import_module(f"..benchmarks.{name}", __package__)
        sub = targets.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(benchmark=module.run)


def run(args: argparse.Namespace) -> int:
    return int(args.benchmark(args) or 0)
