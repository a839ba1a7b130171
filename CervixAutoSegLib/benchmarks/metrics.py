"""Placeholder for the `metrics` benchmark (being built)."""

HELP = "(not available yet)"


def add_arguments(parser):
    pass


def run(args):
    from ..errors import InputError

    raise InputError("this benchmark is not available yet")
