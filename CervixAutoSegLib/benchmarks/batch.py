"""``batch`` on Dask: wall time of one cohort on local clusters of different sizes.

    cervixautoseg benchmark batch [--cases 8] [--configs 1x1,2x1] [--matrix 256] [--json FILE]

Writes ``--cases`` CT phantoms (DICOM, ``--matrix`` pixels square, ``--slice-mm`` slices), then runs
``run_batch`` over them once per configuration ``WORKERSxTHREADS`` into a fresh output folder, with
the bundled CT model on the CPU, flip TTA off.  Wall time includes starting the cluster (as a user
waits for it).  The machine is shared: the 1-minute load average is recorded before each run and
sampled during it, so numbers from a busy machine can be recognised as such.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HELP = "wall time of batch over N phantom cases on local Dask clusters of different sizes"
FIRST_SEED = 8000
"""Phantom seeds of the benchmark cohort (outside the bundled model's training seeds 1000-2999)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", type=int, default=8, help="number of phantom cases (default 8)")
    parser.add_argument("--configs", default="1x1,2x1",
                        help="comma-separated WORKERSxTHREADS local clusters to time (default 1x1,2x1)")
    parser.add_argument("--matrix", type=int, default=256, help="phantom rows and columns (default 256)")
    parser.add_argument("--slice-mm", type=float, default=5.0, help="phantom slice thickness in mm (default 5)")
    parser.add_argument("--work", type=Path, default=None, help="folder for cases and outputs (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")


def parse_configs(text: str) -> list[tuple[int, int]]:
    """``"1x1,2x1"`` → [(1, 1), (2, 1)]; InputError for anything else."""
    from ..errors import InputError

    configs = []
    for part in text.split(","):
        try:
            workers, threads = (int(value) for value in part.strip().lower().split("x"))
        except ValueError:
            raise InputError(f"--configs: {part.strip()!r} is not WORKERSxTHREADS (e.g. 2x1)") from None
        if workers < 1 or threads < 1:
            raise InputError(f"--configs: {part.strip()!r} needs at least one worker and one thread")
        configs.append((workers, threads))
    return configs


class LoadSampler(threading.Thread):
    """Samples the 1-minute load average every second while a run lasts."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.samples.append(os.getloadavg()[0])


def write_cases(root: Path, count: int, matrix: int, slice_mm: float) -> Path:
    """``count`` phantom case folders (dicom/ + truth.nii.gz) under ``root/cases``."""
    from ..phantom import make_ct_phantom, write_phantom

    cases = root / "cases"
    for number in range(count):
        folder = cases / f"case-{number + 1:02d}"
        if not (folder / "truth.nii.gz").is_file():
            write_phantom(make_ct_phantom(FIRST_SEED + number, matrix=matrix, slice_thickness_mm=slice_mm), folder)
    return cases


def time_config(cases: Path, out: Path, workers: int, threads: int) -> dict[str, Any]:
    """One timed ``run_batch`` on a fresh local cluster of ``workers`` x ``threads``."""
    from ..cohort import CaseSettings, run_batch

    sampler = LoadSampler()
    load_before = os.getloadavg()[0]
    sampler.start()
    started = time.perf_counter()
    try:
        run = run_batch(cases, out, CaseSettings(device="cpu", options=(("flip_tta", False),)),
                        workers=workers, threads=threads)
    finally:
        sampler.stop.set()
        sampler.join()
    wall = time.perf_counter() - started
    seconds = [result.seconds for result in run.results]
    samples = sampler.samples or [os.getloadavg()[0]]
    return {"workers": workers, "threads": threads, "wall_s": round(wall, 2),
            "case_s_mean": round(sum(seconds) / len(seconds), 2), "cases_per_min": round(60 * len(seconds) / wall, 2),
            "ok": sum(result.status == "ok" for result in run.results), "failed": len(run.failed),
            "load_before": round(load_before, 2), "load_mean": round(sum(samples) / len(samples), 2),
            "load_max": round(max(samples), 2)}


def run(args: argparse.Namespace) -> int:
    configs = parse_configs(args.configs)
    with tempfile.TemporaryDirectory(prefix="cervixautoseg-batch-bench-") as scratch:
        work = Path(args.work) if args.work else Path(scratch)
        cases = write_cases(work, args.cases, args.matrix, args.slice_mm)
        rows = [time_config(cases, work / f"out-{workers}x{threads}-{int(time.time())}", workers, threads)
                for workers, threads in configs]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"batch over {args.cases} CT phantoms {args.matrix}x{args.matrix}, {args.slice_mm:g} mm slices; "
          f"{cores} cores; bundled CT model, CPU, no flip TTA; wall includes cluster start")
    print(f"{'workers x threads':>17}  {'wall s':>7}  {'case s':>7}  {'cases/min':>9}  {'speedup':>7}  "
          f"{'load before/mean/max':>20}  ok/failed")
    for row in rows:
        speedup = rows[0]["wall_s"] / row["wall_s"]
        row["speedup_vs_first"] = round(speedup, 2)
        print(f"{row['workers']:>13} x {row['threads']:<2}  {row['wall_s']:7.1f}  {row['case_s_mean']:7.1f}  "
              f"{row['cases_per_min']:9.2f}  {speedup:7.2f}  "
              f"{row['load_before']:6.2f}/{row['load_mean']:5.2f}/{row['load_max']:5.2f}  {row['ok']}/{row['failed']}")
    if args.json:
        from ..atomic import write_text_atomic

        document = {"benchmark": "batch", "cases": args.cases, "matrix": args.matrix, "slice_mm": args.slice_mm,
                    "cores": cores, "runs": rows}
        write_text_atomic(args.json, json.dumps(document, indent=2) + "\n")
    return 0 if all(row["failed"] == 0 for row in rows) else 1
