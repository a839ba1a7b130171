"""Which Slicer the module supports (issue 12, item 1): 5.10 and later, i.e. Python 3.12 inside Slicer.

* The module file refuses an older Slicer with one line when it loads, proven under a real
  Python 3.9 interpreter (Slicer 5.8's) with nothing but the GUI stand-ins installed.
* Every pinned package has wheels for CPython 3.10-3.12 (recorded below; re-checked against
  PyPI when it is reachable).
* The README says so.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from CervixAutoSegLib import dependencies

ROOT = Path(__file__).resolve().parents[1]
MODULE_FILE = ROOT / "CervixAutoSeg" / "CervixAutoSeg.py"
README = ROOT / "README.md"
SLICER_58_PYTHON = (3, 9)
"""3D Slicer 5.8.x ships Python 3.9.10 (SuperBuild/External_python.cmake at v5.8.0, v5.8.1)."""


# ------------------------------------------------------------------ the module under Slicer 5.8's Python
def python39() -> str | None:
    """A CPython 3.9 interpreter: $CERVIXAUTOSEG_PYTHON39, python3.9 on PATH, or pyenv's."""
    candidates = [os.environ.get("CERVIXAUTOSEG_PYTHON39", ""), shutil.which("python3.9") or ""]
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(os.path.join(root, "versions", "3.9*", "bin", "python")))
    for candidate in filter(None, candidates):
        try:
            version = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                     capture_output=True, text=True, timeout=30, check=False).stdout.strip()
        except OSError:
            continue
        if version == "(3, 9)":
            return candidate
    return None


LOAD_UNDER_OLD_SLICER = textwrap.dedent(
    """
    import logging, sys, types
    sys.path.insert(0, sys.argv[1])
    import slicer_gui_stubs as stubs
    logging.basicConfig(format="%(levelname)s %(message)s", stream=sys.stderr)
    slicer = types.ModuleType("slicer")
    sys.modules["slicer"] = slicer
    version = tuple(int(part) for part in sys.argv[3].split("."))
    gui = stubs.SlicerGui(stubs.Patch(), slicer, sys.argv[2], version=version)
    module = gui.load_module()
    parent = stubs.ModuleParent()
    module.CervixAutoSeg(parent)
    widget = module.CervixAutoSegWidget(parent)
    widget.setup()
    widget.enter()
    widget.exit()
    print("panel:", " | ".join(w.text for w in widget.layout.widgets))
    print("package imported:", any(name.split(".")[0] == "CervixAutoSegLib" for name in sys.modules))
    """
)


@pytest.mark.parametrize("slicer_version", ["5.8", "5.10"])
def test_under_slicer_58s_python_the_module_loads_and_refuses_with_one_line(slicer_version):
    """The module file itself runs on Python 3.9 far enough to say, in one line, that it needs Slicer 5.10."""
    interpreter = python39()
    if interpreter is None:
        pytest.skip("no Python 3.9 interpreter (set CERVIXAUTOSEG_PYTHON39, or install one with pyenv)")
    result = subprocess.run([interpreter, "-c", LOAD_UNDER_OLD_SLICER, str(Path(__file__).parent), str(MODULE_FILE),
                             slicer_version], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    line = (f"CervixAutoSeg needs 3D Slicer 5.10 or later (Python 3.10+); this is Slicer {slicer_version} with "
            "Python 3.9: install a newer 3D Slicer.")
    assert result.stderr.splitlines() == [f"ERROR {line}"]  # exactly one line, no traceback
    assert result.stdout.splitlines() == [f"panel: {line}", "package imported: False"]


def test_the_module_file_is_python_39_syntax():
    """Slicer 5.8 must be able to read the file to refuse it (no match statements, no 3.10-only syntax)."""
    import ast

    ast.parse(MODULE_FILE.read_text(encoding="utf-8"), feature_version=SLICER_58_PYTHON)


# ------------------------------------------------------------------ pinned packages
PINNED_WHEELS = {
    # pip argument: (wheel tags found on PyPI, Requires-Python of that release)
    "scipy==1.14.1": (("cp310", "cp311", "cp312"), ">=3.10"),
    "scikit-image==0.24.0": (("cp310", "cp311", "cp312"), ">=3.9"),
    "pynrrd==1.1.1": (("py3",), ">=3.7"),
    "matplotlib==3.9.2": (("cp310", "cp311", "cp312"), ">=3.9"),
    "pydicom==2.4.4": (("py3",), ">=3.7"),
    "monai==1.5.2": (("py3",), ">=3.9"),
    "imageio==2.35.1": (("py3",), ">=3.8"),
    "tifffile==2024.8.30": (("py3",), ">=3.9"),
    "networkx==3.3": (("py3",), ">=3.10"),
    "lazy_loader==0.4": (("py3",), ">=3.7"),
    "pillow==10.4.0": (("cp310", "cp311", "cp312"), ">=3.8"),
    "packaging==24.1": (("py3",), ">=3.8"),
    "typing_extensions==4.12.2": (("py3",), ">=3.8"),
    "contourpy==1.3.0": (("cp310", "cp311", "cp312"), ">=3.9"),
    "cycler==0.12.1": (("py3",), ">=3.8"),
    "fonttools==4.54.1": (("cp310", "cp311", "cp312"), ">=3.8"),
    "kiwisolver==1.4.7": (("cp310", "cp311", "cp312"), ">=3.8"),
    "pyparsing==3.1.4": (("py3",), ">=3.6.8"),
    "python-dateutil==2.9.0.post0": (("py2.py3",), "!=3.0.*,!=3.1.*,!=3.2.*,>=2.7"),
    "six==1.16.0": (("py2.py3",), "!=3.0.*,!=3.1.*,!=3.2.*,>=2.7"),
}
"""What ``pip install --dry-run --no-deps --only-binary=:all: --python-version {3.10,3.11,3.12}
--platform {manylinux2014_x86_64,win_amd64,macosx_10_13_x86_64,macosx_12_0_arm64}`` chose on
2026-12-02 for every pin of dependencies.REQUIREMENTS (all 12 combinations resolved)."""
PLATFORMS = ("manylinux2014_x86_64", "win_amd64", "macosx_10_13_x86_64", "macosx_12_0_arm64")


def python_tag(version: tuple[int, int]) -> str:
    return f"cp{version[0]}{version[1]}"


def test_every_pin_was_checked_for_wheels_on_the_supported_pythons():
    """A changed pin must be re-checked (and recorded here) before Slicer users get it."""
    pins = {requirement.pip_argument for requirement in dependencies.REQUIREMENTS}
    assert pins == set(PINNED_WHEELS), f"re-check and record: {sorted(pins ^ set(PINNED_WHEELS))}"
    for pin, (tags, requires_python) in PINNED_WHEELS.items():
        for version in dependencies.SUPPORTED_PYTHONS:
            assert ".".join(map(str, version)) in SpecifierSet(requires_python), (pin, version)
            if not any(tag.startswith("py") for tag in tags):
                assert python_tag(version) in tags, (pin, version)
    assert dependencies.SUPPORTED_PYTHONS[-1] == (3, 12)  # Slicer 5.10's Python


@pytest.mark.slow
def test_pypi_still_has_those_wheels(tmp_path):
    """Resolve the pins as Slicer's pip would, for Slicer 5.10's Python on every platform and 3.10/3.11 on Linux."""
    if not dependencies.online():
        pytest.skip(f"{dependencies.PYPI_HOST} is not reachable")
    pins = sorted(PINNED_WHEELS)
    combos = [("3.12", platform) for platform in PLATFORMS] + [("3.10", PLATFORMS[0]), ("3.11", PLATFORMS[0])]
    for version, platform in combos:
        report = tmp_path / f"{version}-{platform}.json"
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps", "--only-binary=:all:",
             "--python-version", version, "--platform", platform, "--target", str(tmp_path / "target"),
             "--report", str(report), *pins], capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode == 0, f"{version} {platform}: {result.stderr[-2000:]}"
        chosen = {f"{item['metadata']['name']}=={item['metadata']['version']}"
                  for item in json.loads(report.read_text())["install"]}
        assert {pin.lower().replace("_", "-") for pin in chosen} == {pin.lower().replace("_", "-") for pin in pins}


# ------------------------------------------------------------------ README
def test_readme_names_slicer_510_or_later_and_never_offers_58():
    text = README.read_text(encoding="utf-8")
    assert "5.8 or later" not in text
    assert len(re.findall(r"3D Slicer 5\.10 or later", text)) >= 2  # both ways of installing
    assert "Python 3.12" in text
