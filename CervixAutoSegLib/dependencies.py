"""Python packages the extension needs inside 3D Slicer: check, ask once, install safely.

Slicer already ships numpy, SimpleITK, VTK and pydicom; torch comes from the **PyTorch
extension** (``PyTorchUtils``), which picks the CUDA build that matches the installed
driver (or the CPU build).  Everything else is installed with pip at the exact
versions of :data:`REQUIREMENTS`, one package at a time with ``--no-deps``, so pip can
never pull a second numpy, SimpleITK or a multi-GB CUDA torch in as a dependency and
break Slicer.  That is also why the table lists the whole dependency closure
(e.g. scikit-image's imageio, tifffile, networkx, lazy_loader).

Nothing here runs at import time: the module panel loads instantly, and the check runs
when the user first clicks Auto-contour.  This module imports ``slicer`` only inside
the functions that install.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import socket
import subprocess
from collections.abc import Callable, Iterable, Sequence

from .errors import DependencyError

__all__ = ["DependencyError"]  # re-exported: the module panel catches it from here

log = logging.getLogger(__name__)

MINIMUM_SLICER = (5, 10)
"""Oldest supported 3D Slicer.  Slicer 5.10 ships Python 3.12; 5.8 ships Python 3.9, which the
package cannot run (it needs 3.10: ``itertools.pairwise`` in report.py and on every CT run) and
for which scipy 1.14 and networkx 3.3 have no builds.  The module refuses an older Slicer when it
loads (CervixAutoSeg.py keeps its own copy of this number: it checks before importing the package)."""
SUPPORTED_PYTHONS = ((3, 10), (3, 11), (3, 12))
"""CPython versions every pin of :data:`REQUIREMENTS` has wheels for (Slicer 5.10: 3.12;
the command line: 3.10-3.12)."""

PYPI_HOST = "pypi.org"
HTTPS_PORT = 443
ONLINE_CHECK_TIMEOUT_SECONDS = 3.0
TORCH_REQUIREMENT = ">=2.4.1"
"""torch versions the networks run with (passed to PyTorchUtils)."""

PROTECTED = frozenset({"torch", "numpy", "simpleitk", "vtk"})
"""Distributions that belong to Slicer or to the PyTorch extension: never pip-installed here."""


@dataclasses.dataclass(frozen=True)
class Requirement:
    """One distribution: the module that proves it is there, and the version to install."""

    module: str
    distribution: str
    version: str

    @property
    def pip_argument(self) -> str:
        return f"{self.distribution}=={self.version}"


REQUIREMENTS: tuple[Requirement, ...] = (
    # Our direct dependencies.
    Requirement("scipy", "scipy", "1.14.1"),
    Requirement("skimage", "scikit-image", "0.24.0"),
    Requirement("nrrd", "pynrrd", "1.1.1"),
    Requirement("matplotlib", "matplotlib", "3.9.2"),  # evaluation and review plots
    Requirement("PIL", "pillow", "10.4.0"),  # preview.png (scalable built-in font: 10.1 or later)
    Requirement("pydicom", "pydicom", "2.4.4"),
    Requirement("monai", "monai", "1.5.2"),  # PocketNet (DynUNet) and sliding-window inference
    # Their dependencies (installed explicitly because every install is --no-deps).
    Requirement("imageio", "imageio", "2.35.1"),
    Requirement("tifffile", "tifffile", "2024.8.30"),
    Requirement("networkx", "networkx", "3.3"),
    Requirement("lazy_loader", "lazy_loader", "0.4"),
    Requirement("packaging", "packaging", "24.1"),
    Requirement("typing_extensions", "typing_extensions", "4.12.2"),
    Requirement("contourpy", "contourpy", "1.3.0"),
    Requirement("cycler", "cycler", "0.12.1"),
    Requirement("fontTools", "fonttools", "4.54.1"),
    Requirement("kiwisolver", "kiwisolver", "1.4.7"),
    Requirement("pyparsing", "pyparsing", "3.1.4"),
    Requirement("dateutil", "python-dateutil", "2.9.0.post0"),
    Requirement("six", "six", "1.16.0"),
)
"""Versions with wheels for CPython 3.10-3.12 (:data:`SUPPORTED_PYTHONS`; Linux, Windows, macOS
x86_64 and arm64) that accept numpy 1.26 and 2.x (Slicer 5.10 ships numpy 2.0.2).  Recorded and
re-checked against PyPI by Testing/test_slicer_support.py."""

SLICER_PROVIDED = ("numpy", "SimpleITK", "vtk", "slicer")
"""Modules Slicer itself provides (checked, never installed)."""


def is_importable(module: str) -> bool:
    """True when ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@dataclasses.dataclass(frozen=True)
class InstallPlan:
    """What is missing and how it will be installed."""

    torch_missing: bool
    packages: tuple[Requirement, ...]
    slicer_missing: tuple[str, ...] = ()

    @property
    def needed(self) -> bool:
        return self.torch_missing or bool(self.packages)

    def pip_commands(self) -> list[str]:
        """One ``pip install`` argument string per package: pinned, ``--no-deps``."""
        commands = []
        for requirement in self.packages:
            if requirement.distribution.lower() in PROTECTED:
                raise ValueError(f"{requirement.distribution} must not be installed with pip here")
            commands.append(f"{requirement.pip_argument} --no-deps")
        return commands

    def question(self) -> str:
        """The one question asked before anything is installed."""
        lines = ["CervixAutoSeg needs Python packages that are not installed yet:"]
        if self.torch_missing:
            lines.append("  - PyTorch, through the PyTorch extension (GPU build if a supported NVIDIA driver is found)")
        if self.packages:
            lines.append("  - " + ", ".join(r.pip_argument for r in self.packages))
        lines.append("They are downloaded from the internet (about 0.3-3 GB with PyTorch) and installed into "
                     "Slicer's Python; Slicer's own numpy and SimpleITK are not touched. Install now?")
        return "\n".join(lines)


def plan(importable: Callable[[str], bool] | None = None,
         requirements: Iterable[Requirement] = REQUIREMENTS) -> InstallPlan:
    """What :func:`install` would do on this Python (``importable``: :func:`is_importable` when None)."""
    importable = importable or is_importable
    return InstallPlan(
        torch_missing=not importable("torch"),
        packages=tuple(r for r in requirements if not importable(r.module)),
        slicer_missing=tuple(m for m in SLICER_PROVIDED if not importable(m)),
    )


def online(host: str = PYPI_HOST, port: int = HTTPS_PORT, timeout: float = ONLINE_CHECK_TIMEOUT_SECONDS) -> bool:
    """True when ``host:port`` accepts a connection (a cheap "can pip download?" check)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def offline_message(install_plan: InstallPlan) -> str:
    names = (["torch"] if install_plan.torch_missing else []) + [r.pip_argument for r in install_plan.packages]
    return (f"Cannot reach {PYPI_HOST}, so the missing packages cannot be downloaded ({', '.join(names)}). "
            "Connect this computer to the internet and try again, or install them offline with Slicer's "
            "PythonSlicer: 'PythonSlicer -m pip install --no-deps <downloaded wheel files>'.")


def install(install_plan: InstallPlan, *,
            pip_install: Callable[[str], None] | None = None,
            install_torch: Callable[[], object] | None = None,
            is_online: Callable[[], bool] | None = None) -> None:
    """Install what ``install_plan`` lists (ask the user *before* calling this).

    ``pip_install`` defaults to ``slicer.util.pip_install``, ``install_torch`` to the PyTorch
    extension's installer and ``is_online`` to :func:`online`; all are injectable for tests.
    A failing installer raises a one-line :class:`DependencyError`.
    """
    if not install_plan.needed:
        return
    if install_plan.slicer_missing:
        version = ".".join(map(str, MINIMUM_SLICER))
        raise DependencyError(f"this Slicer lacks {', '.join(install_plan.slicer_missing)}; use Slicer {version} or later")
    if not (is_online or online)():
        raise DependencyError(offline_message(install_plan))
    if install_plan.torch_missing:
        _run_installer("PyTorch (through the PyTorch extension)", install_torch or _install_torch_with_extension)
    if install_plan.packages:
        pip = pip_install or _slicer_pip_install()
        for requirement, command in zip(install_plan.packages, install_plan.pip_commands()):
            _run_installer(requirement.pip_argument, lambda command=command: pip(command))


def _run_installer(what: str, installer: Callable[[], object]) -> None:
    """Run one installer; its failure becomes a one-line DependencyError naming ``what``.

    ``slicer.util.pip_install`` and PyTorchUtils' ``installTorch`` report a failed pip with
    ``CalledProcessError``, whose text is the whole command line; its output already went to
    Slicer's Python console, so the status line points there.
    """
    try:
        installer()
    except subprocess.CalledProcessError as error:
        raise DependencyError(f"Installing {what} failed (pip exit status {error.returncode}; its output is in "
                              "the Python console). Click Auto-contour to try again.") from error
    except OSError as error:  # e.g. PythonSlicer or the disk missing
        raise DependencyError(f"Installing {what} failed: {error}. Click Auto-contour to try again.") from error


def _slicer_pip_install() -> Callable[[str], None]:
    import slicer.util

    return slicer.util.pip_install


def _install_torch_with_extension() -> object:
    """torch through ``PyTorchUtils`` (CUDA build matched to the driver); DependencyError if unavailable."""
    try:
        import PyTorchUtils
    except ImportError:
        raise DependencyError(
            "the PyTorch extension is not installed: install 'PyTorch' from the Extensions Manager, "
            "restart Slicer and try again"
        ) from None
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if logic.torchInstalled():
        return logic.torch
    torch = logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
    if torch is None:
        raise DependencyError("PyTorch could not be installed; see the PyTorch module for details")
    return torch


def one_line(error: BaseException) -> str:
    """The status-line text of an install failure: its first line, never a traceback."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    return text if isinstance(error, DependencyError) else f"Installing failed: {type(error).__name__}: {text}"


def not_installed_message(install_plan: InstallPlan) -> str:
    """Why something that needs the packages (the self-test) cannot run without asking: one line."""
    names = (["torch"] if install_plan.torch_missing else []) + [r.distribution for r in install_plan.packages]
    return f"{', '.join(names)} not installed; click Auto-contour once to install them."


def missing_summary(names: Sequence[str]) -> str:
    """Status-line text when the user declined the installation."""
    return "Not run: missing " + ", ".join(names) + " (restart Slicer or reload the module to be asked again)."


class InstallSession:
    """The "ask once" policy of the module panel, GUI-free.

    ``ask`` shows the question and returns the user's answer (``slicer.util.confirmOkCancelDisplay``
    in Slicer).  After a "no", later runs report what is missing without asking again, until
    the user explicitly asks to install (:meth:`reset`).  A failed installation is not a "no":
    its one-line reason is returned and the next run offers the installation again.
    ``planner`` and ``installer`` default to :func:`plan` and :func:`install` (looked up when
    called).
    """

    def __init__(self, ask: Callable[[str], bool], *,
                 planner: Callable[[], InstallPlan] | None = None,
                 installer: Callable[[InstallPlan], None] | None = None):
        self._ask = ask
        self._planner = planner or (lambda: plan())
        self._installer = installer or (lambda install_plan: install(install_plan))
        self.asked = False
        self.installed = False
        """True once this session installed something (the caller re-detects devices, then clears it)."""

    def ready(self) -> tuple[bool, str]:
        """(can the run start, status text when it cannot)."""
        install_plan = self._planner()
        if not install_plan.needed:
            return True, ""
        names = (["torch"] if install_plan.torch_missing else []) + [r.distribution for r in install_plan.packages]
        if self.asked:
            return False, missing_summary(names)
        self.asked = True
        if not self._ask(install_plan.question()):
            return False, missing_summary(names)
        try:
            self._installer(install_plan)
        except Exception as error:  # pip/PyTorchUtils failures of any kind must not escape the click
            # A failed install is not a "no": the next click plans again (what did install is no
            # longer missing) and offers the rest.
            self.asked = False
            if not isinstance(error, DependencyError):
                log.exception("installing %s failed", ", ".join(names))
            return False, one_line(error)
        self.installed = True
        return True, ""

    def reset(self) -> None:
        self.asked = False
