"""Mask → RTSTRUCT → independent point-in-polygon rasteriser → mask, across scanner geometries.

Every case writes a real image series with pydicom (shuffled file names), writes the
RTSTRUCT with the product writer, validates it with dciodvfy and the semantic checks,
then rasterises it with Testing/rtstruct_oracle.py (which places contours by their
referenced image and that image's own IPP/IOP) and with the product reader.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from rtstruct_oracle import (
    assert_dciodvfy_clean,
    dice,
    oracle_masks,
    oracle_volume_mask,
    semantic_problems,
    write_series,
)
from scipy import ndimage

from CervixAutoSegLib.dicom_series import read_dicom_series
from CervixAutoSegLib.rtstruct import read_rtstruct, read_rtstruct_masks, write_rtstruct
from CervixAutoSegLib.ct.family import CT_STRUCTURES
from CervixAutoSegLib.mr.family import MR_STRUCTURES

ROWS, COLUMNS, SLICES = 37, 52, 7
MIN_DICE = 0.999


def _unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def _rotation(axis, degrees: float) -> np.ndarray:
    """Rotation matrix about ``axis`` (Rodrigues)."""
    axis = _unit(axis)
    angle = np.deg2rad(degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def _geometry(case: str) -> dict:
    """Series layout of one scanner case: IOP directions, pixel spacing, IPP per acquired slice."""
    start = np.array([-123.4, -87.65, -40.0])
    steps = np.arange(SLICES, dtype=np.float64)
    row, column = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    spacing, position, modality = (0.9765625, 0.9765625), "HFS", "CT"
    normal_steps = steps * 3.0
    if case == "ffs":  # feet first: x flipped, acquired from head to feet
        row, position = np.array([-1.0, 0, 0]), "FFS"
        normal_steps = -steps * 3.0
    elif case == "hfp":  # prone: rows and columns both flipped
        row, column, position = np.array([-1.0, 0, 0]), np.array([0, -1.0, 0]), "HFP"
    elif case == "anisotropic":
        spacing = (0.7, 1.3)
    elif case == "non_uniform":
        normal_steps = np.array([0.0, 2.5, 5.4, 7.5, 9.8, 12.5, 15.3])  # jittered table positions
    elif case == "decubitus":  # HFDL: the patient lies on the left side, rows run posterior
        row, column, position = np.array([0, 1.0, 0]), np.array([-1.0, 0, 0]), "HFDL"
    elif case == "sagittal_mr":  # the usual T2w pelvis plane: rows run posterior, columns to the feet
        row, column, modality = np.array([0, 1.0, 0]), np.array([0, 0, -1.0]), "MR"
        spacing, normal_steps = (0.5, 0.5), steps * 4.0
    elif case == "coronal_mr":
        row, column, modality = np.array([1.0, 0, 0]), np.array([0, 0, -1.0]), "MR"
        spacing, normal_steps = (0.6, 0.6), -steps * 4.5
    elif case == "oblique_mr":
        rotation = _rotation([1.0, 0.3, 0.2], 23.0)
        row, column = rotation @ row, rotation @ column
        spacing, modality, normal_steps = (0.46875, 0.52), "MR", steps * 4.0
    if case == "gantry_tilt":
        # Tilted gantry: image planes tilted about x; the table (IPP) moves along z only.
        tilt = np.deg2rad(15.0)
        column = np.array([0.0, np.cos(tilt), np.sin(tilt)])
        positions = start + np.outer(steps * 2.5, [0.0, 0.0, 1.0])
    else:
        normal = np.cross(row, column)
        positions = start + np.outer(normal_steps, normal)
    return {"row_direction": row, "column_direction": column, "pixel_spacing": spacing,
            "patient_position": position, "modality": modality, "positions": positions}


def _shapes(shape: tuple[int, int, int], seed: int) -> dict[int, np.ndarray]:
    """Masks that stress contouring: holes, nested islands, border contact, single voxels, noise."""
    nz, ny, _ = shape
    ring = np.zeros(shape, dtype=bool)
    ring[1:6, 3:28, 3:26] = True          # outer region
    ring[1:6, 7:24, 7:22] = False         # hole
    ring[1:6, 11:20, 11:18] = True        # island in the hole
    ring[2:5, 14:17, 13:16] = False       # hole in the island
    ring[3, 15, 14] = True                # single voxel in that hole
    border = np.zeros(shape, dtype=bool)
    border[:, 0:4, 30:] = True            # touches the top and right image borders
    border[nz - 1, ny - 1, 0] = True      # single corner voxel on the last slice
    border[0, 20, 40] = True              # lone voxel
    border[0, 21, 41] = True              # diagonal neighbour: a saddle for marching squares
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(0.5, 1.5, 1.5)) > 0.15
    noise[:, :, :30] = False
    noise[:, :6, :] = False
    small = np.zeros(shape, dtype=bool)
    small[2, 30, 8] = True
    small[4, 30:33, 8:10] = True
    return {1: ring, 2: border, 3: noise, 4: small}


def _label_map(masks: dict[int, np.ndarray]) -> np.ndarray:
    labels = np.zeros(next(iter(masks.values())).shape, dtype=np.uint8)
    for value, mask in masks.items():
        labels[mask & (labels == 0)] = value
    return labels


CASES = ["hfs", "ffs", "hfp", "decubitus", "anisotropic", "non_uniform", "gantry_tilt", "sagittal_mr", "coronal_mr",
         "oblique_mr"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("keyhole", [False, True], ids=["holes", "keyhole"])
def test_round_trip_matches_independent_rasteriser(tmp_path, case, keyhole):
    geometry = _geometry(case)
    series = tmp_path / "series"
    write_series(series, ROWS, COLUMNS, geometry.pop("positions"), shuffle_seed=7, **geometry)
    reference = read_dicom_series(series)
    labels = _label_map(_shapes(reference.shape, seed=len(case)))
    structures = CT_STRUCTURES
    path = write_rtstruct(tmp_path / "rs.dcm", reference.with_array(labels), reference, structures,
                          model_name="ResAU-Net", model_version="test", keyhole=keyhole)

    assert_dciodvfy_clean(path)
    assert semantic_problems(path, series) == []
    oracle = oracle_masks(path, series)
    product = read_rtstruct(path, reference, structures).array
    for structure in structures:
        truth = labels == structure.value
        assert truth.any()
        assert dice(oracle_volume_mask(oracle[structure.name], reference), truth) >= MIN_DICE, structure.name
        assert dice(product == structure.value, truth) >= MIN_DICE, structure.name
        # Stronger than the Dice bound: no pixel centre is near a contour, so the masks are identical.
        assert np.array_equal(oracle_volume_mask(oracle[structure.name], reference), truth), structure.name
    assert np.array_equal(product, labels)


def test_mr_organ_roi_contains_tumour_painted_over_it(tmp_path):
    geometry = _geometry("oblique_mr")
    series = tmp_path / "series"
    write_series(series, ROWS, COLUMNS, geometry.pop("positions"), shuffle_seed=3, **geometry)
    reference = read_dicom_series(series)
    labels = np.zeros(reference.shape, dtype=np.uint8)
    labels[1:6, 5:30, 5:40] = 1
    labels[2:5, 10:20, 12:25] = 2  # tumour painted over the organ
    organ, tumour = MR_STRUCTURES
    path = write_rtstruct(tmp_path / "rs.dcm", reference.with_array(labels), reference, MR_STRUCTURES,
                          model_name="PocketNet", model_version="test", containment={organ.value: (1, 2)})

    assert_dciodvfy_clean(path)
    assert semantic_problems(path, series) == []
    oracle = oracle_masks(path, series)
    organ_mask = oracle_volume_mask(oracle[organ.name], reference)
    tumour_mask = oracle_volume_mask(oracle[tumour.name], reference)
    assert dice(organ_mask, labels >= 1) >= MIN_DICE
    assert dice(tumour_mask, labels == 2) >= MIN_DICE
    # Per-ROI masks keep the overlap; the label map paints the tumour over the organ again.
    masks = read_rtstruct_masks(path, reference)
    assert np.array_equal(masks[organ.name], labels >= 1)
    assert np.array_equal(read_rtstruct(path, reference, MR_STRUCTURES).array, labels)


@pytest.mark.parametrize("case", ["ffs", "gantry_tilt", "oblique_mr"])
def test_round_trip_on_series_from_the_product_dicom_writer(tmp_path, case):
    """Full CT/MR files (pixel data, MR sequence attributes) as the phantom command writes them."""
    from CervixAutoSegLib.dicom_writer import write_dicom_series
    from CervixAutoSegLib.volume import Volume

    geometry = _geometry(case)
    positions = geometry["positions"]
    step = (positions[-1] - positions[0]) / (SLICES - 1)
    row_spacing, column_spacing = geometry["pixel_spacing"]
    image = Volume(
        array=np.full((SLICES, ROWS, COLUMNS), 20, dtype=np.int16),
        spacing=(column_spacing, row_spacing, np.linalg.norm(step)),
        origin=positions[0],
        direction=np.stack([geometry["row_direction"], geometry["column_direction"], step / np.linalg.norm(step)],
                           axis=1),
    )
    series = tmp_path / "series"
    write_dicom_series(image, series, modality=geometry["modality"], patient_position=geometry["patient_position"],
                       shuffle_seed=11, slice_positions=positions)
    reference = read_dicom_series(series)
    labels = _label_map(_shapes(reference.shape, seed=1))
    path = write_rtstruct(tmp_path / "rs.dcm", reference.with_array(labels), reference, CT_STRUCTURES,
                          model_name="ResAU-Net", model_version="test")

    assert_dciodvfy_clean(path)
    assert semantic_problems(path, series) == []
    oracle = oracle_masks(path, series)
    for structure in CT_STRUCTURES:
        truth = labels == structure.value
        assert dice(oracle_volume_mask(oracle[structure.name], reference), truth) >= MIN_DICE, structure.name


REAL_CT = Path(__file__).parent / "Data" / "real_ct_abdomen_pelvis_3mm.nii.gz"  # see Data/README.md


def _real_ct_tissue_labels(hu: np.ndarray) -> np.ndarray:
    """Four tissue classes thresholded from real HU: ragged shapes with holes, islands, lone voxels."""
    body = ndimage.binary_fill_holes(hu > -500, structure=np.ones((1, 3, 3)))
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[body] = 1                              # soft tissue (whatever is left)
    labels[body & (hu < -50) & (hu > -200)] = 2   # fat: fragmented, many holes
    labels[body & (hu > 200)] = 3                 # bone: rings (cortex) around marrow
    labels[body & (hu < -500)] = 4                # gas inside the body: small islands
    return labels


def test_round_trip_on_real_ct_tissue_classes(tmp_path):
    import SimpleITK as sitk

    from CervixAutoSegLib.dicom_writer import write_dicom_series
    from CervixAutoSegLib.volume import Volume

    image = Volume.from_sitk(sitk.ReadImage(str(REAL_CT)))
    first, last = 42, 50  # 8 slices through the pelvis keep it fast
    image = dataclasses.replace(image, array=image.array[first:last].astype(np.int16),
                                origin=image.index_to_physical([0, 0, first]))
    series = tmp_path / "series"
    write_dicom_series(image, series, modality="CT", patient_position="HFS", shuffle_seed=2)
    reference = read_dicom_series(series)
    labels = _real_ct_tissue_labels(image.array)
    path = write_rtstruct(tmp_path / "rs.dcm", reference.with_array(labels), reference, CT_STRUCTURES,
                          model_name="thresholds", model_version="test")

    assert_dciodvfy_clean(path)
    assert semantic_problems(path, series) == []
    oracle = oracle_masks(path, series)
    product = read_rtstruct(path, reference, CT_STRUCTURES).array
    for structure in CT_STRUCTURES:
        truth = labels == structure.value
        assert truth.sum() > 20, structure.name
        assert dice(oracle_volume_mask(oracle[structure.name], reference), truth) >= MIN_DICE, structure.name
    assert np.array_equal(product, labels)


def test_rtstruct_is_found_next_to_its_images_by_series(tmp_path):
    from CervixAutoSegLib.rtstruct import find_rtstructs, referenced_series

    geometry = _geometry("hfs")
    export = tmp_path / "clinic_export"
    write_series(export / "ct", ROWS, COLUMNS, geometry.pop("positions"), shuffle_seed=1, **geometry)
    reference = read_dicom_series(export / "ct")
    labels = np.zeros(reference.shape, dtype=np.uint8)
    labels[2:4, 5:9, 5:9] = 1
    path = write_rtstruct(export / "RS.dcm", reference.with_array(labels), reference, CT_STRUCTURES,
                          model_name="m", model_version="1")
    (export / "notes.txt").write_text("not DICOM")

    assert referenced_series(path) == {reference.meta["series_instance_uid"]}
    assert find_rtstructs(export) == [path]
    assert find_rtstructs(export, reference.meta["series_instance_uid"]) == [path]
    assert find_rtstructs(export, "1.2.3.4") == []
