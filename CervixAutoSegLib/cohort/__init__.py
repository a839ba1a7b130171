"""Cohorts: ``cervixautoseg batch`` — segment (and evaluate) every case of a dataset or a folder on Dask.

* :mod:`.cases` — which cases an input holds (dataset folder, case folders, image files).
* :mod:`.state` — whether a case's output folder is finished (so a rerun skips it).
* :mod:`.tasks` — :func:`~.tasks.run_case`, the work of one case on a Dask worker.
* :mod:`.cluster` — a local Dask cluster or an existing scheduler (Dask imported only there).
* :mod:`.runner` — :func:`~.runner.run_batch`: submit, follow, evaluate, summarise.
* :mod:`.summary` — progress lines, the summary table, ``batch.csv`` / ``batch.json``.

Importing this package does not import Dask or torch.
"""

from .cases import BatchCase, Cohort, discover_cohort
from .runner import BatchRun, run_batch
from .state import incomplete_reason
from .tasks import CaseResult, CaseSettings, run_case

__all__ = ["BatchCase", "BatchRun", "CaseResult", "CaseSettings", "Cohort", "discover_cohort",
           "incomplete_reason", "run_batch", "run_case"]
