"""Placeholder for the `evaluate` sub-command (being built)."""

HELP = "(not available yet)"


def add_arguments(parser):
    pass


def run(args):
    from ..errors import InputError

    raise InputError("this command is not available yet")
