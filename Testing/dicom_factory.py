"""Test helpers: volumes with known geometry, real DICOM series with deliberate defects.

Every series is written by the product's :func:`write_dicom_series` (real Part 10 files
through pydicom) and then, for the bad-input cases, edited with pydicom the way broken
exports look in the wild.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from CervixAutoSegLib.dicom_writer import write_dicom_series
from CervixAutoSegLib.volume import Volume

# Image Orientation (Patient) row/column cosines a scanner writes for each patient
# position (LPS): the image is displayed with the patient's right on the left and
# anterior up whatever the position on the table.
ORIENTATION_BY_POSITION = {
    "HFS": ((1, 0, 0), (0, 1, 0)),
    "FFS": ((-1, 0, 0), (0, 1, 0)),
    "HFP": ((-1, 0, 0), (0, -1, 0)),
    "FFP": ((1, 0, 0), (0, -1, 0)),
    "HFDL": ((0, -1, 0), (1, 0, 0)),
}


def rotation(x_degrees: float, y_degrees: float, z_degrees: float) -> np.ndarray:
    """3x3 rotation, applied x then y then z (extrinsic), as LPS direction columns."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("xyz", [x_degrees, y_degrees, z_degrees], degrees=True).as_matrix()


def direction_for(position: str, slice_sign: float = 1.0) -> np.ndarray:
    """Direction columns (row, column, slice) for a patient position; slice along ±normal."""
    row, column = (np.asarray(v, float) for v in ORIENTATION_BY_POSITION[position])
    return np.column_stack([row, column, slice_sign * np.cross(row, column)])


def make_volume(
    shape_zyx: tuple[int, int, int] = (6, 40, 56),
    spacing_xyz: tuple[float, float, float] = (0.7, 1.1, 2.5),
    origin: tuple[float, float, float] = (-101.3, -57.25, 33.5),
    direction: np.ndarray | None = None,
    modality: str = "CT",
    seed: int = 0,
) -> Volume:
    """Random integer voxels (HU -1024..3000 for CT, 0..4000 for MR): every slice differs."""
    rng = np.random.default_rng(seed)
    low, high = (-1024, 3000) if modality == "CT" else (0, 4000)
    array = rng.integers(low, high, size=shape_zyx).astype(np.int16)
    return Volume(array, spacing_xyz, origin, np.eye(3) if direction is None else direction, modality=modality)


def write(volume: Volume, folder: Path, **options) -> list[Path]:
    """Write ``volume`` with its own modality unless overridden."""
    options.setdefault("modality", volume.modality or "CT")
    return write_dicom_series(volume, folder, **options)


def edit_files(paths: list[Path], edit: Callable) -> None:
    """Apply ``edit(dataset)`` to each file and save it back (simulates a broken export)."""
    import pydicom

    for path in paths:
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path)


def assert_same_image_in_lps(expected: Volume, actual: Volume, tolerance: float = 1e-6) -> None:
    """Every voxel centre of ``expected`` is a voxel centre of ``actual`` with the same value.

    Compares in LPS mm, so a reader may legitimately reverse or re-order the axes; the
    grids must coincide to ``tolerance`` (in voxel units) and cover the same voxels.
    """
    nz, ny, nx = expected.shape
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).reshape(-1, 3)
    mapped = actual.physical_to_index(expected.index_to_physical(ijk))
    rounded = np.round(mapped)
    assert np.max(np.abs(mapped - rounded)) < tolerance, "voxel centres do not coincide"
    rounded = rounded.astype(int)
    size = np.array(actual.size_ijk)
    assert np.all(rounded >= 0) and np.all(rounded < size), "grids do not cover the same region"
    assert expected.array.size == actual.array.size
    values = actual.array[rounded[:, 2], rounded[:, 1], rounded[:, 0]]
    np.testing.assert_array_equal(values, expected.array.reshape(-1))


# ----------------------------------------------------------------- DICOM-RT cohorts (dataset import)
def small_ct_phantom(seed: int, *, position: str = "HFS", tilt_degrees: tuple[float, float, float] | None = None,
                     matrix: int = 64, pixel_mm: float = 7.0, slice_mm: float = 8.0):
    """A small CT phantom (:mod:`CervixAutoSegLib.phantom`): ``matrix``² pixels, a few dozen slices.

    ``tilt_degrees``: an oblique acquisition (the phantom's own grid, rotated about LPS x, y, z).
    """
    from CervixAutoSegLib.phantom import make_ct_phantom
    from CervixAutoSegLib.phantom.grids import make_grid

    case = make_ct_phantom(seed, matrix=matrix, pixel_spacing_mm=pixel_mm, slice_thickness_mm=slice_mm,
                           patient_position=position)
    if tilt_degrees is None:
        return case
    grid = case.grid
    extent = (0.0, 0.0, (grid.size[2] - 1) * grid.spacing[2])
    tilted = make_grid(grid.center, extent, grid.spacing[:2], grid.spacing[2], matrix=grid.size[:2],
                       patient_position=position, tilt_degrees=tilt_degrees)
    return make_ct_phantom(seed, grid=tilted, patient_position=position)


def write_patient_series(case, folder: Path, *, patient_id: str, patient_name: str, shuffle_seed: int = 0,
                         study_instance_uid: str | None = None) -> Volume:
    """Write a phantom's image as a DICOM series of one patient; returns the series as read back
    (its ``meta`` carries the identity the RTSTRUCT writer references)."""
    from CervixAutoSegLib.dicom_series import read_dicom_series

    paths = write_dicom_series(case.image, folder, modality=case.modality, patient_position=case.patient_position,
                               patient={"PatientID": patient_id, "PatientName": patient_name},
                               study_instance_uid=study_instance_uid, shuffle_seed=shuffle_seed)
    return read_dicom_series(paths)


def write_named_rtstruct(path: Path, labels: np.ndarray, reference: Volume, rois: list[tuple[str, tuple[int, ...]]],
                         *, date_time: str | None = None) -> Path:
    """An RTSTRUCT on ``reference`` whose ROIs have the given names, each covering the listed label values
    of ``labels`` ((z, y, x) on the reference grid); a value absent from ``labels`` gives an empty ROI.

    Written by the product's writer (one ROI per stand-in structure, ``containment`` choosing its
    values), then renamed with pydicom the way a planning system names ROIs.  ``date_time``
    (``YYYYMMDDHHMMSS``) sets Structure Set Date/Time.
    """
    import dataclasses

    import pydicom

    from CervixAutoSegLib.ct.family import CT_STRUCTURES
    from CervixAutoSegLib.rtstruct import write_rtstruct

    template = CT_STRUCTURES[0]
    structures = [dataclasses.replace(template, value=number, name=f"ROI{number}")
                  for number in range(1, len(rois) + 1)]
    containment = {number: values for number, (_, values) in enumerate(rois, 1)}
    write_rtstruct(path, reference.with_array(np.asarray(labels, dtype=np.uint8)), reference, structures,
                   model_name="manual", model_version="1", containment=containment)
    dataset = pydicom.dcmread(path)
    for item, (name, _) in zip(dataset.StructureSetROISequence, rois):
        item.ROIName = name
    for item, (name, _) in zip(dataset.RTROIObservationsSequence, rois):
        if "ROIObservationLabel" in item:
            item.ROIObservationLabel = name[:16]
    if date_time:
        dataset.StructureSetDate, dataset.StructureSetTime = date_time[:8], date_time[8:]
    dataset.save_as(path)
    return path


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice similarity of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
