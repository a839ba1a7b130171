"""``run_batch``: segment (and evaluate) every case of a cohort on Dask, then summarise.

::

    from CervixAutoSegLib.cohort import CaseSettings, run_batch
    run = run_batch("DATASET", "out/", CaseSettings(device="cpu", evaluate=True), workers=2)
    run.results            # one CaseResult per case, in the cohort's order
    run.exit_code          # 0 when no case failed

One Dask task per case (:func:`.tasks.run_case`), submitted all at once; the scheduler hands them to
workers as they become free.  A case's failure comes back as a result; a worker that dies while
holding a case (killed, out of memory) makes Dask run the case again elsewhere, and only a case
whose workers died more than ``distributed.scheduler.allowed-failures`` times is reported failed.
Finished case folders are skipped by the task itself (:mod:`.state`), so a rerun resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .cases import BatchCase, Cohort, discover_cohort, unusable_id
from .cluster import describe, open_client, require_distributed
from .summary import structure_names, write_summary
from .tasks import FAILED, CaseResult, CaseSettings, run_case

log = logging.getLogger(__name__)

EVALUATION_FOLDER = "evaluation"
ResultCallback = Callable[[CaseResult, int, int], None]
"""Told of each finished case: (its result, cases finished so far, cases in all)."""


@dataclasses.dataclass
class BatchRun:
    """The outcome of :func:`run_batch`."""

    cohort: Cohort
    results: list[CaseResult]
    structures: list[str]
    evaluated: bool
    cluster: str
    wall_s: float
    files: tuple[Path, ...]
    evaluation_dir: Path | None = None

    @property
    def failed(self) -> list[CaseResult]:
        return [result for result in self.results if result.status == FAILED]

    @property
    def exit_code(self) -> int:
        """0 when every case is ok or skipped, else 1 (one case's failure is not a bad input)."""
        return 1 if self.failed else 0


def run_batch(source: str | Path, out_dir: str | Path, settings: CaseSettings | None = None, *,
              scheduler: str | None = None, workers: int = 2, threads: int | None = None,
              client: Any = None, on_result: ResultCallback | None = None) -> BatchRun:
    """Segment every case of ``source`` into ``out_dir/<case id>/`` and write the summary there.

    Args:
        source: a dataset folder or a folder of cases (:mod:`.cases`).
        out_dir: output folder (created); ``batch.csv``, ``batch.json`` and, with
            ``settings.evaluate``, the cohort report in ``evaluation/`` go there too.
        settings: how each case is segmented (:class:`CaseSettings`); ``model="auto"`` on a dataset
            means the dataset's family.
        scheduler: address of a running Dask scheduler; None starts a local cluster.
        workers, threads: size of that local cluster (threads: torch threads per worker, default 1;
            on an existing cluster None means each worker's cores shared among its task threads).
        client: a connected ``distributed.Client`` to use instead (it stays open).
        on_result: progress callback, told of every finished case.

    Raises:
        InputError: bad ``source``, unusable ``out_dir``, unreachable scheduler.
        DependencyError: Dask distributed is not installed.
    """
    from ..outputs import check_output_folder

    require_distributed()  # before any work: the one line a Slicer Python without Dask gets
    cohort = discover_cohort(source, out_dir)
    out = check_output_folder(out_dir, "--out").absolute()
    settings = _settings_for(settings or CaseSettings(), cohort, scheduler, client, threads)
    started, started_utc = time.perf_counter(), _utc_now()
    results: dict[str, CaseResult] = {}
    runnable = _refuse_unusable_ids(cohort.cases, results, on_result)
    opened = contextlib.nullcontext(client) if client is not None else open_client(scheduler, workers, threads or 1)
    with opened as active:
        where = (describe(active, scheduler, settings.threads) if client is None
                 else describe(active, str(active.scheduler.address)))
        out.mkdir(parents=True, exist_ok=True)  # only now: an unreachable scheduler leaves no folder behind
        _run_cases(active, runnable, out, settings, results, on_result, len(cohort.cases))
    ordered = [results[case.id] for case in cohort.cases]
    evaluation_dir = write_evaluation(out, ordered, settings) if settings.evaluate else None
    names = structure_names(ordered, [structure.name for structure in cohort.structures])
    wall = time.perf_counter() - started
    run_facts = {"input": str(cohort.root), "input_kind": cohort.kind, "model": settings.model,
                 "device": settings.device, "cluster": where, "threads_per_case": settings.threads,
                 "started_utc": started_utc, "wall_s": round(wall, 3),
                 "evaluation": EVALUATION_FOLDER if evaluation_dir else None}
    files = write_summary(out, ordered, names, settings.evaluate, run_facts)
    return BatchRun(cohort, ordered, names, settings.evaluate, where, wall, files, evaluation_dir)


def _settings_for(settings: CaseSettings, cohort: Cohort, scheduler: str | None, client: Any,
                  threads: int | None) -> CaseSettings:
    """``settings`` completed from the cohort (a dataset's family) and the cluster (threads per case)."""
    from ..errors import InputError

    if threads is not None and threads < 1:
        raise InputError(f"--threads-per-worker must be at least 1, got {threads}")
    changes: dict[str, Any] = {}
    if settings.models_root:
        changes["models_root"] = str(Path(settings.models_root).absolute())  # as the input: for the workers
    if cohort.family and (settings.model or "auto").strip().lower() == "auto":
        changes["model"] = cohort.family  # a dataset says which family its images are for
    if cohort.family and not settings.family:
        changes["family"] = cohort.family
    local = scheduler is None and client is None
    changes["threads"] = (threads or 1) if local else threads
    return dataclasses.replace(settings, **changes)


def _refuse_unusable_ids(cases: Sequence[BatchCase], results: dict[str, CaseResult],
                         on_result: ResultCallback | None) -> list[BatchCase]:
    """Cases whose id cannot name an output folder fail here; returns the others."""
    runnable = []
    for case in cases:
        problem = unusable_id(case.id)
        if problem is None:
            runnable.append(case)
            continue
        results[case.id] = CaseResult(case.id, FAILED, reason=problem)
        if on_result is not None:
            on_result(results[case.id], len(results), len(cases))
    return runnable


def _run_cases(client: Any, cases: Sequence[BatchCase], out: Path, settings: CaseSettings,
               results: dict[str, CaseResult], on_result: ResultCallback | None, total: int) -> None:
    """One task per case; results as they finish.  An interrupt cancels what has not finished."""
    distributed = require_distributed()
    run_id = uuid.uuid4().hex[:8]  # keys unique per run: a shared scheduler may hold another run's cases
    futures = {client.submit(run_case, case, str(out), settings, key=f"cervixautoseg-{run_id}-{case.id}",
                             pure=False): case for case in cases}
    try:
        for future in distributed.as_completed(list(futures)):
            case = futures[future]
            results[case.id] = _result_of(future, case)
            if on_result is not None:
                on_result(results[case.id], len(results), total)
    except BaseException:
        client.cancel(list(futures))
        raise
    _sweep(client, out, [case.id for case in cases])


def _sweep(client: Any, out: Path, case_ids: list[str]) -> None:
    """Staging folders of killed attempts removed on every worker's host (:func:`.state.sweep_staging`);
    a worker that cannot do it (gone, no access) is only logged: the folders are hidden and the next
    run into that case folder removes them."""
    from .state import sweep_staging

    try:
        removed = client.run(sweep_staging, str(out), case_ids)
    except Exception as error:  # noqa: BLE001 - tidying up must not fail a finished batch
        log.info("could not sweep staging folders on the workers: %s", error)
        return
    if any(removed.values()):
        log.info("removed %d staging folder(s) of killed attempts", sum(removed.values()))


def _result_of(future: Any, case: BatchCase) -> CaseResult:
    """The task's CaseResult; a failed one when its workers kept dying or the task itself broke."""
    try:
        return future.result()
    except require_distributed().KilledWorker as error:
        tries = getattr(error, "allowed_failures", None)
        times = f" {tries + 1} times" if isinstance(tries, int) else ""
        return CaseResult(case.id, FAILED, reason=f"the worker process running it died{times} (killed, or out "
                                                  "of memory: try fewer --workers)")
    except Exception as error:  # noqa: BLE001 - e.g. a worker without this package installed
        text = " ".join(str(error).split())[:200]
        return CaseResult(case.id, FAILED, reason=f"the task could not run ({type(error).__name__}: {text})")


def write_evaluation(out: Path, results: Sequence[CaseResult], settings: CaseSettings) -> Path | None:
    """The cohort report (``evaluate``'s metrics.csv/json, summary.md/csv, boxplots.png) of the
    evaluated cases into ``out/evaluation/``; None (and a warning) when no case had a truth."""
    from ..evaluation import CasePair, structures_near, write_report

    evaluated = [result for result in results if result.evaluation]
    if not evaluated:
        log.warning("--evaluate: no case has a truth label map (or every such case failed); no cohort report")
        return None
    pairs = [CasePair(result.case_id, Path(result.truth), Path(result.prediction)) for result in evaluated]
    structures = structures_near(pairs[0].pred, settings.family or "ct")
    folder = out / EVALUATION_FOLDER
    write_report(folder, [item for result in evaluated for item in result.evaluation], pairs, structures,
                 settings.tolerance_mm)
    return folder


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def options_tuple(options: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Inference options as the hashable pairs :class:`CaseSettings` keeps (None values dropped)."""
    return tuple(sorted((name, value) for name, value in options.items() if value is not None))
