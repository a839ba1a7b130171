"""The plot PNG beside the summary tables (matplotlib, Agg backend: no display needed).

Left: Table 2 as stacked bars — per structure the % of slices given each grade (cohort, one bar
per structure and blinded source).  Right: box plot of the per-case clinically-acceptable % per
structure, with the cases as dots: how much the acceptability varies between patients.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from .grades import ORDINAL_GRADES
from .summary import Summary, Table2

GRADE_COLOURS = ("#2e7d32", "#9ccc65", "#ffb300", "#c62828")
"""Acceptable .. unacceptable: green to red (colour-blind readers also get the legend order)."""
FIGURE_SIZE_INCHES = (11.0, 4.5)
DPI = 120


def summary_png(summary: Summary) -> bytes:
    """PNG bytes of the summary plot."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_SIZE_INCHES, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    bars, boxes = figure.subplots(1, 2)
    _grade_bars(bars, summary.cohort)
    _acceptability_boxes(boxes, [table for _, table in summary.by_case])
    stream = io.BytesIO()
    figure.savefig(stream, format="png")
    return stream.getvalue()


def _grade_bars(axes, tables: Sequence[Table2]) -> None:
    labels, percents = [], []
    for table in tables:
        suffix = table.title.split(" - ", 1)[1] if " - " in table.title else ""
        for row in table.rows:
            if row.n:
                labels.append(f"{row.structure}\n{suffix}".strip())
                percents.append(row.percents)
    left = [0.0] * len(labels)
    for index, grade in enumerate(ORDINAL_GRADES):
        values = [p[index] for p in percents]
        axes.barh(labels, values, left=left, color=GRADE_COLOURS[index], label=grade.label)
        left = [a + b for a, b in zip(left, values)]
    axes.invert_yaxis()
    axes.set_xlim(0, 100)
    axes.set_xlabel("% of graded slices")
    axes.set_title("Grades per structure (Table 2)")
    axes.legend(loc="lower right", fontsize="small")


def _acceptability_boxes(axes, case_tables: Sequence[Table2]) -> None:
    per_structure: dict[str, list[float]] = {}
    for table in case_tables:
        suffix = table.title.split(" - ", 1)[1] if " - " in table.title else ""
        for row in table.rows:
            if row.n and math.isfinite(row.clinically_acceptable):
                name = f"{row.structure}\n{suffix}".strip()
                per_structure.setdefault(name, []).append(row.clinically_acceptable)
    names = list(per_structure)
    if names:
        axes.boxplot([per_structure[n] for n in names], showfliers=False)  # labels: keyword renamed in 3.9
        axes.set_xticks(range(1, len(names) + 1))
        axes.set_xticklabels(names)
        for position, name in enumerate(names, start=1):
            values = per_structure[name]
            axes.plot([position] * len(values), values, "o", color="#37474f", alpha=0.6, markersize=4)
    axes.set_ylim(-2, 102)
    axes.set_ylabel("clinically acceptable % per case")
    axes.set_title("Acceptability across cases")
    axes.tick_params(axis="x", labelsize="small")
