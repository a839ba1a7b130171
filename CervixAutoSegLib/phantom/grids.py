"""Acquisition grids: where a scanner puts its voxels in patient LPS space.

An :class:`AcquisitionGrid` is the geometry half of a :class:`~CervixAutoSegLib.volume.Volume`
(size, spacing, origin, direction, all in (i, j, k) = (x, y, z) order, LPS mm) plus the
DICOM Patient Position that goes with it.  The phantom anatomy is defined in continuous
LPS mm, so the same patient can be rendered onto any of these grids.

Image axes per patient position follow the DICOM convention for axial slices (Image
Orientation (Patient) row, column):

======  ==============  ==============  ===============================
 pos     row (+i)        column (+j)     slice (+k) = row x column
======  ==============  ==============  ===============================
 HFS     +x (to left)    +y (to post.)   +z (to head)
 FFS     -x              +y              -z (to feet)
 HFP     -x              -y              +z
 FFP     +x              -y              -z
======  ==============  ==============  ===============================

Sagittal MR: row +y (anterior to posterior), column -z (head to feet), slice -x
(left to right); coronal: row +x, column -z, slice +y.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ..volume import Volume
from .shapes import rotation_xyz

AXIAL_AXES = {
    "HFS": ((1, 0, 0), (0, 1, 0)),
    "FFS": ((-1, 0, 0), (0, 1, 0)),
    "HFP": ((-1, 0, 0), (0, -1, 0)),
    "FFP": ((1, 0, 0), (0, -1, 0)),
}
"""(row, column) LPS unit vectors of an axial image per Patient Position."""

SAGITTAL_AXES = ((0, 1, 0), (0, 0, -1))
CORONAL_AXES = ((1, 0, 0), (0, 0, -1))
PLANES = ("axial", "sagittal", "coronal")


@dataclasses.dataclass(frozen=True)
class AcquisitionGrid:
    """Voxel grid of one image series.

    Attributes:
        size: number of voxels along (i, j, k) = (columns, rows, slices).
        spacing: mm along (i, j, k).
        origin: LPS mm of the centre of voxel (0, 0, 0).
        direction: 3x3, column c = LPS unit vector of index axis c.
        patient_position: DICOM Patient Position (HFS, FFS, HFP, FFP).
        plane: "axial", "sagittal" or "coronal" (before any obliquity).
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    patient_position: str = "HFS"
    plane: str = "axial"

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (nz, ny, nx) = (k, j, i)."""
        return (int(self.size[2]), int(self.size[1]), int(self.size[0]))

    @property
    def index_to_lps(self) -> np.ndarray:
        """4x4 affine (i, j, k, 1) → LPS mm."""
        affine = np.eye(4)
        affine[:3, :3] = np.asarray(self.direction, float) * np.asarray(self.spacing, float)[None, :]
        affine[:3, 3] = self.origin
        return affine

    @property
    def center(self) -> np.ndarray:
        """LPS mm of the grid centre."""
        half = (np.asarray(self.size, float) - 1) / 2
        return self.index_to_lps[:3, :3] @ half + np.asarray(self.origin, float)

    def volume(self, array: np.ndarray, modality: str = "", meta: dict | None = None) -> Volume:
        """A Volume with this geometry holding ``array`` (shape :attr:`shape`)."""
        if array.shape != self.shape:
            raise ValueError(f"array shape {array.shape} does not match grid {self.shape}")
        return Volume(array, self.spacing, self.origin, self.direction, modality=modality, meta=meta or {})

    def to_dict(self) -> dict:
        """JSON-able description."""
        return {
            "size_ijk": [int(v) for v in self.size],
            "spacing_ijk_mm": [float(v) for v in self.spacing],
            "origin_lps_mm": [float(v) for v in self.origin],
            "direction": np.asarray(self.direction, float).round(9).tolist(),
            "patient_position": self.patient_position,
            "plane": self.plane,
        }


def _centred(center: Sequence[float], direction: np.ndarray, spacing: Sequence[float],
             size: Sequence[int]) -> tuple[float, float, float]:
    """Origin (LPS mm of voxel 0) that puts the grid centre at ``center``."""
    half = (np.asarray(size, float) - 1) / 2
    origin = np.asarray(center, float) - (direction * np.asarray(spacing, float)[None, :]) @ half
    return tuple(float(v) for v in origin)  # type: ignore[return-value]


def plane_direction(plane: str, patient_position: str = "HFS", tilt_degrees: Sequence[float] = (0, 0, 0)) -> np.ndarray:
    """3x3 direction (columns = LPS unit vectors of i, j, k) of an image plane.

    ``tilt_degrees`` rotates the whole frame about the LPS x, y, z axes (an oblique
    acquisition); the slice axis stays ``row x column`` (a right-handed grid).
    """
    if plane == "axial":
        if patient_position not in AXIAL_AXES:
            raise ValueError(f"unsupported patient position {patient_position!r}; use one of {sorted(AXIAL_AXES)}")
        row, column = AXIAL_AXES[patient_position]
    elif plane == "sagittal":
        row, column = SAGITTAL_AXES
    elif plane == "coronal":
        row, column = CORONAL_AXES
    else:
        raise ValueError(f"unknown plane {plane!r}; use one of {PLANES}")
    row, column = np.asarray(row, float), np.asarray(column, float)
    direction = np.stack([row, column, np.cross(row, column)], axis=1)
    return rotation_xyz(tilt_degrees) @ direction


def make_grid(
    center: Sequence[float],
    extent_mm: Sequence[float],
    pixel_spacing: Sequence[float],
    slice_thickness: float,
    *,
    matrix: Sequence[int] | None = None,
    plane: str = "axial",
    patient_position: str = "HFS",
    tilt_degrees: Sequence[float] = (0, 0, 0),
) -> AcquisitionGrid:
    """A grid centred on ``center`` (LPS mm).

    Args:
        extent_mm: field of view along (i, j, k) in mm; used for (i, j) only when
            ``matrix`` is None, and always for the slice count along k.
        pixel_spacing: (column spacing along i, row spacing along j) in mm.
        slice_thickness: spacing along k (contiguous slices), mm.
        matrix: (columns, rows); default ``extent / spacing`` rounded up.
    """
    direction = plane_direction(plane, patient_position, tilt_degrees)
    spacing = (float(pixel_spacing[0]), float(pixel_spacing[1]), float(slice_thickness))
    if matrix is None:
        matrix = [int(np.ceil(extent_mm[a] / spacing[a])) for a in range(2)]
    slices = max(int(np.ceil(extent_mm[2] / slice_thickness)) + 1, 2)
    size = (int(matrix[0]), int(matrix[1]), slices)
    return AcquisitionGrid(size, spacing, _centred(center, direction, spacing, size), direction,
                           patient_position, plane)


def reoriented(grid: AcquisitionGrid, patient_position: str) -> AcquisitionGrid:
    """The same field of view and spacing as axial ``grid`` in another patient position."""
    direction = plane_direction("axial", patient_position)
    return AcquisitionGrid(grid.size, grid.spacing, _centred(grid.center, direction, grid.spacing, grid.size),
                           direction, patient_position, "axial")
