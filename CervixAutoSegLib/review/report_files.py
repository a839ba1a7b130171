"""Reading grades from review folders and CSVs; writing the summary and agreement files.

Inputs of ``review summary`` / ``review agreement``: review folders, grades CSVs, or folders
holding review folders (a cohort).  Outputs (``--out DIR``), each written atomically:

* summary: ``table2.csv`` (cohort, per case, per reviewer; counts and %), ``table2.md``,
  ``ai_vs_manual.csv`` (blinded reviews), ``summary.png``;
* agreement: ``agreement.csv`` (pairs: exact %, three kappas; alpha), ``agreement.md``,
  ``disagreements.csv`` (slices two or more grades apart).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..atomic import write_bytes_atomic, write_text_atomic
from ..errors import InputError
from .agreement import WEIGHTINGS, Agreement, alpha_lines, disagreement_lines, pair_lines
from .grades_csv import deduplicated, read_grades_csv
from .model import GradeRecord
from .session import MANIFEST_FILE, folder_records
from .summary import (TABLE2_CSV_COLUMNS, Summary, aligned, comparison_lines, markdown, table2_lines,
                      table2_records)


def load_records(inputs: Sequence[Path], key: Path | None = None) -> list[GradeRecord]:
    """Grades of every input (review folder, grades CSV, or a folder of review folders)."""
    records: list[GradeRecord] = []
    for path in inputs:
        if path.is_dir() and (path / MANIFEST_FILE).is_file():
            records.extend(folder_records(path, key))
        elif path.is_dir():
            folders = sorted(p.parent for p in path.glob(f"*/{MANIFEST_FILE}"))
            if not folders:
                raise InputError(f"{path} is neither a review folder nor a folder of review folders")
            for folder in folders:
                records.extend(folder_records(folder, key))
        elif path.is_file():
            records.extend(read_grades_csv(path))
        else:
            raise InputError(f"{path} does not exist")
    if not records:
        raise InputError("no grades in " + ", ".join(str(p) for p in inputs))
    return deduplicated(records, "the inputs")


def csv_document(records: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    return stream.getvalue()


# ------------------------------------------------------------------ summary
def summary_text(summary: Summary) -> str:
    """The terminal/markdown body: cohort tables, AI vs manual; per-case tables follow in the files."""
    parts = [f"{summary.n_records} grade(s), {summary.n_cases} case(s), {summary.n_reviewers} reviewer(s)"]
    for table in summary.cohort:
        parts += ["", f"Table 2 - {table.title}", aligned(table2_lines(table))]
    if summary.comparison:
        parts += ["", "AI vs manual, clinically acceptable (blinded grades)", aligned(comparison_lines(summary.comparison))]
    return "\n".join(parts)


def summary_markdown(summary: Summary) -> str:
    parts = ["# Review summary", "",
             f"{summary.n_records} grades, {summary.n_cases} cases, {summary.n_reviewers} reviewers. "
             "Percentages are of the assessable grades of each structure; the mean row is the mean of the "
             "per-structure percentages; clinically acceptable = acceptable + minor revision.", ""]
    for table in summary.cohort:
        parts += [f"## {table.title}", "", markdown(table2_lines(table)), ""]
    if summary.comparison:
        parts += ["## AI vs manual (blinded)", "", markdown(comparison_lines(summary.comparison)), ""]
    for heading, tables in (("Per case", summary.by_case), ("Per reviewer", summary.by_reviewer)):
        parts += [f"## {heading}", ""]
        for _, table in tables:
            parts += [f"### {table.title}", "", markdown(table2_lines(table)), ""]
    parts.append("![grades per structure and acceptability across cases](summary.png)")
    return "\n".join(parts) + "\n"


def write_summary(out: Path, summary: Summary) -> list[Path]:
    from .plots import summary_png

    rows: list[dict[str, object]] = []
    for table in summary.cohort:
        rows += table2_records(table.title, table)
    for _, table in (*summary.by_case, *summary.by_reviewer):
        rows += table2_records(table.title, table)
    written = [_text(out / "table2.csv", csv_document(rows, TABLE2_CSV_COLUMNS)),
               _text(out / "table2.md", summary_markdown(summary))]
    if summary.comparison:
        lines = comparison_lines(summary.comparison)
        written.append(_text(out / "ai_vs_manual.csv", _lines_csv(lines)))
    write_bytes_atomic(out / "summary.png", summary_png(summary))
    return written + [out / "summary.png"]


# ------------------------------------------------------------------ agreement
def agreement_text(result: Agreement) -> str:
    parts = [f"Reviewers: {', '.join(result.reviewers)}"]
    if len(result.reviewers) < 2:
        return parts[0] + "\nAgreement needs grades of two or more reviewers."
    parts += ["", "Pairwise agreement (slices both reviewers assessed)", aligned(pair_lines(result.pairs))]
    if result.alphas:
        parts += ["", "Krippendorff's alpha (ordinal), all reviewers", aligned(alpha_lines(result.alphas))]
    parts += ["", f"{len(result.disagreements)} slice(s) where two reviewers differ by two grades or more"]
    return "\n".join(parts)


def agreement_records(result: Agreement) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for pair in result.pairs:
        row: dict[str, object] = {"statistic": "pair", "scope": pair.scope, "reviewers": f"{pair.reviewer_a};"
                                  f"{pair.reviewer_b}", "slices": pair.n_slices, "cases": pair.n_cases}
        for name, estimate in (("exact_pct", pair.exact_percent),
                               *((f"kappa_{w}", pair.kappa[w]) for w in WEIGHTINGS)):
            row.update({name: _number(estimate.value), f"{name}_ci_low": _number(estimate.low),
                        f"{name}_ci_high": _number(estimate.high)})
        rows.append(row)
    for alpha in result.alphas:
        rows.append({"statistic": "alpha", "scope": alpha.scope, "reviewers": alpha.n_reviewers,
                     "slices": alpha.n_units, "cases": alpha.n_cases, "alpha_ordinal": _number(alpha.alpha.value),
                     "alpha_ordinal_ci_low": _number(alpha.alpha.low),
                     "alpha_ordinal_ci_high": _number(alpha.alpha.high)})
    return rows


AGREEMENT_COLUMNS = ("statistic", "scope", "reviewers", "slices", "cases",
                     *(f"{name}{suffix}" for name in ("exact_pct", *(f"kappa_{w}" for w in WEIGHTINGS),
                                                       "alpha_ordinal")
                       for suffix in ("", "_ci_low", "_ci_high")))


def write_agreement(out: Path, result: Agreement) -> list[Path]:
    body = ["# Agreement between reviewers", "",
            "Units: (case, structure, slice, blinded source) both reviewers graded; 'not assessable' left out. "
            "95% CIs: percentile bootstrap over cases (2000 replicates).", ""]
    if result.pairs:
        body += ["## Pairwise", "", markdown(pair_lines(result.pairs)), ""]
    if result.alphas:
        body += ["## Krippendorff's alpha (ordinal)", "", markdown(alpha_lines(result.alphas)), ""]
    body += [f"## Slices two or more grades apart ({len(result.disagreements)})", "",
             markdown(disagreement_lines(result.disagreements)), ""]
    return [_text(out / "agreement.csv", csv_document(agreement_records(result), AGREEMENT_COLUMNS)),
            _text(out / "agreement.md", "\n".join(body)),
            _text(out / "disagreements.csv", _lines_csv(disagreement_lines(result.disagreements)))]


def _number(value: float) -> object:
    import math

    return round(value, 6) if math.isfinite(value) else ""


def _lines_csv(lines: Sequence[Sequence[str]]) -> str:
    stream = io.StringIO()
    csv.writer(stream, lineterminator="\n").writerows(lines)
    return stream.getvalue()


def _text(path: Path, text: str) -> Path:
    write_text_atomic(path, text)
    return path
