#!/usr/bin/env bash
# Byte-compile every Python file and import the package (plus its lazily imported
# pure-numpy modules) under each Python that Slicer versions ship (3.10-3.12):
#   - $COMPAT_PYTHON if set (`make compat` passes the project venv's python; it has numpy), then
#   - pyenv's 3.10 and 3.12 when present, each in its own throw-away venv under $TMPDIR
#     (numpy is pip-installed only into that venv, never into a system Python: PEP 668).
set -euo pipefail
cd "$(dirname "$0")/.."

check() {  # check PYTHON: compile and import with that interpreter
  "$1" -m compileall -q -f CervixAutoSegLib CervixAutoSeg Testing >/dev/null
  "$1" - <<'PY'
import sys
sys.path.insert(0, ".")
import CervixAutoSegLib, CervixAutoSegLib.volume, CervixAutoSegLib.structures, CervixAutoSegLib.cli
# Building the parser imports every sub-command module: they must not need heavy packages at import.
CervixAutoSegLib.cli.build_parser()
print(f"compat: Python {sys.version.split()[0]} compiles and imports CervixAutoSegLib {CervixAutoSegLib.__version__}")
PY
}

if [ -n "${COMPAT_PYTHON:-}" ]; then
  check "$COMPAT_PYTHON"
fi

for version in 3.10 3.12; do
  python_bin=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/${version}*/bin/python 2>/dev/null | head -n1 || true)
  if [ -z "$python_bin" ]; then
    echo "compat: no pyenv Python $version found, skipped"; continue
  fi
  venv="${TMPDIR:-/tmp}/cervixautoseg-compat-$version"
  # (Re)make the venv unless it has a working pip (a half-made one, e.g. without ensurepip, has not).
  if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    "$python_bin" -m venv --clear "$venv"
  fi
  "$venv/bin/python" -c "import numpy" 2>/dev/null \
    || "$venv/bin/python" -m pip --disable-pip-version-check -q install numpy
  check "$venv/bin/python"
done
