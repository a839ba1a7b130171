"""The Slicer module's files agree with each other: .ui ↔ widget code, CMake lists ↔ files on disk,
imports ↔ the dependency table; and the dependency installer never lets pip touch Slicer's packages."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from xml.etree import ElementTree

import pytest

from CervixAutoSegLib import dependencies

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "CervixAutoSeg"
MODULE_FILE = MODULE_DIR / "CervixAutoSeg.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "CervixAutoSeg.ui"
ICON_FILE = MODULE_DIR / "Resources" / "Icons" / "CervixAutoSeg.png"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
REVIEW_MODULE_FILE = MODULE_DIR / "CervixAutoSegReview.py"
REVIEW_UI_FILE = MODULE_DIR / "Resources" / "UI" / "CervixAutoSegReview.ui"
ICON_SIZE = (128, 128)


# ------------------------------------------------------------------ helpers
def cmake_lists(path: Path) -> dict[str, list[str]]:
    """``set(NAME a b c)`` blocks of a CMake file → {NAME: [a, b, c]} (comments removed)."""
    text = re.sub(r"#[^\n]*", "", path.read_text(encoding="utf-8"))
    return {name: body.split() for name, body in re.findall(r"set\(\s*(\w+)\s+(.*?)\)", text, flags=re.DOTALL)}


def expand(items: list[str], module_name: str = "CervixAutoSeg") -> list[str]:
    return [item.replace("${MODULE_NAME}", module_name) for item in items]


def ui_widget_names(ui_file: Path = UI_FILE) -> set[str]:
    tree = ElementTree.parse(ui_file)
    return {element.get("name") for element in tree.iter("widget")}


def tracked_files(prefix: str) -> list[str]:
    """Files git tracks under ``prefix`` (what a release ships); skip outside a git checkout."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(["git", "ls-files", prefix], cwd=ROOT, capture_output=True, text=True, check=True)
    return [line for line in result.stdout.split() if (ROOT / line).exists()]


# ------------------------------------------------------------------ widget ↔ .ui
def test_every_ui_widget_the_code_uses_exists_in_the_ui_file():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))
    assert used, "the widget binds no widgets?"
    missing = used - ui_widget_names()
    assert not missing, f"CervixAutoSeg.py uses widgets the .ui lacks: {sorted(missing)}"


def test_ui_parameter_bindings_are_fields_of_the_parameter_node():
    tree = ElementTree.parse(UI_FILE)
    bound = {
        prop.find("string").text
        for prop in tree.iter("property") if prop.get("name") == "SlicerParameterName"
    }
    module = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    wrapper = next(node for node in module.body
                   if isinstance(node, ast.ClassDef) and node.name == "CervixAutoSegParameterNode")
    fields = {statement.target.id for statement in wrapper.body if isinstance(statement, ast.AnnAssign)}
    assert bound and bound <= fields, f"bound {sorted(bound)} but the parameter node has {sorted(fields)}"


def top_level_imports(module_file: Path) -> set[str]:
    module = ast.parse(module_file.read_text(encoding="utf-8"))
    top = set()
    for node in module.body:
        if isinstance(node, ast.Import):
            top |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            top.add(node.module)
    return top


THIN_IMPORTS = {"__future__", "logging", "os", "sys", "tempfile", "qt", "ctk", "vtk", "slicer",
                "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "slicer.util"}
"""What a module file may import at its top: stdlib + Slicer, so the module appears instantly in Slicer."""


def test_the_review_module_file_is_thin_and_binds_only_widgets_of_its_ui():
    assert top_level_imports(REVIEW_MODULE_FILE) <= THIN_IMPORTS
    module = ast.parse(REVIEW_MODULE_FILE.read_text(encoding="utf-8"))
    classes = {node.name for node in module.body if isinstance(node, ast.ClassDef)}
    assert {"CervixAutoSegReview", "CervixAutoSegReviewWidget", "CervixAutoSegReviewLogic",
            "CervixAutoSegReviewTest"} <= classes
    source = REVIEW_MODULE_FILE.read_text(encoding="utf-8")
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    used |= {name for name in re.findall(r'\("(\w+Button)", "\w+"\)', source)}  # GRADE_BUTTONS, via getattr
    missing = used - ui_widget_names(REVIEW_UI_FILE)
    assert len(used) > 20 and not missing, f"CervixAutoSegReview.py uses widgets its .ui lacks: {sorted(missing)}"
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}Review.py)" in MODULE_CMAKE.read_text()


def test_the_module_file_is_thin_and_loads_without_heavy_imports():
    """Top-level imports: stdlib + Slicer only, so the module appears instantly in Slicer."""
    allowed = THIN_IMPORTS
    module = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    top = set()
    for node in module.body:
        if isinstance(node, ast.Import):
            top |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            top.add(node.module)
    assert top <= allowed, f"heavy or unexpected top-level imports: {sorted(top - allowed)}"
    classes = {node.name for node in module.body if isinstance(node, ast.ClassDef)}
    assert {"CervixAutoSeg", "CervixAutoSegWidget", "CervixAutoSegLogic", "CervixAutoSegTest"} <= classes


def test_icon_is_a_128_pixel_png():
    data = ICON_FILE.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == ICON_SIZE


# ------------------------------------------------------------------ CMake ↔ files
def test_top_level_cmake_builds_the_module_and_depends_on_pytorch():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"?PyTorch"?\)', text)
    assert re.search(r"add_subdirectory\(CervixAutoSeg\)", text)
    assert "find_package(Slicer REQUIRED)" in text


def test_module_cmake_lists_every_module_script_and_resource():
    lists = cmake_lists(MODULE_CMAKE)
    scripts = set(expand(lists["MODULE_PYTHON_SCRIPTS"]))
    resources = set(expand(lists["MODULE_PYTHON_RESOURCES"]))
    on_disk_scripts = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.glob("*.py")}
    on_disk_resources = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*")
                         if p.is_file()}
    assert scripts == on_disk_scripts
    assert resources == on_disk_resources
    assert "slicerMacroBuildScriptedModule" in MODULE_CMAKE.read_text() and "WITH_GENERIC_TESTS" in MODULE_CMAKE.read_text()
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in MODULE_CMAKE.read_text()
    assert (MODULE_DIR / "Testing" / "CMakeLists.txt").is_file()


def test_module_cmake_lists_every_tracked_package_file_and_shared_resource():
    lists = cmake_lists(MODULE_CMAKE)
    scripts, resources = set(lists["LIB_PYTHON_SCRIPTS"]), set(lists["LIB_PYTHON_RESOURCES"])
    package = [p for p in tracked_files("CervixAutoSegLib") if "__pycache__" not in p]
    shared = tracked_files("Resources")
    missing_scripts = sorted(p for p in package if p.endswith(".py") and p not in scripts)
    missing_resources = sorted(p for p in package + shared if not p.endswith(".py") and p not in resources)
    fix = "; run python CervixAutoSeg/Testing/update_cmake_lists.py"
    assert not missing_scripts, f"not in LIB_PYTHON_SCRIPTS of {MODULE_CMAKE}: {missing_scripts}{fix}"
    assert not missing_resources, f"not in LIB_PYTHON_RESOURCES of {MODULE_CMAKE}: {missing_resources}{fix}"
    gone = sorted(p for p in scripts | resources if not (ROOT / p).is_file())
    assert not gone, f"listed in {MODULE_CMAKE} but missing: {gone}{fix}"
    assert "Resources/CervixAutoSeg.term.json" in resources


# ------------------------------------------------------------------ dependencies
def third_party_imports() -> set[str]:
    """Top-level names of every non-stdlib, non-relative import in CervixAutoSegLib."""
    names = set()
    for path in (ROOT / "CervixAutoSegLib").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name != "CervixAutoSegLib"}


def test_every_third_party_import_is_provided_by_slicer_pytorch_or_the_requirement_table():
    covered = {r.module for r in dependencies.REQUIREMENTS} | set(dependencies.SLICER_PROVIDED) | {"torch"}
    slicer_only = {"PyTorchUtils", "qt", "ctk"}  # exist only inside Slicer, imported lazily
    missing = third_party_imports() - covered - slicer_only
    assert not missing, f"imports with no install route inside Slicer: {sorted(missing)}"


def test_requirements_are_pinned_and_never_slicer_or_pytorch_packages():
    for requirement in dependencies.REQUIREMENTS:
        assert re.fullmatch(r"[\w.]+", requirement.version), requirement
        assert requirement.distribution.lower() not in dependencies.PROTECTED
    with pytest.raises(ValueError):
        dependencies.InstallPlan(False, (dependencies.Requirement("numpy", "numpy", "2.0.0"),)).pip_commands()


def test_plan_installs_only_what_is_missing_pinned_without_dependencies():
    present = {"numpy", "SimpleITK", "vtk", "slicer", "scipy", "pydicom", "PIL", "packaging"}
    install_plan = dependencies.plan(importable=lambda module: module in present)
    assert install_plan.torch_missing and install_plan.needed
    names = [r.distribution for r in install_plan.packages]
    assert "scipy" not in names and "pydicom" not in names and "scikit-image" in names
    commands = install_plan.pip_commands()
    assert all(command.endswith(" --no-deps") and "==" in command for command in commands)
    assert not any(re.match(r"(torch|numpy|simpleitk)\b", command, re.IGNORECASE) for command in commands)
    assert "PyTorch extension" in install_plan.question() and "scikit-image==" in install_plan.question()


def test_install_runs_torch_first_then_each_pinned_package_once():
    calls = []
    install_plan = dependencies.plan(importable=lambda module: module not in ("torch", "nrrd", "skimage"))
    dependencies.install(install_plan, pip_install=lambda c: calls.append(("pip", c)),
                         install_torch=lambda: calls.append(("torch", "")), is_online=lambda: True)
    assert calls[0] == ("torch", "")
    assert [c for kind, c in calls[1:]] == [r.pip_argument + " --no-deps" for r in install_plan.packages]


def test_install_offline_says_so_and_installs_nothing():
    calls = []
    install_plan = dependencies.plan(importable=lambda module: module != "skimage")
    with pytest.raises(dependencies.DependencyError, match="Cannot reach pypi.org"):
        dependencies.install(install_plan, pip_install=calls.append, install_torch=lambda: calls.append("torch"),
                             is_online=lambda: False)
    assert calls == []


def test_nothing_to_install_does_nothing():
    everything = dependencies.plan(importable=lambda module: True)
    assert not everything.needed
    dependencies.install(everything, pip_install=pytest.fail, install_torch=pytest.fail, is_online=pytest.fail)


def test_install_session_asks_once_installs_on_yes_and_remembers_a_no():
    missing = dependencies.plan(importable=lambda module: module != "skimage")
    questions, installs = [], []

    def ask(answer):
        return lambda question: questions.append(question) or answer

    declined = dependencies.InstallSession(ask(False), planner=lambda: missing, installer=installs.append)
    assert declined.ready() == (False, dependencies.missing_summary(["scikit-image"]))
    assert declined.ready()[0] is False and len(questions) == 1 and installs == []

    accepted = dependencies.InstallSession(ask(True), planner=lambda: missing, installer=installs.append)
    assert not accepted.installed
    assert accepted.ready() == (True, "") and installs == [missing] and accepted.installed

    def offline(install_plan):
        raise dependencies.DependencyError(dependencies.offline_message(install_plan))

    failing = dependencies.InstallSession(ask(True), planner=lambda: missing, installer=offline)
    ready, message = failing.ready()
    assert not ready and message.startswith("Cannot reach pypi.org")

    nothing = dependencies.InstallSession(pytest.fail, planner=lambda: dependencies.plan(importable=lambda m: True))
    assert nothing.ready() == (True, "")


# ------------------------------------------------------------------ install failures (issue 12, item 2)
def calledProcessError(returncode=1):
    """What slicer.util.pip_install raises when pip fails (slicer/util.py logProcessOutput, v5.10.0)."""
    return subprocess.CalledProcessError(returncode, ["/opt/Slicer/bin/PythonSlicer", "-m", "pip", "install", "x"],
                                         output="ERROR: No matching distribution\nfound for x")


@pytest.fixture
def failing_slicer_pip(monkeypatch):
    """slicer.util.pip_install raising CalledProcessError; records each call."""
    calls = []

    def pip_install(requirements):
        calls.append(requirements)
        raise calledProcessError()

    util = types.ModuleType("slicer.util")
    util.pip_install = pip_install
    slicer = types.ModuleType("slicer")
    slicer.util = util
    monkeypatch.setitem(sys.modules, "slicer", slicer)
    monkeypatch.setitem(sys.modules, "slicer.util", util)
    monkeypatch.setattr(dependencies, "online", lambda: True)
    return calls


@pytest.fixture
def failing_pytorch_extension(monkeypatch):
    """PyTorchUtils whose installTorch fails in pip (it installs through slicer.util.pip_install)."""
    calls = []

    class PyTorchUtilsLogic:
        def torchInstalled(self):
            return False

        def installTorch(self, askConfirmation=False, torchVersionRequirement=""):
            calls.append(torchVersionRequirement)
            raise calledProcessError(2)

    module = types.ModuleType("PyTorchUtils")
    module.PyTorchUtilsLogic = PyTorchUtilsLogic
    monkeypatch.setitem(sys.modules, "PyTorchUtils", module)
    monkeypatch.setattr(dependencies, "online", lambda: True)
    return calls


def test_a_failing_pip_install_is_one_status_line_and_the_next_click_offers_it_again(failing_slicer_pip, monkeypatch):
    monkeypatch.setattr(dependencies, "is_importable", lambda module: module != "skimage")
    questions = []
    session = dependencies.InstallSession(lambda question: questions.append(question) or True)
    ready, message = session.ready()  # CalledProcessError escaped from here before
    assert not ready and "\n" not in message
    assert message == ("Installing scikit-image==0.24.0 failed (pip exit status 1; its output is in the Python "
                       "console). Click Auto-contour to try again.")
    assert failing_slicer_pip == ["scikit-image==0.24.0 --no-deps"] and not session.installed
    ready, message = session.ready()  # asked again (before: "Not run: missing ..." without asking)
    assert not ready and len(questions) == 2 and len(failing_slicer_pip) == 2


def test_a_failing_pytorch_extension_install_is_one_status_line(failing_pytorch_extension, monkeypatch):
    monkeypatch.setattr(dependencies, "is_importable", lambda module: module != "torch")
    session = dependencies.InstallSession(lambda question: True)
    ready, message = session.ready()
    assert not ready and message.startswith("Installing PyTorch (through the PyTorch extension) failed (pip exit "
                                            "status 2;")
    assert failing_pytorch_extension == [dependencies.TORCH_REQUIREMENT]
    assert session.ready()[0] is False and len(failing_pytorch_extension) == 2


def test_any_other_installer_failure_is_one_line_too():
    missing = dependencies.plan(importable=lambda module: module != "skimage")

    def broken(install_plan):
        raise RuntimeError("PythonSlicer executable not found\nTraceback ...")

    session = dependencies.InstallSession(lambda question: True, planner=lambda: missing, installer=broken)
    assert session.ready() == (False, "Installing failed: RuntimeError: PythonSlicer executable not found")
    assert session.asked is False


def test_declining_is_still_remembered():
    missing = dependencies.plan(importable=lambda module: module != "skimage")
    questions = []
    session = dependencies.InstallSession(lambda question: questions.append(question) and False,
                                          planner=lambda: missing, installer=pytest.fail)
    session.ready()
    session.ready()
    assert len(questions) == 1
