"""What a batch run tells its user: a line per finished case, the summary table, batch.csv/batch.json.

``batch.csv`` has one row per case: ``case_id, status, seconds, reason`` then ``<structure>_ml``
for every structure (the volume ``segment`` measured) and, with ``--evaluate``, ``<structure>_dsc``.
``batch.json`` holds the same per case (plus the worker that ran it and the case's warnings) with
the run's settings and counts.  Both are replaced atomically; no image path goes in them, only
case ids, which carry no patient identifiers.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .tasks import FAILED, OK, SKIPPED, STATUSES, CaseResult

CSV_FILE = "batch.csv"
JSON_FILE = "batch.json"
FORMAT = "cervixautoseg-batch"
_BAR_WIDTH = 20


def structure_names(results: Sequence[CaseResult], known: Sequence[str] = ()) -> list[str]:
    """Structure names in a stable order: ``known`` first (the dataset's), then as results name them."""
    names = list(known)
    for result in results:
        for name in (*result.volumes_ml, *result.dsc):
            if name not in names:
                names.append(name)
    return names


def counts(results: Sequence[CaseResult]) -> dict[str, int]:
    """Number of cases per status."""
    return {status: sum(result.status == status for result in results) for status in STATUSES}


def progress_line(result: CaseResult, done: int, total: int) -> str:
    """``[#####---------------]  3/8  case-003  ok  4.2 s`` (and the reason of a failure)."""
    filled = int(round(_BAR_WIDTH * done / max(total, 1)))
    bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
    width = len(str(total))
    line = f"[{bar}] {done:>{width}}/{total}  {result.case_id}  {result.status}  {result.seconds:.1f} s"
    if result.interrupted_attempts:
        line += f" (after {result.interrupted_attempts} interrupted attempt(s))"
    return f"{line}: {result.reason}" if result.status == FAILED else line


def csv_records(results: Sequence[CaseResult], names: Sequence[str], evaluated: bool) -> list[dict[str, Any]]:
    """One flat record per case with the :mod:`batch.csv <.summary>` columns."""
    records = []
    for result in results:
        record: dict[str, Any] = {"case_id": result.case_id, "status": result.status,
                                  "seconds": round(result.seconds, 2), "reason": result.reason}
        record.update({f"{name}_ml": _cell(result.volumes_ml.get(name)) for name in names})
        if evaluated:
            record.update({f"{name}_dsc": _cell(result.dsc.get(name)) for name in names})
        records.append(record)
    return records


def _cell(value: float | None) -> Any:
    return "" if value is None or not math.isfinite(value) else value


def table_text(results: Sequence[CaseResult], names: Sequence[str], evaluated: bool) -> str:
    """The summary table for the terminal: volumes in ml, or DSC with ``--evaluate``."""
    unit = "DSC" if evaluated else "ml"
    header = ["case", "status", "seconds", *(f"{name} {unit}" for name in names)]
    rows = [header]
    for result in results:
        values = result.dsc if evaluated else result.volumes_ml
        digits = 3 if evaluated else 1
        cells = [_format(values.get(name), digits) for name in names]
        rows.append([result.case_id, result.status, f"{result.seconds:.1f}", *cells])
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if column < 2 else cell.rjust(width)
                       for column, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in rows]
    failures = [f"  {result.case_id}: {result.reason}" for result in results if result.status == FAILED]
    tally = counts(results)
    lines.append(f"{len(results)} case(s): {tally[OK]} ok, {tally[SKIPPED]} skipped, {tally[FAILED]} failed")
    return "\n".join(lines + (["failed:"] + failures if failures else [])) + "\n"


def _format(value: float | None, digits: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def write_summary(out_dir: Path, results: Sequence[CaseResult], names: Sequence[str], evaluated: bool,
                  run: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``batch.csv`` and ``batch.json`` into ``out_dir`` atomically; returns their paths."""
    from ..atomic import write_text_atomic

    records = csv_records(results, names, evaluated)
    columns = list(records[0]) if records else ["case_id", "status", "seconds", "reason"]
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    write_text_atomic(out_dir / CSV_FILE, stream.getvalue())
    document = {"format": FORMAT, "version": 1, **run, "counts": counts(results), "structures": list(names),
                "cases": [_case_entry(result, evaluated) for result in results]}
    write_text_atomic(out_dir / JSON_FILE, json.dumps(document, indent=2, allow_nan=False) + "\n")
    return out_dir / CSV_FILE, out_dir / JSON_FILE


def _case_entry(result: CaseResult, evaluated: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"case_id": result.case_id, "status": result.status, "seconds": round(result.seconds, 3),
                             "reason": result.reason, "model": result.model, "worker": result.worker,
                             "interrupted_attempts": result.interrupted_attempts,
                             "volumes_ml": {k: _json_number(v) for k, v in result.volumes_ml.items()},
                             "warnings": list(result.warnings)}
    if evaluated:
        entry["dsc"] = {k: _json_number(v) for k, v in result.dsc.items()}
    if result.detail:
        entry["traceback"] = result.detail
    return entry


def _json_number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value
