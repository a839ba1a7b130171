#!/usr/bin/env bash
# Byte-compile every Python file and import the package (plus its lazily imported
# pure-numpy modules) under each Python that Slicer versions ship (3.10-3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
for version in 3.10 3.12; do
  python_bin=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/${version}*/bin/python 2>/dev/null | head -n1 || true)
  if [ -z "$python_bin" ]; then
    echo "compat: no Python $version found, skipped"; continue
  fi
  venv="${TMPDIR:-/tmp}/cervixautoseg-compat-$version"
  [ -x "$venv/bin/python" ] || "$python_bin" -m venv "$venv"
  "$venv/bin/python" -m pip --disable-pip-version-check -q install numpy
  "$venv/bin/python" -m compileall -q -f CervixAutoSegLib CervixAutoSeg Testing >/dev/null
  "$venv/bin/python" - <<'PY'
import sys
sys.path.insert(0, ".")
import CervixAutoSegLib, CervixAutoSegLib.volume, CervixAutoSegLib.structures, CervixAutoSegLib.cli
# Building the parser imports every sub-command module: they must not need heavy packages at import.
CervixAutoSegLib.cli.build_parser()
print(f"compat: Python {sys.version.split()[0]} compiles and imports CervixAutoSegLib {CervixAutoSegLib.__version__}")
PY
done
