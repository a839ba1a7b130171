"""Rasterise an :class:`~.anatomy.Anatomy` onto an :class:`~.grids.AcquisitionGrid`.

Shapes are evaluated at voxel-centre positions only inside their bounding boxes
(converted to index ranges of the grid), in slabs of slices so memory stays bounded.
Two outputs per grid, both (z, y, x) = (k, j, i):

* a tissue map (uint8 :class:`~.anatomy.Tissue`) from the centre test, which labels
  are derived from;
* an ideal intensity image (float32) painted with a one-voxel linear ramp across each
  surface (partial volume), later blurred and made noisy by the modality modules.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np

from .anatomy import NOT_PATIENT, Anatomy, Region, Tissue
from .grids import AcquisitionGrid
from .shapes import Shape

SLAB_VOXELS = 1 << 22
"""Voxels evaluated at once (~16 MB per float32 coordinate array)."""
FAR_MM = np.float32(1e6)
"""Signed distance used where no shape of a part is evaluated."""

Box = tuple[slice, slice, slice]


class _Frame:
    """A grid expressed in anatomy coordinates: index (i, j, k) → anatomy mm."""

    def __init__(self, anatomy: Anatomy, grid: AcquisitionGrid):
        to_anatomy = np.linalg.inv(anatomy.pose) @ grid.index_to_lps
        self.matrix = to_anatomy[:3, :3].astype(np.float32)
        self.offset = to_anatomy[:3, 3].astype(np.float32)
        self.to_index = np.linalg.inv(to_anatomy)
        self.shape = grid.shape
        # Half a voxel diagonal in mm: ramp width of the partial-volume edge.
        self.ramp_mm = float(np.mean(np.linalg.norm(to_anatomy[:3, :3], axis=0)[:2]))

    def index_box(self, low: np.ndarray, high: np.ndarray, pad: int = 1) -> Box | None:
        """(k, j, i) slices covering the anatomy-mm box [low, high], or None if outside."""
        corners = np.array([[x, y, z, 1.0] for x in (low[0], high[0]) for y in (low[1], high[1])
                            for z in (low[2], high[2])])
        ijk = (corners @ self.to_index.T)[:, :3]
        start = np.floor(ijk.min(axis=0)).astype(int) - pad
        stop = np.ceil(ijk.max(axis=0)).astype(int) + pad + 1
        nz, ny, nx = self.shape
        size = np.array([nx, ny, nz])
        start, stop = np.clip(start, 0, size), np.clip(stop, 0, size)
        if np.any(stop <= start):
            return None
        return (slice(start[2], stop[2]), slice(start[1], stop[1]), slice(start[0], stop[0]))

    def coordinates(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Anatomy-mm x, y, z (each float32, shape of ``box``) of the voxel centres."""
        k = np.arange(box[0].start, box[0].stop, dtype=np.float32)[:, None, None]
        j = np.arange(box[1].start, box[1].stop, dtype=np.float32)[None, :, None]
        i = np.arange(box[2].start, box[2].stop, dtype=np.float32)[None, None, :]
        m, o = self.matrix, self.offset
        return tuple(m[a, 0] * i + m[a, 1] * j + m[a, 2] * k + o[a] for a in range(3))  # type: ignore[return-value]


def _slabs(box: Box) -> Iterator[Box]:
    """Split ``box`` along k into slabs of at most :data:`SLAB_VOXELS` voxels."""
    per_slice = max((box[1].stop - box[1].start) * (box[2].stop - box[2].start), 1)
    step = max(SLAB_VOXELS // per_slice, 1)
    for start in range(box[0].start, box[0].stop, step):
        yield (slice(start, min(start + step, box[0].stop)), box[1], box[2])


def _intersect(a: Box, b: Box) -> Box | None:
    out = tuple(slice(max(p.start, q.start), min(p.stop, q.stop)) for p, q in zip(a, b))
    return None if any(s.stop <= s.start for s in out) else out  # type: ignore[return-value]


def _union_box(boxes: Sequence[Box]) -> Box:
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))  # type: ignore[return-value]


def _distance_fields(frame: _Frame, shapes: Sequence[Shape]) -> Iterator[tuple[Box, np.ndarray]]:
    """(slab, signed distance of the union of ``shapes``) over the part's bounding box."""
    boxes = [(shape, frame.index_box(*shape.bounds())) for shape in shapes]
    boxes = [(shape, box) for shape, box in boxes if box is not None]
    if not boxes:
        return
    for slab in _slabs(_union_box([box for _, box in boxes])):
        distance = np.full(tuple(s.stop - s.start for s in slab), FAR_MM, dtype=np.float32)
        for shape, box in boxes:
            sub = _intersect(slab, box)
            if sub is None:
                continue
            local = tuple(slice(s.start - t.start, s.stop - t.start) for s, t in zip(sub, slab))
            np.minimum(distance[local], shape.distance(*frame.coordinates(sub)), out=distance[local])
        yield slab, distance


def rasterise(anatomy: Anatomy, grid: AcquisitionGrid, intensities: Mapping[Tissue, float],
              modality: str) -> tuple[np.ndarray, np.ndarray]:
    """Paint the parts of ``anatomy`` shown in ``modality`` onto ``grid``.

    Args:
        intensities: value of each tissue (HU for CT, arbitrary units for MR).

    Returns:
        ``(image, tissue)``: float32 and uint8 arrays of shape ``grid.shape`` (z, y, x).
    """
    frame = _Frame(anatomy, grid)
    image = np.full(grid.shape, intensities[Tissue.AIR], dtype=np.float32)
    tissue = np.zeros(grid.shape, dtype=np.uint8)
    ramp = np.float32(frame.ramp_mm)
    for part in anatomy.parts:
        if modality not in part.modalities:
            continue
        for slab, distance in _distance_fields(frame, part.shapes):
            image_slab, tissue_slab = image[slab], tissue[slab]
            for depth, kind in part.layers:
                depth_distance = distance + np.float32(depth)
                coverage = np.clip(np.float32(0.5) - depth_distance / ramp, 0, 1)
                touched = coverage > 0
                value = np.float32(intensities[kind])
                image_slab[touched] += coverage[touched] * (value - image_slab[touched])
                tissue_slab[depth_distance < 0] = kind
    return image, tissue


def region_mask(anatomy: Anatomy, grid: AcquisitionGrid, region: Region, tissue: np.ndarray) -> np.ndarray:
    """Boolean (z, y, x): voxel centres inside ``region``'s shapes and on its tissues."""
    frame = _Frame(anatomy, grid)
    mask = np.zeros(grid.shape, dtype=bool)
    allowed = np.zeros(256, dtype=bool)
    allowed[[int(t) for t in region.tissues]] = True
    for slab, distance in _distance_fields(frame, region.shapes):
        mask[slab] = (distance < 0) & allowed[tissue[slab]]
    return mask


CT_LABEL_ORDER = (("ctv_n", 3), ("ctv_uv", 4), ("rectum", 2), ("bladder", 1))
"""Painted in this order (later wins): targets under organs, as the contours are exclusive."""
MR_LABEL_ORDER = (("mr_organ", 1), ("tumour", 2))
"""Tumour painted over organ (the MR label-map contract: label 2 inside label 1)."""


def label_map(anatomy: Anatomy, grid: AcquisitionGrid, tissue: np.ndarray, modality: str) -> np.ndarray:
    """uint8 (z, y, x) labels per structures.py for ``modality`` ("CT" or "MR")."""
    order = CT_LABEL_ORDER if modality == "CT" else MR_LABEL_ORDER
    labels = np.zeros(grid.shape, dtype=np.uint8)
    for name, value in order:
        labels[region_mask(anatomy, grid, anatomy.regions[name], tissue)] = value
    not_patient = np.zeros(256, dtype=bool)
    not_patient[[int(t) for t in NOT_PATIENT]] = True
    labels[not_patient[tissue]] = 0
    return labels


TEXTURE_WAVES = 8
"""Plane waves summed into a texture field (enough to look mottled, not periodic)."""
TEXTURE_WAVELENGTH_MM = (5.0, 16.0)


def add_texture(image: np.ndarray, tissue: np.ndarray, grid: AcquisitionGrid,
                amplitudes: Mapping[Tissue, float], rng: np.random.Generator) -> None:
    """Add mottled texture in place to the voxels of some tissues (e.g. faeces).

    The field is a sum of random plane waves evaluated at voxel-centre LPS positions,
    scaled to unit variance times the tissue's amplitude (image units).  ``image`` and
    ``tissue`` are (z, y, x).
    """
    affine = grid.index_to_lps.astype(np.float32)
    for kind, amplitude in amplitudes.items():
        directions = rng.normal(size=(TEXTURE_WAVES, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wavelengths = rng.uniform(*TEXTURE_WAVELENGTH_MM, size=TEXTURE_WAVES)
        phases = rng.uniform(0, 2 * np.pi, size=TEXTURE_WAVES)
        mask = tissue == kind
        if amplitude == 0 or not mask.any():
            continue
        k, j, i = np.nonzero(mask)
        points = np.stack([i, j, k], axis=1).astype(np.float32) @ affine[:3, :3].T + affine[:3, 3]
        field = np.zeros(len(points), dtype=np.float32)
        for direction, wavelength, phase in zip(directions, wavelengths, phases):
            field += np.cos(points @ (2 * np.pi / wavelength * direction).astype(np.float32) + np.float32(phase))
        # A sum of n unit cosines with random phases has variance n / 2.
        image[mask] += np.float32(amplitude / np.sqrt(TEXTURE_WAVES / 2)) * field
