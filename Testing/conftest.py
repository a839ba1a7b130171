"""Shared pytest fixtures."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pathlib

import pytest

_INTERNAL_ERROR_LOGS = "CERVIXAUTOSEG_LOG_DIR"
"""CervixAutoSegLib.cli.LOG_DIR_ENV (not imported here: conftest stays import-light)."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report carries the internal-error logs its commands wrote (CI prints the
    failure, never the log files themselves)."""
    outcome = yield
    report = outcome.get_result()
    folder = getattr(item, "internal_error_log_folder", None)
    if report.failed and folder is not None:
        for log in sorted(pathlib.Path(folder).glob("*.log")):
            report.sections.append((f"internal-error log {log.name}", log.read_text(errors="replace")[-6000:]))


@pytest.fixture(autouse=True)
def internal_error_logs(request, tmp_path_factory, monkeypatch):
    """Each test's internal-error logs go to a folder of its own (a test may point them elsewhere)."""
    folder = tmp_path_factory.mktemp("internal-error-logs")
    monkeypatch.setenv(_INTERNAL_ERROR_LOGS, str(folder))
    request.node.internal_error_log_folder = folder
    return folder


@pytest.fixture(scope="module")
def models_root(tmp_path_factory) -> pathlib.Path:
    """A folder holding one randomly initialised CT model (``test_pipeline.write_random_ct_model``),
    made once per test module."""
    from test_pipeline import write_random_ct_model

    return write_random_ct_model(tmp_path_factory.mktemp("models"))
