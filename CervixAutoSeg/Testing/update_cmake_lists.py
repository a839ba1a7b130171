"""Rewrite the explicit file lists of CervixAutoSeg/CMakeLists.txt from the files git tracks.

The module's CMakeLists lists every shipped file by name (no globs).  After adding a file
to CervixAutoSegLib/ or Resources/ (and ``git add``-ing it), run::

    python CervixAutoSeg/Testing/update_cmake_lists.py

Only the ``LIB_PYTHON_SCRIPTS`` and ``LIB_PYTHON_RESOURCES`` blocks are replaced;
Testing/test_module_consistency.py checks the result.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CMAKE_FILE = ROOT / "CervixAutoSeg" / "CMakeLists.txt"
INDENT = "  "


def tracked(prefix: str) -> list[str]:
    """Paths (relative to the repository root) git tracks under ``prefix`` that exist on disk."""
    output = subprocess.run(["git", "ls-files", prefix], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return sorted(path for path in output.split() if (ROOT / path).is_file() and "__pycache__" not in path)


def replace_block(text: str, name: str, items: list[str]) -> str:
    body = "".join(f"{INDENT}{item}\n" for item in items)
    pattern = re.compile(rf"set\({name}\n.*?\n{INDENT}\)", flags=re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"no set({name} ...) block in {CMAKE_FILE}")
    return pattern.sub(lambda _: f"set({name}\n{body}{INDENT})", text)


def main() -> int:
    package = tracked("CervixAutoSegLib")
    scripts = [path for path in package if path.endswith(".py")]
    resources = [path for path in package if not path.endswith(".py")] + tracked("Resources")
    text = CMAKE_FILE.read_text(encoding="utf-8")
    updated = replace_block(replace_block(text, "LIB_PYTHON_SCRIPTS", scripts), "LIB_PYTHON_RESOURCES", resources)
    if updated != text:
        CMAKE_FILE.write_text(updated, encoding="utf-8")
        print(f"updated {CMAKE_FILE.relative_to(ROOT)}: {len(scripts)} scripts, {len(resources)} resources")
    else:
        print(f"{CMAKE_FILE.relative_to(ROOT)} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
