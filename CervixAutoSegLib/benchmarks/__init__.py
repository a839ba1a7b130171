"""Benchmarks behind ``cervixautoseg benchmark TARGET``: speed and memory, never asserted in tests.

Each target is a module here with ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``,
printing a human-readable table and (with ``--json FILE``) writing the numbers.
"""

TARGETS = ("ct", "metrics", "rtstruct")
