"""The work of one case, as a Dask worker runs it: segment (unless already done), then evaluate.

:func:`run_case` is the task function of ``batch``: a module-level function of an installed
package, so Dask sends it to workers by reference.  It never raises for a problem of the case
itself (unreadable image, wrong modality, a file of the user's in the way): it returns a
:class:`CaseResult` with status ``failed`` and the one-line reason, so one bad case cannot stop
the others.  Only the death of the worker process escapes it, and Dask then runs the task again
on another worker (:mod:`.runner`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .cases import BatchCase

OK, SKIPPED, FAILED = "ok", "skipped", "failed"
STATUSES = (OK, SKIPPED, FAILED)
PACKAGE_LOGGER = __package__.split(".")[0]


@dataclasses.dataclass(frozen=True)
class CaseSettings:
    """What every case of a batch is segmented with (the ``segment`` options that apply to a cohort).

    ``threads``: intra-op threads of torch (and SimpleITK) while a case runs; None: the worker's
    cores divided among its task threads.  ``redo``: segment finished cases again.
    ``evaluate``: compare with the case's truth label map, when it has one.
    ``family``: model family whose structures name the truth labels when a prediction has no labels.json.
    """

    model: str = "auto"
    device: str = "auto"
    models_root: str | None = None
    options: tuple[tuple[str, Any], ...] = ()
    allow_non_t2: bool = False
    overwrite: bool = False
    redo: bool = False
    evaluate: bool = False
    family: str | None = None
    tolerance_mm: float = 2.0
    threads: int | None = 1


@dataclasses.dataclass
class CaseResult:
    """The outcome of one case: status, seconds this run spent on it, and what the summary shows."""

    case_id: str
    status: str
    seconds: float = 0.0
    reason: str = ""
    volumes_ml: dict[str, float] = dataclasses.field(default_factory=dict)
    dsc: dict[str, float | None] = dataclasses.field(default_factory=dict)
    model: str = ""
    worker: str = ""
    warnings: list[str] = dataclasses.field(default_factory=list)
    interrupted_attempts: int = 0
    """Staging folders of earlier attempts at this case whose process died (a killed worker), removed."""
    evaluation: list = dataclasses.field(default_factory=list)
    """:class:`~CervixAutoSegLib.evaluation.StructureResult` per structure (``--evaluate``)."""
    truth: str = ""
    prediction: str = ""
    detail: str = ""
    """Traceback of an internal error (a bug), for batch.json; empty otherwise."""


def run_case(case: BatchCase, out_dir: str, settings: CaseSettings) -> CaseResult:
    """Segment ``case`` into ``out_dir/<case id>/`` exactly as ``cervixautoseg segment --out`` would,
    unless a finished output is already there; then evaluate it when asked and possible."""
    started = time.perf_counter()
    folder = Path(out_dir) / case.id
    result = CaseResult(case.id, FAILED, worker=f"{socket.gethostname()}:{os.getpid()}")
    with _collected_warnings(result.warnings):
        try:
            _segment_or_skip(case, folder, settings, result)
            if settings.evaluate and case.labels is not None:
                _evaluate(case, folder, settings, result)
        except Exception as error:  # noqa: BLE001 - a case's failure must not end the batch
            result.status, result.reason, result.detail = FAILED, *_failure(error)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _segment_or_skip(case: BatchCase, folder: Path, settings: CaseSettings, result: CaseResult) -> None:
    """Skip a finished case folder (status ``skipped``), else run the pipeline into it (``ok``)."""
    from ..outputs import remove_stale_staging
    from ..pipeline import REPORT_FILE, segment
    from ..report import read_report
    from .state import incomplete_reason

    # What a dead attempt left (this host's only): counted, so the summary can say the case was retried.
    result.interrupted_attempts = len(remove_stale_staging(folder))
    reason = None if settings.redo else incomplete_reason(folder, settings.model)
    if settings.redo or reason is not None:
        _limit_threads(settings.threads)  # here, not earlier: a skipped case needs no torch
        outcome = segment(case.image, folder, model=settings.model, device=settings.device,
                          options=dict(settings.options), models_root=settings.models_root,
                          allow_non_t2=settings.allow_non_t2, overwrite=settings.overwrite)
        report, result.status = outcome.report, OK
    else:
        report, result.status = read_report(folder / REPORT_FILE) or {}, SKIPPED
    result.model = str((report.get("model") or {}).get("id", ""))
    result.volumes_ml = {entry["name"]: float(entry["volume_ml"]) for entry in report.get("structures", ())}
    result.warnings.extend(str(line) for line in report.get("warnings", ()) if str(line) not in result.warnings)


def _evaluate(case: BatchCase, folder: Path, settings: CaseSettings, result: CaseResult) -> None:
    """Per-structure metrics of the case's labels against its truth (:mod:`CervixAutoSegLib.evaluation`)."""
    from ..errors import InputError
    from ..evaluation import CasePair, evaluate_pair
    from .state import labels_file

    predicted = labels_file(folder)
    if predicted is None:
        raise InputError(f"no label map in {folder} to evaluate")
    try:
        pair = CasePair(case.id, case.labels, predicted, truth_status=case.truth_status)
        structures = evaluate_pair(pair, settings.family or "ct", settings.tolerance_mm)
    except InputError as error:
        raise InputError(f"evaluation: {error}") from None
    result.evaluation = structures
    result.truth, result.prediction = str(case.labels), str(predicted)
    result.dsc = {item.structure.name: _finite(item.comparison.dsc) for item in structures}


def _finite(value: float) -> float | None:
    """``value`` rounded, or None when it is NaN or infinite (JSON has no NaN)."""
    import math

    return round(float(value), 4) if math.isfinite(value) else None


def _failure(error: Exception) -> tuple[str, str]:
    """(one-line reason, traceback or '') of a case that failed with ``error``."""
    from ..errors import CervixAutoSegError, fixable_os_error

    if isinstance(error, CervixAutoSegError):
        return _one_line(str(error)) or type(error).__name__, ""
    fixable = fixable_os_error(error)
    if fixable is not None:
        return _one_line(str(fixable)), ""
    text = _one_line(str(error))[:200]
    return f"internal error ({type(error).__name__}: {text})", traceback.format_exc()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _limit_threads(threads: int | None) -> None:
    """Torch (and SimpleITK) use ``threads`` threads for this case: a worker's share of the cores,
    so that workers of one machine do not oversubscribe it."""
    import torch

    if threads is None:
        threads = _worker_share()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    with contextlib.suppress(ImportError, AttributeError):
        import SimpleITK

        SimpleITK.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _worker_share() -> int:
    """The cores this process may use divided by the task threads of its Dask worker (1 outside Dask)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    from ..errors import DependencyError
    from .cluster import require_distributed

    try:
        tasks = max(1, int(require_distributed().get_worker().state.nthreads))
    except (DependencyError, ValueError, AttributeError):  # not in a Dask worker
        tasks = 1
    return max(1, cores // tasks)


class _ThreadRecords(logging.Handler):
    """Keeps the messages of WARNING+ records of one thread: a worker may run several cases at once."""

    def __init__(self, sink: list[str]):
        super().__init__(logging.WARNING)
        self._sink, self._thread = sink, threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self._thread:
            message = _one_line(record.getMessage())
            if message not in self._sink:
                self._sink.append(message)


@contextlib.contextmanager
def _collected_warnings(sink: list[str]) -> Iterator[None]:
    """The package's warnings while a case runs go into its result (and the summary), not to the
    worker's stderr, where they would interleave between cases."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    handler = _ThreadRecords(sink)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
