"""The image planes of a DICOM series: where each slice really is, in LPS mm.

Contours are drawn on, and read back from, each image's own plane — Image Position
(Patient) of *that* image plus the series' row/column directions and pixel spacing —
never the Volume's slice axis.  This keeps gantry-tilted and non-uniformly spaced
series exact: their grid is sheared or averaged, their images are not.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import InputError
from ..volume import Volume
from .uids import IMAGE_STORAGE_BY_MODALITY


@dataclasses.dataclass(frozen=True)
class ImagePlanes:
    """Geometry and identity of the images of one series, in array (k) order.

    Attributes:
        positions: Image Position (Patient) of each image, shape ``(nz, 3)``, LPS mm.
        row_direction: LPS unit vector along a row (increasing column index ``i``).
        column_direction: LPS unit vector down a column (increasing row index ``j``).
        column_spacing: mm between neighbouring columns (``i``); DICOM Pixel Spacing[1].
        row_spacing: mm between neighbouring rows (``j``); DICOM Pixel Spacing[0].
        sop_instance_uids: one per image, array order.
        sop_class_uid: SOP Class of the images (CT or MR Image Storage, ...).
    """

    positions: np.ndarray
    row_direction: np.ndarray
    column_direction: np.ndarray
    column_spacing: float
    row_spacing: float
    sop_instance_uids: tuple[str, ...]
    sop_class_uid: str

    @property
    def normal(self) -> np.ndarray:
        """Unit LPS normal of every image plane."""
        normal = np.cross(self.row_direction, self.column_direction)
        return normal / np.linalg.norm(normal)

    @property
    def _in_plane(self) -> np.ndarray:
        """3x2 matrix mapping (row, column) pixel offsets to LPS mm offsets."""
        return np.stack([self.column_direction * self.row_spacing, self.row_direction * self.column_spacing], axis=1)

    def pixel_to_lps(self, k: int, pixels: np.ndarray) -> np.ndarray:
        """(row, column) pixel coordinates on image ``k``, shape (n, 2) → LPS mm, shape (n, 3)."""
        return self.positions[k] + np.asarray(pixels, dtype=np.float64) @ self._in_plane.T

    def lps_to_pixel(self, k: int, points: np.ndarray) -> np.ndarray:
        """LPS mm, shape (n, 3) → (row, column) pixel coordinates on image ``k``, shape (n, 2)."""
        return (np.asarray(points, dtype=np.float64) - self.positions[k]) @ np.linalg.pinv(self._in_plane).T

    def plane_distances(self, point: np.ndarray) -> np.ndarray:
        """Signed distance (mm) of one LPS point to each image plane, shape (nz,)."""
        return (np.asarray(point, dtype=np.float64) - self.positions) @ self.normal

    def slice_gap(self) -> float:
        """Smallest distance (mm) between neighbouring image planes (inf for one image)."""
        if len(self.positions) < 2:
            return float("inf")
        heights = np.sort(self.positions @ self.normal)
        return float(np.min(np.diff(heights)))


def image_planes(reference: Volume) -> ImagePlanes:
    """The planes of the DICOM series ``reference`` was read from.

    Uses ``reference.meta`` (``sop_instance_uids``, ``slice_positions``, ``sop_class_uid``)
    as written by the DICOM series reader.

    Raises:
        InputError: the Volume does not come from a DICOM series.
    """
    meta = reference.meta
    uids = meta.get("sop_instance_uids")
    nz = reference.shape[0]
    if not uids or len(uids) != nz:
        raise InputError("an RTSTRUCT needs the DICOM image series it refers to; this image has no DICOM identity")
    positions = meta.get("slice_positions")
    if positions is None:
        positions = reference.index_to_physical(np.stack([np.zeros(nz), np.zeros(nz), np.arange(nz)], axis=1))
    positions = np.asarray(positions, dtype=np.float64).reshape(nz, 3)
    modality = (meta.get("modality") or reference.modality or "").upper()
    sop_class = meta.get("sop_class_uid") or IMAGE_STORAGE_BY_MODALITY.get(modality)
    if not sop_class:
        raise InputError("the image series has no SOP Class UID and no CT/MR modality to infer it from")
    return ImagePlanes(
        positions=positions,
        row_direction=np.asarray(reference.direction[:, 0], dtype=np.float64),
        column_direction=np.asarray(reference.direction[:, 1], dtype=np.float64),
        column_spacing=float(reference.spacing[0]),
        row_spacing=float(reference.spacing[1]),
        sop_instance_uids=tuple(str(uid) for uid in uids),
        sop_class_uid=str(sop_class),
    )
