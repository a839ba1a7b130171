"""The paper's Table 2 per structure, per case and over a cohort; AI vs manual acceptability.

Table 2 of Liu et al. counts, per structure, the slices given each of the four grades and their
percentage of the slices graded for that structure; its "Mean Percentage" row is the mean of the
per-structure percentages (not pooled counts), and "clinically acceptable" is acceptable + minor
revision.  Here likewise; "not assessable" grades are counted in a column of their own and left
out of every percentage.  With several reviewers every grade counts once (the paper's 678 slices
per structure are the two oncologists' grades together).

Blinded reviews grade AI and manual contours of the same slices: their grades are never pooled —
there is one table per source, and :func:`ai_vs_manual` compares the clinically-acceptable rates
(with a 95 % bootstrap interval of the difference over cases).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np

from .grades import ORDINAL_GRADES, Grade
from .model import AI, MANUAL, GradeRecord

MEAN_ROW = "Mean percentage"
PERCENT_DECIMALS = 2
BOOTSTRAP_REPLICATES = 2000
BOOTSTRAP_SEED = 20240425
"""Fixed: the same grades give the same intervals (reports must be reproducible)."""
CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Table2Row:
    """Grade counts of one structure; percentages over the assessable grades."""

    structure: str
    counts: tuple[int, int, int, int]
    """Acceptable, minor, major, unacceptable (the paper's columns)."""
    not_assessable: int = 0

    @property
    def n(self) -> int:
        return sum(self.counts)

    def percent(self, grade: Grade) -> float:
        """% of the assessable grades that are ``grade`` (nan without any)."""
        return 100.0 * self.counts[ORDINAL_GRADES.index(grade)] / self.n if self.n else math.nan

    @property
    def percents(self) -> tuple[float, ...]:
        return tuple(self.percent(grade) for grade in ORDINAL_GRADES)

    @property
    def clinically_acceptable(self) -> float:
        """Acceptable + minor revision, % (nan without grades)."""
        return 100.0 * (self.counts[0] + self.counts[1]) / self.n if self.n else math.nan


@dataclasses.dataclass(frozen=True)
class Table2:
    """One Table 2: rows per structure and the mean row (mean of the per-structure percentages)."""

    title: str
    rows: tuple[Table2Row, ...]

    @property
    def mean_percents(self) -> tuple[float, ...]:
        graded = [row for row in self.rows if row.n]
        return tuple(float(np.mean([row.percents[i] for row in graded])) if graded else math.nan
                     for i in range(len(ORDINAL_GRADES)))

    @property
    def mean_clinically_acceptable(self) -> float:
        graded = [row.clinically_acceptable for row in self.rows if row.n]
        return float(np.mean(graded)) if graded else math.nan


def structure_order(names: Iterable[str], preferred: Sequence[str] = ()) -> list[str]:
    """``names`` in catalogue order (the paper's: bladder, rectum, CTV-N, CTV-UV), others after, sorted."""
    rank = {name: index for index, name in enumerate(preferred)}
    return sorted(set(names), key=lambda name: (rank.get(name, len(rank)), name))


def table2(records: Iterable[GradeRecord], title: str = "", order: Sequence[str] = ()) -> Table2:
    """Table 2 of ``records`` (one row per structure present)."""
    counts: dict[str, list[int]] = {}
    for record in records:
        row = counts.setdefault(record.structure, [0, 0, 0, 0, 0])
        row[4 if record.grade is Grade.NOT_ASSESSABLE else ORDINAL_GRADES.index(record.grade)] += 1
    rows = tuple(Table2Row(name, tuple(counts[name][:4]), counts[name][4])  # type: ignore[arg-type]
                 for name in structure_order(counts, order))
    return Table2(title, rows)


def group_by(records: Iterable[GradeRecord], field: str) -> dict[str, list[GradeRecord]]:
    groups: dict[str, list[GradeRecord]] = {}
    for record in records:
        groups.setdefault(getattr(record, field), []).append(record)
    return dict(sorted(groups.items()))


def source_title(source: str) -> str:
    return {AI: "AI contours (blinded)", MANUAL: "manual contours (blinded)"}.get(source, "")


@dataclasses.dataclass(frozen=True)
class Summary:
    """Everything ``review summary`` reports: cohort and per-case tables per source, per reviewer, AI vs manual."""

    cohort: tuple[Table2, ...]
    by_case: tuple[tuple[str, Table2], ...]
    by_reviewer: tuple[tuple[str, Table2], ...]
    comparison: tuple[ComparisonRow, ...]
    n_cases: int
    n_reviewers: int
    n_records: int


def summarise(records: Sequence[GradeRecord], order: Sequence[str] = ()) -> Summary:
    """Table 2 over the cohort and per case (separately per blinded source), per reviewer, AI vs manual."""
    cohort, by_case, by_reviewer = [], [], []
    for source, group in group_by(records, "blinded_source").items():
        label = source_title(source)
        cohort.append(table2(group, " - ".join(filter(None, ["Cohort", label])), order))
        for case_id, case_records in group_by(group, "case_id").items():
            by_case.append((case_id, table2(case_records, " - ".join(filter(None, [case_id, label])), order)))
        for reviewer, reviewer_records in group_by(group, "reviewer").items():
            by_reviewer.append((reviewer, table2(reviewer_records, " - ".join(filter(None, [reviewer, label])),
                                                 order)))
    return Summary(tuple(cohort), tuple(by_case), tuple(by_reviewer), tuple(ai_vs_manual(records, order)),
                   len({r.case_id for r in records}), len({r.reviewer for r in records}), len(records))


# ------------------------------------------------------------------ AI vs manual (blinded reviews)
@dataclasses.dataclass(frozen=True)
class ComparisonRow:
    """Clinically acceptable % of AI and manual contours of one structure (blinded grades only)."""

    structure: str
    n_ai: int
    n_manual: int
    ai_percent: float
    manual_percent: float
    difference_ci: tuple[float, float]
    """95 % bootstrap interval (over cases) of AI % - manual %; nan with fewer than 2 cases."""

    @property
    def difference(self) -> float:
        return self.ai_percent - self.manual_percent


def ai_vs_manual(records: Iterable[GradeRecord], order: Sequence[str] = ()) -> list[ComparisonRow]:
    """One row per structure that has blinded grades of both sources; "Overall" (all structures) last."""
    blinded = [r for r in records if r.blinded_source in (AI, MANUAL) and r.grade is not Grade.NOT_ASSESSABLE]
    rows = []
    by_structure = group_by(blinded, "structure")
    groups = [(name, by_structure[name]) for name in structure_order(by_structure, order)]
    if len(groups) > 1:
        groups.append(("Overall", blinded))
    for name, group in groups:
        row = _comparison(name, group)
        if row is not None:
            rows.append(row)
    return rows


def _comparison(structure: str, records: Sequence[GradeRecord]) -> ComparisonRow | None:
    cases = sorted({r.case_id for r in records})
    index = {case: i for i, case in enumerate(cases)}
    # Per case: [AI acceptable, AI graded, manual acceptable, manual graded].
    table = np.zeros((len(cases), 4))
    for r in records:
        column = 0 if r.blinded_source == AI else 2
        table[index[r.case_id], column] += r.grade.clinically_acceptable
        table[index[r.case_id], column + 1] += 1
    totals = table.sum(axis=0)
    if not (totals[1] and totals[3]):
        return None
    low, high = bootstrap_interval(table, _difference_statistic) if len(cases) > 1 else (math.nan, math.nan)
    return ComparisonRow(structure, int(totals[1]), int(totals[3]), float(100.0 * totals[0] / totals[1]),
                         float(100.0 * totals[2] / totals[3]), (low, high))


def _difference_statistic(sums: np.ndarray) -> np.ndarray:
    """AI % - manual % of bootstrap replicate sums, shape (B, 4) → (B,)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * (sums[:, 0] / sums[:, 1] - sums[:, 2] / sums[:, 3])


def bootstrap_weights(n_cases: int, replicates: int = BOOTSTRAP_REPLICATES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(replicates, n_cases) multiplicities of each case in each resample (cases drawn with replacement)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_cases, size=(replicates, n_cases))
    weights = np.zeros((replicates, n_cases))
    np.add.at(weights, (np.repeat(np.arange(replicates), n_cases), draws.ravel()), 1.0)
    return weights


def bootstrap_interval(per_case: np.ndarray, statistic, replicates: int = BOOTSTRAP_REPLICATES,
                       seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of ``statistic`` over case resamples.

    ``per_case``: (n_cases, m) additive per-case quantities (counts, confusion-matrix cells);
    ``statistic`` maps replicate sums (B, m) to values (B,).  Replicates where the statistic is
    undefined (nan) are left out.
    """
    weights = bootstrap_weights(per_case.shape[0], replicates, seed)
    values = statistic(weights @ per_case.reshape(per_case.shape[0], -1))
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (math.nan, math.nan)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return (float(low), float(high))


# ------------------------------------------------------------------ text
def percent_text(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.{PERCENT_DECIMALS}f}%"


def count_text(row: Table2Row, grade: Grade) -> str:
    """"616 (90.86%)", as the paper prints a cell."""
    return f"{row.counts[ORDINAL_GRADES.index(grade)]} ({percent_text(row.percent(grade))})"


def table2_lines(table: Table2) -> list[list[str]]:
    """Header + one line per structure + the mean row, as cells (for text, markdown and CSV)."""
    header = ["Structure", *(g.label for g in ORDINAL_GRADES), "Clinically acceptable", "Not assessable", "n"]
    lines = [header]
    for row in table.rows:
        lines.append([row.structure, *(count_text(row, g) for g in ORDINAL_GRADES),
                      percent_text(row.clinically_acceptable), str(row.not_assessable), str(row.n)])
    lines.append([MEAN_ROW, *(percent_text(p) for p in table.mean_percents),
                  percent_text(table.mean_clinically_acceptable), "", ""])
    return lines


def table2_records(scope: str, table: Table2) -> list[dict[str, object]]:
    """Machine-readable rows of a table (CSV): counts and percentages, the mean row last."""
    records: list[dict[str, object]] = []
    for row in table.rows:
        record: dict[str, object] = {"scope": scope, "structure": row.structure, "n": row.n}
        for grade in ORDINAL_GRADES:
            record[grade.value] = row.counts[ORDINAL_GRADES.index(grade)]
            record[f"{grade.value}_pct"] = _rounded(row.percent(grade))
        record.update(clinically_acceptable_pct=_rounded(row.clinically_acceptable),
                      not_assessable=row.not_assessable)
        records.append(record)
    mean: dict[str, object] = {"scope": scope, "structure": MEAN_ROW, "n": ""}
    for grade, value in zip(ORDINAL_GRADES, table.mean_percents):
        mean.update({grade.value: "", f"{grade.value}_pct": _rounded(value)})
    mean.update(clinically_acceptable_pct=_rounded(table.mean_clinically_acceptable), not_assessable="")
    return records + [mean]


def _rounded(value: float) -> object:
    return round(value, PERCENT_DECIMALS) if math.isfinite(value) else ""


TABLE2_CSV_COLUMNS = ("scope", "structure", "n", *(c for g in ORDINAL_GRADES for c in (g.value, f"{g.value}_pct")),
                      "clinically_acceptable_pct", "not_assessable")


def comparison_lines(rows: Sequence[ComparisonRow]) -> list[list[str]]:
    header = ["Structure", "AI n", "AI clinically acceptable", "Manual n", "Manual clinically acceptable",
              "AI - manual (95% CI over cases)"]
    lines = [header]
    for row in rows:
        low, high = row.difference_ci
        interval = f" ({low:+.2f} to {high:+.2f})" if math.isfinite(low) else " (n/a: < 2 cases)"
        lines.append([row.structure, str(row.n_ai), percent_text(row.ai_percent), str(row.n_manual),
                      percent_text(row.manual_percent), f"{row.difference:+.2f} points{interval}"])
    return lines


def aligned(lines: Sequence[Sequence[str]]) -> str:
    """Plain-text table with aligned columns (the terminal)."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def markdown(lines: Sequence[Sequence[str]]) -> str:
    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([row(lines[0]), "|" + "---|" * len(lines[0]), *(row(line) for line in lines[1:])])

