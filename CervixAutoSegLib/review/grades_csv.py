"""The grades exchange format of ``../shared/DESIGN.md``: long-format CSV, one row per graded slice.

Columns, in order: ``case_id, series_uid, structure, slice_index, z_mm, reviewer, grade, comment,
graded_utc, blinded_source``.  UTF-8 (a byte-order mark is accepted on reading), ``\\n`` line
ends, ``grade`` one of ``acceptable, minor, major, unacceptable, not_assessable``.

Reading is tolerant of what a spreadsheet makes of the file: any column order, extra columns
(ignored), blank lines, the paper's grade labels ("Minor revision"), empty ``series_uid`` /
``z_mm`` / ``graded_utc``.  A row that cannot be used stops the read with one line naming the
file and row; two rows for the same slice, reviewer and source keep the later ``graded_utc``
(with a warning).

A comment that starts with ``= + - @`` (or tab/CR) is written with a leading apostrophe so that a
spreadsheet shows it as text instead of running it as a formula (CSV injection); reading removes
that apostrophe again.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..atomic import write_text_atomic
from ..errors import InputError
from .grades import parse_grade
from .model import CSV_COLUMNS, SOURCES, GradeRecord, sorted_records

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("case_id", "structure", "slice_index", "reviewer", "grade")
"""Columns a CSV from elsewhere must have; the others may be missing or empty."""
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
TEXT_MARK = "'"
Z_DECIMALS = 3


def _cell(text: str) -> str:
    return TEXT_MARK + text if text.startswith(FORMULA_STARTS) else text


def _uncell(text: str) -> str:
    return text[1:] if text.startswith(TEXT_MARK) and text[1:2] and text[1:].startswith(FORMULA_STARTS) else text


def csv_text(records: Iterable[GradeRecord]) -> str:
    """The CSV document of ``records`` (sorted: case, structure, source, slice, reviewer)."""
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in sorted_records(list(records)):
        z = "" if r.z_mm is None else f"{r.z_mm:.{Z_DECIMALS}f}"
        writer.writerow([_cell(r.case_id), r.series_uid, _cell(r.structure), r.slice_index, z, _cell(r.reviewer),
                         r.grade.value, _cell(r.comment), r.graded_utc, r.blinded_source])
    return stream.getvalue()


def write_grades_csv(path: str | Path, records: Iterable[GradeRecord]) -> Path:
    """Write ``records`` to ``path`` atomically; returns the path."""
    write_text_atomic(Path(path), csv_text(records))
    return Path(path)


def read_grades_csv(path: str | Path) -> list[GradeRecord]:
    """The records of a grades CSV (see the module docstring for what is accepted)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text; save the grades CSV as UTF-8") from None
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise InputError(f"{path} is not a grades CSV: column(s) {', '.join(missing)} missing "
                         f"(expected {', '.join(CSV_COLUMNS)})")
    reader.fieldnames = header
    records = []
    for row in reader:
        if not any((value or "").strip() for value in row.values() if isinstance(value, str)):
            continue
        records.append(_record(row, path, reader.line_num))
    return deduplicated(records, str(path))


def _record(row: dict, path: Path, line: int) -> GradeRecord:
    def text(column: str) -> str:
        value = row.get(column)
        return value.strip() if isinstance(value, str) else ""

    where = f"{path} line {line}"
    try:
        slice_index = int(float(text("slice_index")))
        if slice_index < 0 or slice_index != float(text("slice_index")):
            raise ValueError
    except ValueError:
        raise InputError(f"{where}: slice_index {text('slice_index')!r} is not a slice index (0, 1, 2, ...)") from None
    z_text = text("z_mm")
    try:
        z_mm = float(z_text) if z_text else None
        if z_mm is not None and not math.isfinite(z_mm):
            raise ValueError
    except ValueError:
        raise InputError(f"{where}: z_mm {z_text!r} is not a number") from None
    try:
        grade = parse_grade(text("grade"))
    except InputError as error:
        raise InputError(f"{where}: {error}") from None
    source = text("blinded_source").lower()
    if source not in ("", *SOURCES):
        raise InputError(f"{where}: blinded_source {source!r} must be empty, 'ai' or 'manual'")
    for column in ("case_id", "structure", "reviewer"):
        if not text(column):
            raise InputError(f"{where}: {column} is empty")
    return GradeRecord(case_id=_uncell(text("case_id")), series_uid=text("series_uid"),
                       structure=_uncell(text("structure")), slice_index=slice_index, z_mm=z_mm,
                       reviewer=_uncell(text("reviewer")), grade=grade, comment=_uncell(text("comment")),
                       graded_utc=text("graded_utc"), blinded_source=source)


def deduplicated(records: Sequence[GradeRecord], where: str) -> list[GradeRecord]:
    """One record per (key, reviewer): the latest ``graded_utc`` wins (ISO text sorts in time order)."""
    latest: dict[tuple, GradeRecord] = {}
    duplicates = 0
    for record in records:
        key = (*record.key, record.reviewer)
        if key in latest:
            duplicates += 1
            if record.graded_utc < latest[key].graded_utc:
                continue
        latest[key] = record
    if duplicates:
        log.warning("%s: %d slice(s) graded twice by the same reviewer; the later grade is used", where, duplicates)
    return list(latest.values())
