"""Benchmarks behind ``cervixautoseg benchmark TARGET``: speed and memory, never asserted in tests.

Targets: every registered model family with a benchmark case (``ct``, ...: the whole
``segment`` pipeline, :mod:`.segment`), plus the modules named in :data:`TOOL_TARGETS`, each
with ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.  Each prints a
human-readable table and (with ``--json FILE``) writes the numbers.  A family's case may also
declare its own series, targets and baseline networks to compare with (:mod:`.spec`; MR does).
"""

TOOL_TARGETS = ("metrics", "rtstruct", "dataset", "batch")
