"""MR "done when": one phantom anatomy acquired axial, sagittal and oblique, head- or feet-first,
prone, with shuffled files, gives contours on the same physical anatomy with the bundled model.

Each acquisition is written as real DICOM, read by the product reader and contoured by
``segment`` with the bundled two-stage PocketNet; its labels are resampled (nearest
neighbour, in LPS mm) onto the axial head-first-supine reference grid and compared there.
The truth maps of the same acquisitions, compared the same way, show how much the grids
alone change a structure (the ceiling for the predictions).
"""

from __future__ import annotations

import numpy as np
import pytest

from CervixAutoSegLib.evaluation import resample_nearest
from CervixAutoSegLib.image_io import load_image
from CervixAutoSegLib.metrics import dice
from CervixAutoSegLib.phantom import make_anatomy, make_grid, render, reoriented, write_phantom

SEED = 5103
"""A held-out phantom patient (the bundled weights never saw seeds >= 5000)."""
FOV_MM = (200.0, 200.0, 150.0)
PIXEL_MM, SLICE_MM = 0.625, 4.0
OPTIONS = {"flip_tta": False, "overlap": 0.25}
"""Fewer windows than the default: the invariance, not the last Dice point, is under test."""
ORGAN, TUMOUR = 1, 2
ACROSS_PLANES = {ORGAN: 0.86, TUMOUR: 0.80}
"""Minimum Dice between acquisitions in different planes (resampling alone costs ~0.05).

Regression guards for the bundled weights 0.1, which measured organ 0.892 / tumour 0.852
(sagittal) and 0.919 / 0.897 (oblique axial) against the axial reference: issue 13's targets
(0.90 / 0.85) are not met on every plane yet, so they are not claimed here."""
SAME_PLANE = 0.90
"""Minimum Dice between layouts of one axial acquisition.  Weights 0.1 measured 0.94 (FFS, HFP:
the sliding windows fall elsewhere on the flipped working grid; issue 13's target is 0.95)."""


@pytest.fixture(scope="module")
def anatomy():
    return make_anatomy(SEED, patient_position="HFS", tumour_radius_mm=16.0, tumour_foci=1)


@pytest.fixture(scope="module")
def axial(anatomy):
    return make_grid(anatomy.to_lps([0.0, 30.0, -20.0]), FOV_MM, (PIXEL_MM, PIXEL_MM), SLICE_MM)


def contour(anatomy, grid, folder, shuffle_seed=None):
    """(predicted labels, truth) of ``anatomy`` scanned on ``grid``, both read back from disk."""
    from CervixAutoSegLib.pipeline import segment

    write_phantom(render(anatomy, grid, "MR", seed=SEED), folder, shuffle_seed=shuffle_seed)
    result = segment(folder / "dicom", folder / "out", model="auto", options=OPTIONS)
    assert result.model.family == "mr"
    labels = load_image(folder / "out" / "labels.nii.gz")
    truth = load_image(folder / "truth.nii.gz")
    assert labels.same_grid(truth, tolerance=1e-3)
    return labels, truth


@pytest.fixture(scope="module")
def reference(anatomy, axial, tmp_path_factory):
    return contour(anatomy, axial, tmp_path_factory.mktemp("axial"))


def agreement(labels, reference_labels) -> dict[int, float]:
    moved = resample_nearest(labels, reference_labels).array
    return {v: dice(moved == v if v == TUMOUR else moved > 0,
                    reference_labels.array == v if v == TUMOUR else reference_labels.array > 0)
            for v in (ORGAN, TUMOUR)}


@pytest.mark.slow
def test_the_bundled_model_finds_organ_and_tumour_on_the_reference(reference):
    labels, truth = reference
    assert dice(labels.array > 0, truth.array > 0) >= 0.85  # weights 0.1: 0.883
    assert dice(labels.array == TUMOUR, truth.array == TUMOUR) >= 0.35  # weights 0.1: 0.458 (a weak spot)


@pytest.mark.slow
@pytest.mark.parametrize("plane", ["sagittal", "oblique axial"])  # oblique sagittal also passes: 3 min more CI
def test_other_planes_contour_the_same_anatomy(anatomy, axial, reference, plane, tmp_path):
    tilt = {"sagittal": (0, 0, 0), "oblique axial": (14, 0, 9), "oblique sagittal": (0, 0, -12)}[plane]
    grid = make_grid(axial.center, FOV_MM, (PIXEL_MM, PIXEL_MM), SLICE_MM,
                     plane="axial" if plane == "oblique axial" else "sagittal", tilt_degrees=tilt)
    labels, truth = contour(anatomy, grid, tmp_path)
    ceiling = agreement(truth, reference[1])
    assert ceiling[ORGAN] >= 0.93 and ceiling[TUMOUR] >= 0.9  # the grids alone: about 0.95
    scores = agreement(labels, reference[0])
    for value, minimum in ACROSS_PLANES.items():
        assert scores[value] >= minimum, f"{plane}: Dice {scores} (truth maps agree to {ceiling})"


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["FFS", "shuffled files"])  # HFP measured 0.943 / 0.921 too
def test_patient_position_and_file_order_do_not_move_the_contours(anatomy, axial, reference, layout, tmp_path):
    grid = axial if layout == "shuffled files" else reoriented(axial, layout)
    labels, _ = contour(anatomy, grid, tmp_path, shuffle_seed=77 if layout == "shuffled files" else None)
    scores = agreement(labels, reference[0])
    assert min(scores.values()) >= SAME_PLANE, f"{layout}: Dice {scores}"
