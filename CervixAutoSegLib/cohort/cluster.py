"""Where the cases run: a local Dask cluster of worker processes, or an existing Dask scheduler.

Dask distributed is optional (the ``cohort`` extra; Slicer does not need it): it is imported only
here and only when a batch starts, and its absence is one line (:class:`DependencyError`).

Local cluster: ``workers`` processes, each running one case at a time (a CT case needs a few GB;
two at once in one process would only compete for the same cores) with ``threads`` torch threads.
BLAS/OpenMP thread counts are set to match in the workers' environment before they start, so the
workers of one machine use ``workers x threads`` cores, not ``workers x all``.  Each worker is
watched by a nanny process that starts it again when it dies; Dask gives the case it held to
another worker (up to ``distributed.scheduler.allowed-failures`` times, 3 by default).

Existing cluster (``--scheduler tcp://host:8786``): its workers must have this package installed
and see the input and output folders at the same paths (a shared file system).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from ..errors import DependencyError, InputError

CONNECT_TIMEOUT_S = 20
WORKER_WAIT_S = 60
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
INSTALL_HINT = "pip install 'cervixautoseg[cohort]' (distributed==2026.8.0)"


def require_distributed() -> ModuleType:
    """The ``distributed`` module; DependencyError (one line) when it is not installed.

    Every use of Dask in the package goes through here (and :func:`_dask`), by name rather than an
    ``import`` statement: Dask is the optional ``cohort`` extra, not one of the packages the Slicer
    module installs (:data:`CervixAutoSegLib.dependencies.REQUIREMENTS`, whose coverage of the
    package's ``import`` statements test_module_consistency checks).
    """
    try:
        return importlib.import_module("distributed")
    except ImportError:
        raise DependencyError(f"batch runs on Dask distributed, which is not installed here: {INSTALL_HINT}") from None


def _dask() -> ModuleType:
    """The ``dask`` module (installed with ``distributed``)."""
    require_distributed()
    return importlib.import_module("dask")


@contextlib.contextmanager
def open_client(scheduler: str | None = None, workers: int = 2, threads: int = 1) -> Iterator[Any]:
    """A connected ``distributed.Client``: to ``scheduler`` when given, else to a new local cluster of
    ``workers`` processes with ``threads`` threads each; cluster and client are closed afterwards."""
    distributed = require_distributed()
    if scheduler:
        client = _connect(distributed, scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    if workers < 1 or threads < 1:
        raise InputError(f"--workers and --threads-per-worker must be at least 1 (got {workers} and {threads})")
    dask = _dask()
    environment = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    environment.update({name: str(threads) for name in THREAD_VARIABLES})
    # The nannies live in this process and set their workers' environment in it at every (re)start.
    with environment_kept():
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environment}):
            cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                               dashboard_address=None, silence_logs=logging.ERROR)
        try:
            client = distributed.Client(cluster)
            try:
                yield client
            finally:
                client.close()
        finally:
            cluster.close()


@contextlib.contextmanager
def environment_kept() -> Iterator[None]:
    """A local cluster's nannies (in this process) put their workers' settings (OMP_NUM_THREADS=1,
    PYTHONHASHSEED, ...) into this process's ``os.environ`` whenever they start a worker; put it back
    when the cluster is closed, so that a process this one starts later (a Slicer job, a benchmark
    worker) gets the user's environment."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        for name in set(os.environ) - set(saved):
            del os.environ[name]
        os.environ.update(saved)


def _connect(distributed: Any, address: str) -> Any:
    """A client of the scheduler at ``address`` that has at least one worker; InputError otherwise."""
    try:
        client = distributed.Client(address, timeout=f"{CONNECT_TIMEOUT_S}s")
    except (OSError, TimeoutError, ValueError) as error:
        reason = " ".join(str(error).split())[:160] or type(error).__name__
        raise InputError(f"--scheduler {address}: cannot connect ({reason})") from None
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except (TimeoutError, OSError):
        client.close()
        raise InputError(f"--scheduler {address}: no worker joined within {WORKER_WAIT_S} s") from None
    return client


def describe(client: Any, scheduler: str | None, threads: int | None = None) -> str:
    """``"local cluster: 2 worker(s) x 1 thread(s)"`` (``threads``: torch threads of a case) or
    ``"tcp://...: 3 worker(s), 12 task thread(s)"`` (an existing cluster: Dask's task threads) for the summary."""
    workers = client.scheduler_info().get("workers", {})
    if scheduler is None and threads is not None:
        return f"local cluster: {len(workers)} worker(s) x {threads} thread(s)"
    tasks = sum(int(info.get("nthreads", 0)) for info in workers.values())
    return f"{scheduler or 'Dask cluster'}: {len(workers)} worker(s), {tasks} task thread(s)"
