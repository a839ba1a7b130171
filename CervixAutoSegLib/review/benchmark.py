"""``cervixautoseg review benchmark``: is grading instant, and are the summaries quick on a cohort?

Targets of issue 16: 100 grades through the panel's controller (each saved with fsync, the
segment status and the slice jump done on a real MRML scene when slicer-core is there) in under
1 s; summary and agreement (with their bootstrap intervals) of 20,000 grades in under 2 s.
Times are wall-clock on this machine; tests never assert them.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

GRADES_THROUGH_CONTROLLER = 100
CONTROLLER_TARGET_S = 1.0
COHORT_GRADES = 20_000
COHORT_TARGET_S = 2.0
COHORT_CASES, COHORT_STRUCTURES, COHORT_REVIEWERS = 25, 4, 2
IMAGE_SHAPE = (40, 48, 48)
"""(z, y, x) of the synthetic review image: 4 structures on 30 slices, 128 stops."""


def synthetic_review(folder: Path) -> Path:
    """A review folder of a synthetic CT (NIfTI) and a 4-structure label map with labels.json."""
    from ..ct.family import CT_STRUCTURES
    from ..image_io import write_image
    from ..structures import write_labels_json
    from ..volume import Volume
    from .session import StartRequest, start_review

    rng = np.random.default_rng(0)
    image = Volume(array=rng.normal(40, 20, IMAGE_SHAPE).astype(np.int16), spacing=(1.0, 1.0, 2.5),
                   origin=(-24.0, -24.0, 0.0), direction=np.eye(3), modality="CT")
    labels = np.zeros(IMAGE_SHAPE, np.uint8)
    for value, (row, column) in enumerate(((10, 10), (10, 30), (30, 10), (30, 30)), start=1):
        labels[5:35, row:row + 8, column:column + 8] = value
    write_image(image, folder / "ct.nii.gz")
    (folder / "seg").mkdir()
    write_image(image.with_array(labels), folder / "seg" / "labels.nii.gz")
    write_labels_json(folder / "seg" / "labels.json", "ct", CT_STRUCTURES)
    start_review(StartRequest(image=folder / "ct.nii.gz", segmentations=(str(folder / "seg" / "labels.nii.gz"),),
                              out=folder / "review", reviewer="benchmark"))
    return folder / "review"


def time_controller_grades(review: Path, count: int = GRADES_THROUGH_CONTROLLER) -> tuple[float, str]:
    """Seconds for ``count`` hotkey grades (auto-advance on) and which scene they went to."""
    from .controller import ReviewController

    scene, where = _mrml_scene(review)
    controller = ReviewController(scene)
    controller.open(review, "benchmark")
    controller.set_review_mode(True)
    keys = "1234"
    start = time.perf_counter()
    for index in range(count):
        controller.key(keys[index % len(keys)])
    elapsed = time.perf_counter() - start
    graded = len(controller.session.state.grades)
    controller.close()
    if graded != count:
        raise RuntimeError(f"{graded} grades saved, {count} expected")
    return elapsed, where


def _mrml_scene(review: Path):
    try:
        import slicer
    except ImportError:
        return None, "no MRML scene (slicer-core not installed)"
    from .mrml_review import MrmlReviewScene, load_review
    from .session import read_manifest

    manifest = read_manifest(review)
    scene = slicer.vtkMRMLScene()
    slice_node = slicer.vtkMRMLSliceNode()
    slice_node.SetLayoutName("Red")
    scene.AddNode(slice_node)
    _, segmentation = load_review(scene, review, manifest)
    return MrmlReviewScene(scene, manifest, segmentation), "real MRML scene (slicer-core): jump + segment status"


def synthetic_records(total: int = COHORT_GRADES, seed: int = 1) -> list:
    """``total`` grades: 2 reviewers x 25 cases x 4 structures x 100 slices, the second mostly agreeing."""
    from .grades import ORDINAL_GRADES
    from .model import GradeRecord

    rng = np.random.default_rng(seed)
    per_structure = total // (COHORT_REVIEWERS * COHORT_CASES * COHORT_STRUCTURES)
    records = []
    for case in range(COHORT_CASES):
        for structure in range(COHORT_STRUCTURES):
            first = rng.choice(4, size=per_structure, p=[0.75, 0.12, 0.07, 0.06])
            second = np.clip(first + rng.choice([-1, 0, 1], size=per_structure, p=[0.1, 0.8, 0.1]), 0, 3)
            for reviewer, grades in (("A", first), ("B", second)):
                for k, grade in enumerate(grades):
                    records.append(GradeRecord(f"case-{case:03d}", "", f"S{structure}", k, 2.5 * k, reviewer,
                                               ORDINAL_GRADES[int(grade)], "", "2026-01-01T00:00:00.000Z"))
    return records


def time_cohort(records: list) -> dict[str, float]:
    from .agreement import agreement
    from .summary import summarise

    times = {}
    start = time.perf_counter()
    summarise(records)
    times["summary"] = time.perf_counter() - start
    start = time.perf_counter()
    agreement(records)
    times["agreement"] = time.perf_counter() - start
    return times


def run_benchmark(say: Callable[[str], None] = print) -> bool:
    """Run both measurements, print them with their targets; True when both targets are met."""
    with tempfile.TemporaryDirectory(prefix="cervixautoseg-review-benchmark-") as temporary:
        review = synthetic_review(Path(temporary))
        grading, where = time_controller_grades(review)
    records = synthetic_records()
    cohort = time_cohort(records)
    total = cohort["summary"] + cohort["agreement"]
    grading_met, cohort_met = grading < CONTROLLER_TARGET_S, total < COHORT_TARGET_S
    say(f"{GRADES_THROUGH_CONTROLLER} grades through the controller (fsync each; {where}): {grading:.3f} s "
        f"({1000 * grading / GRADES_THROUGH_CONTROLLER:.1f} ms/grade); target < {CONTROLLER_TARGET_S:g} s: "
        f"{'met' if grading_met else 'NOT met'}")
    say(f"summary + agreement of {len(records)} grades ({COHORT_CASES} cases, {COHORT_REVIEWERS} reviewers, "
        f"bootstrap 2000 replicates): {total:.3f} s (summary {cohort['summary']:.3f} s, agreement "
        f"{cohort['agreement']:.3f} s); target < {COHORT_TARGET_S:g} s: {'met' if cohort_met else 'NOT met'}")
    return grading_met and cohort_met
