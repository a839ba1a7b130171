"""Small review inputs made on the fly for the review tests (issue 16): a DICOM CT series, the AI's
``segment``-style output folder (label map, labels.json, report.json with QA flags in both
report shapes) and a clinic's manual RTSTRUCT of the same structures, slightly different."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
from rtstruct_oracle import write_series

from CervixAutoSegLib.ct.family import CT_STRUCTURES
from CervixAutoSegLib.dicom_series import read_dicom_series
from CervixAutoSegLib.image_io import write_image
from CervixAutoSegLib.review.grades import ORDINAL_GRADES, Grade
from CervixAutoSegLib.review.model import GradeRecord
from CervixAutoSegLib.rtstruct.writer import write_rtstruct
from CervixAutoSegLib.structures import write_labels_json
from CervixAutoSegLib.volume import Volume

ROWS, COLUMNS, SLICES = 20, 24, 14
SLICE_GAP_MM = 2.5
AI_EXTENT = {1: (3, 8), 2: (2, 10), 3: (5, 6), 4: (4, 9)}
"""Label value → (first, last) slice of the AI contour (CT: 1 bladder, 2 rectum, 3 CTVn, 4 CTVp)."""
BOXES = {1: (2, 8, 2, 8), 2: (2, 8, 12, 18), 3: (11, 17, 2, 8), 4: (11, 17, 12, 20)}
"""Label value → (row0, row1, column0, column1) of its square."""


def ct_series(folder: Path) -> Volume:
    """A 24x20x14 CT series (DICOM, file names shuffled) and its Volume."""
    positions = np.array([[0.0, 0.0, SLICE_GAP_MM * k] for k in range(SLICES)])
    write_series(folder, ROWS, COLUMNS, positions, shuffle_seed=3)
    return read_dicom_series(folder)


def labels_for(reference: Volume, extents=AI_EXTENT, shift: int = 0) -> Volume:
    array = np.zeros(reference.shape, np.uint8)
    for value, (first, last) in extents.items():
        r0, r1, c0, c1 = BOXES[value]
        array[first:last + 1, r0 + shift:r1 + shift, c0:c1] = value
    return reference.with_array(array)


def report_document() -> dict:
    """report.json with a format-1 flag (range and pair) and a scored slice list (the newer shape)."""
    return {"format_version": 1, "qa": {
        "flags": [{"structure": "Bladder", "kind": "abrupt_end", "slices": [3], "message": "Bladder ends abruptly"},
                  {"structure": "Rectum", "kind": "area_jump", "slices": [[6, 7]], "message": "area jump"}],
        "slices": [{"structure": "CTVp", "slice": 8, "score": 0.91, "flagged": True, "reasons": ["thin", "shifted"]},
                   {"structure": "CTVp", "slice": 5, "score": 0.2, "flagged": False, "reasons": []},
                   {"structure": "Bladder", "slice": 3, "score": 0.6, "flagged": True, "reasons": ["tapering"]}],
        "flagged_slices": 2}}


def ai_output(folder: Path, reference: Volume) -> Path:
    """A ``segment``-like output folder: labels.nii.gz, labels.json, report.json."""
    folder.mkdir(parents=True)
    write_image(labels_for(reference), folder / "labels.nii.gz")
    write_labels_json(folder / "labels.json", "ct", CT_STRUCTURES)
    (folder / "report.json").write_text(json.dumps(report_document()), encoding="utf-8")
    return folder


def manual_rtstruct(path: Path, reference: Volume) -> Path:
    """A manual RTSTRUCT (another system's Manufacturer): rectum one row lower, CTVn one slice longer."""
    extents = {**AI_EXTENT, 3: (5, 7)}
    write_rtstruct(path, labels_for(reference, extents, shift=1), reference, CT_STRUCTURES,
                   model_name="manual", model_version="1")
    dataset = pydicom.dcmread(path)
    dataset.Manufacturer = "OtherTPS"
    dataset.save_as(path)
    return path


def record(case: str, structure: str, k: int, reviewer: str, grade: Grade | int, source: str = "") -> GradeRecord:
    """A grade record; ``grade`` may be a rank 1..4."""
    grade = ORDINAL_GRADES[grade - 1] if isinstance(grade, int) else grade
    return GradeRecord(case, "1.2.3", structure, k, 2.5 * k, reviewer, grade, "", "2026-01-01T00:00:00.000Z", source)


def tiny_review(folder: Path, n_slices: int = 30, items=(("Bladder", range(4, 20)), ("Rectum", range(2, 25))),
                flags=()) -> Path:
    """A review folder holding only its manifest (no image is read while grading): fast to make."""
    from CervixAutoSegLib.review.model import ImageGeometry, Manifest, ReviewItem
    from CervixAutoSegLib.review.session import MANIFEST_FILE

    geometry = ImageGeometry((n_slices, 8, 8), np.diag([1.0, 1.0, 2.5, 1.0]), tuple(2.5 * k for k in range(n_slices)))
    review_items = tuple(ReviewItem(name, name, name, (200, 100, 50), tuple(slices), tuple((4.0, 4.0) for _ in slices),
                                    flag_structure=name) for name, slices in items)
    manifest = Manifest("0123456789abcdef", "case-test", "1.2.3", str(folder / "image.nii.gz"), geometry,
                        review_items, flags=tuple(flags))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest.to_json()), encoding="utf-8")
    return folder

