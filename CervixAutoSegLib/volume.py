"""The one image type of the project: voxels plus their full physical geometry.

Conventions, stated once and used everywhere in the package:

* ``Volume.array`` is indexed ``array[k, j, i]``, i.e. axis order **(z, y, x)** — the
  same order as ``SimpleITK.GetArrayFromImage`` and the same order a DICOM series is
  stacked in (``k`` = slice, ``j`` = row, ``i`` = column).
* Geometry is given in **(i, j, k) = (x, y, z)** order, as in ITK and DICOM:
  ``spacing[0]`` is the column spacing (distance between neighbouring ``i``),
  ``direction[:, 0]`` is the unit LPS vector along increasing ``i``.
* The physical frame is **DICOM patient LPS** in millimetres.  Slicer's RAS frame is
  reached only through :meth:`Volume.ijk_to_ras` / :meth:`Volume.from_ijk_to_ras`.
* ``origin`` is the LPS position of the *centre* of voxel ``(i, j, k) = (0, 0, 0)``.

The direction matrix must be invertible but need not be orthogonal: a CT acquired
with gantry tilt is represented exactly as a sheared grid (its slice axis is not
perpendicular to the image rows and columns).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
"""Flips L/P to R/A; its own inverse."""


def _numbers(values: Any, digits: int = 4) -> str:
    """Plain one-line text of numbers (nested lists/arrays kept as brackets): no ``array(``, no ``np.float64(``."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        return f"{float(array):.{digits}g}"
    return "(" + ", ".join(_numbers(item, digits) for item in array) + ")"


def _as_vector(values: Sequence[float], name: str) -> np.ndarray:
    try:
        vector = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be 3 finite numbers, got {values}") from None
    if vector.shape != (3,) or not np.all(np.isfinite(vector)):
        raise InputError(f"{name} must be 3 finite numbers, got {_numbers(vector)}")
    return vector


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image on a physical grid.

    Attributes:
        array: voxel values, shape ``(nz, ny, nx)`` in (z, y, x) = (k, j, i) order.
        spacing: voxel size in mm along (i, j, k) = (x, y, z).
        origin: LPS mm of the centre of voxel (i, j, k) = (0, 0, 0).
        direction: 3x3; column ``c`` is the LPS unit vector of array axis (i, j, k)[c].
        modality: ``"CT"``, ``"MR"`` or ``""`` when unknown.
        meta: free-form provenance (series UID, per-slice SOP instance UIDs and
            positions, series description, ...).  Not part of the geometry.
    """

    array: np.ndarray
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray
    modality: str = ""
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim != 3:
            raise InputError(f"a volume needs a 3D array, got shape {array.shape}")
        spacing = _as_vector(self.spacing, "spacing")
        if np.any(spacing <= 0):
            raise InputError(f"spacing must be positive, got {_numbers(spacing)}")
        direction = np.asarray(self.direction, dtype=np.float64)
        if direction.shape != (3, 3) or not np.all(np.isfinite(direction)):
            raise InputError(f"direction must be a finite 3x3 matrix, got {_numbers(direction)}")
        if abs(np.linalg.det(direction)) < 1e-6:
            raise InputError("direction matrix is singular: the image axes are not independent")
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", _as_vector(self.origin, "origin"))
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "meta", dict(self.meta))

    # ------------------------------------------------------------------ shape
    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(nz, ny, nx)``."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def size_ijk(self) -> tuple[int, int, int]:
        """Grid size in (i, j, k) = (x, y, z) order, as ITK reports it."""
        nz, ny, nx = self.array.shape
        return (nx, ny, nz)

    # --------------------------------------------------------------- geometry
    @property
    def index_to_lps(self) -> np.ndarray:
        """4x4 affine mapping homogeneous (i, j, k, 1) to LPS mm."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction * self.spacing[np.newaxis, :]
        affine[:3, 3] = self.origin
        return affine

    @property
    def ijk_to_ras(self) -> np.ndarray:
        """4x4 affine (i, j, k, 1) → RAS mm: what a Slicer volume node stores."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.index_to_lps

    def index_to_physical(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous (i, j, k) indices, shape (..., 3) → LPS mm, shape (..., 3)."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ (self.direction * self.spacing).T + self.origin

    def physical_to_index(self, lps: np.ndarray) -> np.ndarray:
        """LPS mm, shape (..., 3) → continuous (i, j, k) indices, shape (..., 3)."""
        lps = np.asarray(lps, dtype=np.float64)
        inverse = np.linalg.inv(self.direction * self.spacing)
        return (lps - self.origin) @ inverse.T

    @property
    def is_orthogonal(self) -> bool:
        """False for a sheared grid, e.g. a CT acquired with gantry tilt."""
        return bool(np.allclose(self.direction.T @ self.direction, np.eye(3), atol=1e-6))

    @property
    def slice_normal(self) -> np.ndarray:
        """Unit LPS normal of the (i, j) image planes (row x column direction)."""
        normal = np.cross(self.direction[:, 0], self.direction[:, 1])
        return normal / np.linalg.norm(normal)

    def same_grid(self, other: "Volume", tolerance: float = 1e-4) -> bool:
        """True when ``other`` has the same shape and geometry (within ``tolerance`` mm)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tolerance)
            and np.allclose(self.origin, other.origin, atol=tolerance)
            and np.allclose(self.direction, other.direction, atol=tolerance)
        )

    def with_array(self, array: np.ndarray, **changes: Any) -> "Volume":
        """Same geometry, new voxels (shape must match); ``changes`` override other fields."""
        array = np.asarray(array)
        if array.shape != self.shape:
            raise ValueError(f"array shape {array.shape} does not match grid {self.shape}")
        return dataclasses.replace(self, array=array, **changes)

    # --------------------------------------------------------- conversions
    def to_sitk(self):
        """Exact copy as a ``SimpleITK.Image`` (same voxels, spacing, origin, direction)."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array), isVector=False)
        image.SetSpacing(tuple(float(v) for v in self.spacing))
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetDirection(tuple(float(v) for v in self.direction.reshape(-1)))
        return image

    @classmethod
    def from_sitk(cls, image, modality: str = "", meta: Mapping[str, Any] | None = None) -> "Volume":
        """Build from a 3D scalar ``SimpleITK.Image`` without touching voxels or geometry."""
        import SimpleITK as sitk

        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(
                f"expected a 3D scalar image, got {image.GetDimension()}D with "
                f"{image.GetNumberOfComponentsPerPixel()} components per voxel"
            )
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=np.asarray(image.GetDirection()).reshape(3, 3),
            modality=modality,
            meta=meta or {},
        )

    @classmethod
    def from_ijk_to_ras(
        cls,
        array: np.ndarray,
        ijk_to_ras: np.ndarray,
        modality: str = "",
        meta: Mapping[str, Any] | None = None,
    ) -> "Volume":
        """Build from a (z, y, x) array and a Slicer-style 4x4 IJK→RAS matrix."""
        ijk_to_ras = np.asarray(ijk_to_ras, dtype=np.float64)
        index_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_ras
        columns = index_to_lps[:3, :3]
        spacing = np.linalg.norm(columns, axis=0)
        return cls(
            array=array,
            spacing=spacing,
            origin=index_to_lps[:3, 3],
            direction=columns / spacing[np.newaxis, :],
            modality=modality,
            meta=meta or {},
        )

    def describe(self) -> str:
        """The grid on one line, for messages: size and spacing (x, y, z), origin and axes in LPS.

        E.g. ``56x40x6 int16 CT, spacing 0.7x1.1x2.5 mm, origin LPS (-101.3, -57.25, 33.5) mm,
        axes (1, 0, 0) (0, 1, 0) (0, 0, 1)``.
        """
        size = "x".join(str(n) for n in self.size_ijk)
        spacing = "x".join(f"{v:.4g}" for v in self.spacing)
        kind = f"{self.array.dtype}{' ' + self.modality if self.modality else ''}"
        axes = " ".join(_numbers(column, 3) for column in self.direction.T)
        return f"{size} {kind}, spacing {spacing} mm, origin LPS {_numbers(self.origin, 6)} mm, axes {axes}"

    def __repr__(self) -> str:
        return f"Volume({self.describe()})"
