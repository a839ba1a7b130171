"""Issue 2 "done when": the same patient scanned in any orientation gives labels at the same place.

One phantom anatomy (fixed seed) is rendered onto many acquisition grids — head-first
and feet-first, supine and prone, shuffled file order, non-square matrix, anisotropic
pixels, oblique and sagittal MR — written as real DICOM by the product writer, and read
back by the product reader (``image_io.load_image``).  For every grid:

* ``truth.nii.gz`` loads on exactly the grid of the DICOM series;
* each structure's centroid in LPS mm matches the reference (HFS axial) within about
  one voxel;
* after nearest-neighbour resampling onto the reference grid (SimpleITK), Dice >= 0.95.

Positions are compared in LPS millimetres, never as array indices.
"""

from __future__ import annotations

import numpy as np
import pytest

from CervixAutoSegLib.image_io import load_image
from CervixAutoSegLib.phantom import make_anatomy, make_grid, render, reoriented, write_phantom

SEED = 31
CT_PIXEL_MM, CT_SLICE_MM = 1.25, 2.5
MR_PIXEL_MM, MR_SLICE_MM = 0.9, 3.0
FOV_MM = (300.0, 300.0, 120.0)
MR_FOV_MM = (288.0, 288.0, 220.0)
"""Large enough to hold the whole organ (uterus down to the introitus) in every plane."""
MIN_DICE = 0.95
MAX_ROUNDING_VOXELS = 5
"""Voxels whose centre is within float32 rounding of a surface (of ~10^5 labelled)."""
CT_STRUCTURES = {1: "bladder", 2: "rectum", 3: "CTV-N", 4: "CTV-UV"}
MR_STRUCTURES = {1: "organ", 2: "tumour"}


@pytest.fixture(scope="module")
def anatomy():
    # A tumour big enough that one-voxel quantisation cannot dominate its Dice.
    return make_anatomy(SEED, patient_position="HFS", tumour_radius_mm=18.0, tumour_foci=1)


@pytest.fixture(scope="module")
def centre(anatomy):
    """LPS mm of the middle of the true pelvis."""
    return anatomy.to_lps([0.0, 20.0, 10.0])


@pytest.fixture(scope="module")
def mr_centre(anatomy):
    """LPS mm of the middle of the uterus-cervix-vagina axis."""
    return anatomy.to_lps([0.0, 30.0, 0.0])


def ct_grids(centre):
    base = make_grid(centre, FOV_MM, (CT_PIXEL_MM, CT_PIXEL_MM), CT_SLICE_MM)
    return {
        "HFS": (base, None),
        "FFS": (reoriented(base, "FFS"), None),
        "HFP": (reoriented(base, "HFP"), None),
        "FFP": (reoriented(base, "FFP"), None),
        "shuffled files": (base, 1234),
        "non-square matrix": (make_grid(centre, FOV_MM, (CT_PIXEL_MM, CT_PIXEL_MM), CT_SLICE_MM,
                                        matrix=(256, 208)), None),
        "anisotropic pixels": (make_grid(centre, FOV_MM, (1.0, 1.4), CT_SLICE_MM, patient_position="FFS"), None),
    }


def mr_grids(centre):
    pixels = (MR_PIXEL_MM, MR_PIXEL_MM)
    return {
        "oblique axial": (make_grid(centre, MR_FOV_MM, pixels, MR_SLICE_MM, tilt_degrees=(14, 0, 9)), 99),
        "sagittal": (make_grid(centre, MR_FOV_MM, pixels, MR_SLICE_MM, plane="sagittal"), None),
        "oblique sagittal, prone": (make_grid(centre, MR_FOV_MM, pixels, MR_SLICE_MM, plane="sagittal",
                                              tilt_degrees=(0, 0, -12), patient_position="HFP"), None),
    }


def acquire(anatomy, grid, modality, folder, shuffle_seed=None):
    """Render, write as DICOM + truth.nii.gz, read both back with the product reader."""
    case = render(anatomy, grid, modality, seed=SEED)
    write_phantom(case, folder, shuffle_seed=shuffle_seed)
    return case, load_image(folder / "dicom"), load_image(folder / "truth.nii.gz")


def centroid_lps(volume, value) -> np.ndarray:
    k, j, i = np.nonzero(volume.array == value)
    return volume.index_to_physical(np.stack([i, j, k], axis=1)).mean(axis=0)


def resample_nearest(moving, reference) -> np.ndarray:
    """``moving`` labels on ``reference``'s grid (z, y, x), nearest neighbour, 0 outside."""
    import SimpleITK as sitk

    resampled = sitk.Resample(moving.to_sitk(), reference.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor,
                              0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(resampled)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture(scope="module")
def ct_reference(anatomy, centre, tmp_path_factory):
    grid, _ = ct_grids(centre)["HFS"]
    return acquire(anatomy, grid, "CT", tmp_path_factory.mktemp("ct_reference"))[2]


@pytest.fixture(scope="module")
def mr_reference(anatomy, mr_centre, tmp_path_factory):
    grid = make_grid(mr_centre, MR_FOV_MM, (MR_PIXEL_MM, MR_PIXEL_MM), MR_SLICE_MM)
    return acquire(anatomy, grid, "MR", tmp_path_factory.mktemp("mr_reference"))[2]


def check_same_place(truth, reference, structures, image, case):
    # The truth file sits exactly on the DICOM grid, voxel for voxel.
    assert truth.same_grid(image, tolerance=1e-3)
    assert np.array_equal(image.array, case.image.array)
    assert np.array_equal(truth.array, case.labels.array)
    tolerance_mm = float(max(np.max(truth.spacing), np.max(reference.spacing)))
    resampled = resample_nearest(truth, reference)
    for value, name in structures.items():
        assert np.any(truth.array == value), f"{name} missing"
        offset = np.linalg.norm(centroid_lps(truth, value) - centroid_lps(reference, value))
        assert offset <= tolerance_mm, f"{name}: centroid {offset:.2f} mm away (tolerance {tolerance_mm} mm)"
        score = dice(resampled == value, reference.array == value)
        assert score >= MIN_DICE, f"{name}: Dice {score:.3f} after resampling onto the HFS grid"


@pytest.mark.parametrize("variant", list(ct_grids((0, 0, 0))))
def test_ct_labels_at_the_same_lps_place(anatomy, centre, ct_reference, tmp_path, variant):
    grid, shuffle_seed = ct_grids(centre)[variant]
    case, image, truth = acquire(anatomy, grid, "CT", tmp_path / "case", shuffle_seed)
    if variant != "HFS":
        assert not np.array_equal(image.direction, ct_reference.direction) or variant == "shuffled files" \
            or image.shape != ct_reference.shape
    check_same_place(truth, ct_reference, CT_STRUCTURES, image, case)


@pytest.mark.parametrize("variant", list(mr_grids((0, 0, 0))))
def test_mr_labels_at_the_same_lps_place(anatomy, mr_centre, mr_reference, tmp_path, variant):
    grid, shuffle_seed = mr_grids(mr_centre)[variant]
    case, image, truth = acquire(anatomy, grid, "MR", tmp_path / "case", shuffle_seed)
    assert image.modality == "MR"
    check_same_place(truth, mr_reference, MR_STRUCTURES, image, case)


def test_shuffled_files_really_are_shuffled(anatomy, centre, tmp_path):
    import pydicom

    grid, _ = ct_grids(centre)["HFS"]
    case = render(anatomy, grid, "CT", seed=SEED)
    write_phantom(case, tmp_path / "s", shuffle_seed=7)
    files = sorted((tmp_path / "s" / "dicom").iterdir())
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    assert z != sorted(z) and z != sorted(z, reverse=True)


def test_feet_first_and_prone_flip_the_array_not_the_patient(anatomy, centre, tmp_path):
    """The same voxel of the patient lands at mirrored array positions in FFS/HFP: the
    labels are not equal as arrays, yet equal after placing them by LPS position."""
    base = ct_grids(centre)["HFS"][0]
    hfs = render(anatomy, base, "CT", seed=SEED).labels
    ffs = render(anatomy, reoriented(base, "FFS"), "CT", seed=SEED).labels
    hfp = render(anatomy, reoriented(base, "HFP"), "CT", seed=SEED).labels
    assert not np.array_equal(hfs.array, ffs.array) and not np.array_equal(hfs.array, hfp.array)
    # FFS reverses columns (x) and slices (z); HFP reverses columns and rows (y).  A
    # voxel centre lying on a surface to float32 precision may fall either way.
    labelled = int((hfs.array > 0).sum())
    assert labelled > 0
    assert np.count_nonzero(hfs.array[::-1, :, ::-1] != ffs.array) <= MAX_ROUNDING_VOXELS
    assert np.count_nonzero(hfs.array[:, ::-1, ::-1] != hfp.array) <= MAX_ROUNDING_VOXELS
