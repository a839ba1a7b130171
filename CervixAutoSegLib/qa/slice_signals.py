"""Per-slice signals of one structure: what its label map and the network's evidence say about each slice.

Slices are planes of input array axis 0 — the acquired image planes, as read — and a slice index
``k`` is that axis's index, 0-based (report.json's and the review CSV's ``slice_index``).  Every
signal is a number per slice of the structure's extent, "higher = more suspicious", NaN where it is
not defined (e.g. no neighbour to compare with).  The ResAU-Net paper traced most unacceptable
slices to where an organ appears or disappears, so most signals compare a slice with its
neighbours:

======================  =======================================================================
``gap``                 1 on a slice inside the extent where the structure is missing
``centroid_jump_mm``    distance of the slice's centre from where its neighbours put it (the
                        closest of: midpoint of k±1, line through k-1,k-2, line through k+1,k+2;
                        only from neighbours with as many pieces, so a bifurcation is no jump)
``area_change``         \\|ln(area / area its neighbours predict)\\| (same three predictors)
``overlap_loss``        1 − the larger overlap with a neighbouring slice, each overlap measured
                        as intersection / smaller area (a tapering tip inside its neighbour is 0)
``orphan_area_mm2``     area of pieces that continue on neither neighbouring slice (islands)
``pieces_change``       1 where the number of pieces differs from both neighbours'
``end_area_ratio``      on the first and last slice: its area / its neighbour's (organs taper:
                        ≥ 1 means the structure stops at full size, or runs one slice too far)
``volume_end``          1 where the structure reaches the first or last image slice
``crop_border``         1 where it touches the network's field-of-view border (may be cut off)
``uncertainty_inside``  mean network uncertainty (1 − top-2 softmax margin) inside the contour
``uncertainty_contour`` the same along the contour (a one-pixel band either side)
``flip_disagreement``   plain-vs-mirrored disagreement in and around the contour / contour area,
                        where the mirrored pass ran
``border_contact``      for a structure that lies within another (MR tumour in the organ): the
                        share of its outline on the container's border
======================  =======================================================================

Everything runs on the structure's bounding box, so the cost follows the structure, not the image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..cropping import label_boxes, region_box
from ..postprocess import IN_PLANE
from .maps import UNIT, BoxedMap, EvidenceMaps

MIN_PIECE_MM2 = 5.0
"""Pieces smaller than this (a few pixels) do not count in ``pieces_change``: speckle, not anatomy."""
MIRRORED_COVERAGE = 0.5
"""``flip_disagreement`` is only defined on a slice when the mirrored pass covered at least this
share of the structure's contour region (selective flip TTA leaves the rest single-pass)."""

LABEL_SIGNALS = ("gap", "centroid_jump_mm", "area_change", "overlap_loss", "orphan_area_mm2", "pieces_change",
                 "end_area_ratio", "volume_end", "crop_border", "border_contact")
EVIDENCE_SIGNALS = ("uncertainty_inside", "uncertainty_contour", "flip_disagreement")
SIGNALS = LABEL_SIGNALS + EVIDENCE_SIGNALS


@dataclasses.dataclass
class StructureSlices:
    """Signals of one structure over its extent (first to last slice it appears on).

    Attributes:
        name, value: the structure.
        slices: slice indices ``k`` (input array axis 0), consecutive, shape (n,).
        area_mm2: area on each slice, (n,).
        pieces: pieces (≥ :data:`MIN_PIECE_MM2`) on each slice, (n,).
        centroid_yx_mm: in-plane centre (row, column in mm from the array origin), (n, 2), NaN if absent.
        signals: name (:data:`SIGNALS`) → (n,) float, NaN where undefined.
    """

    name: str
    value: int
    slices: np.ndarray
    area_mm2: np.ndarray
    pieces: np.ndarray
    centroid_yx_mm: np.ndarray
    signals: dict[str, np.ndarray]


def structure_slices(labels: np.ndarray, name: str, value: int, region: Sequence[int], spacing_xy: Sequence[float],
                     *, boxes: Sequence[tuple | None] | None = None, evidence: EvidenceMaps | None = None,
                     container: Sequence[int] = (), field_of_view_border: np.ndarray | BoxedMap | None = None
                     ) -> StructureSlices | None:
    """Signals of the structure whose region is the label values ``region`` in ``labels`` (z, y, x).

    Args:
        spacing_xy: pixel spacing (column, row) in mm.
        boxes: :func:`~CervixAutoSegLib.cropping.label_boxes` of ``labels`` when the caller has them
            (computed otherwise).
        evidence: the network's maps for this structure (None: label signals only).
        container: label values of the structure this one must lie within (``border_contact``).
        field_of_view_border: bool (z, y, x), True on the network's crop border (``crop_border``).

    Returns None when the structure is absent.
    """
    if boxes is None:
        boxes = label_boxes(labels)
    box = region_box(boxes, region, labels.shape)
    if box is None:
        return None
    mask = np.isin(labels[box], region)
    pixel_mm2 = float(spacing_xy[0] * spacing_xy[1])
    area_px = mask.sum(axis=(1, 2))
    centroid = _centroids(mask, box, area_px, spacing_xy)
    pieces, orphan_px = _pieces(mask, pixel_mm2)
    signals = _shape_signals(mask, area_px, pieces, centroid)
    signals["orphan_area_mm2"] = orphan_px * pixel_mm2
    signals["volume_end"] = _at_volume_end(box, labels.shape[0], len(area_px))
    signals["crop_border"] = _touching(mask, field_of_view_border, box)
    signals["border_contact"] = _border_contact(mask, labels[box], container) if container else _nan(len(area_px))
    signals.update(_evidence_signals(mask, area_px, evidence, box))
    return StructureSlices(name, value, np.arange(box[0].start, box[0].stop), area_px * pixel_mm2, pieces,
                           centroid, signals)


def _nan(n: int) -> np.ndarray:
    return np.full(n, np.nan)


def _centroids(mask: np.ndarray, box: tuple, area_px: np.ndarray, spacing_xy: Sequence[float]) -> np.ndarray:
    """(n, 2) in-plane centre (row mm, column mm) of each slice of ``mask``; NaN where empty."""
    rows = np.arange(box[1].start, box[1].stop) * float(spacing_xy[1])
    columns = np.arange(box[2].start, box[2].stop) * float(spacing_xy[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([mask.sum(axis=2) @ rows, mask.sum(axis=1) @ columns], axis=1) / area_px[:, None]


def _pieces(mask: np.ndarray, pixel_mm2: float) -> tuple[np.ndarray, np.ndarray]:
    """Per slice: pieces of at least :data:`MIN_PIECE_MM2`, and pixels in pieces that touch neither
    neighbouring slice (``orphan``)."""
    from ..postprocess import label_pieces

    pieces, count = label_pieces(mask, IN_PLANE)
    n = mask.shape[0]
    if count == 0:
        return np.zeros(n, np.int64), np.zeros(n)
    sizes = np.bincount(pieces.ravel(), minlength=count + 1)[1:]
    # A piece lies on one slice (no connectivity across slices): any of its voxels gives the slice.
    # O(voxels), unlike find_objects, which is slow on a speckled mask of 10^5 pieces.
    slice_of = np.zeros(count + 1, dtype=np.intp)
    slice_of[pieces] = np.arange(n, dtype=np.intp)[:, None, None]
    slice_of = slice_of[1:]
    beside = np.zeros_like(mask)
    beside[1:] |= mask[:-1]
    beside[:-1] |= mask[1:]
    touching = np.bincount(pieces[beside & mask], minlength=count + 1)[1:] > 0
    counted = np.bincount(slice_of[sizes * pixel_mm2 >= MIN_PIECE_MM2], minlength=n)
    orphan = np.bincount(slice_of[~touching], weights=sizes[~touching], minlength=n)
    return counted, orphan


def shifted(values: np.ndarray, offset: int) -> np.ndarray:
    """``out[k] = values[k + offset]`` (float), NaN where ``k + offset`` is outside."""
    out = np.full(values.shape, np.nan)
    n = values.shape[0]
    if abs(offset) < n:
        if offset >= 0:
            out[:n - offset] = values[offset:]
        else:
            out[-offset:] = values[:n + offset]
    return out


def robust_deviation(values: np.ndarray, usable: np.ndarray | None = None) -> np.ndarray:
    """Distance of each row of ``values`` (n,) or (n, d) from the closest of three predictions made
    without it: the midpoint of k±1, the line through k-1 and k-2, the line through k+1 and k+2.

    The closest of three, so that an outlier slice does not make its own neighbours look odd (each
    neighbour has one predictor that does not use the outlier).  ``usable``: (n, 5) booleans, column
    ``o + 2`` saying whether row ``k + o`` may predict row ``k`` (None: every row; NaN rows never
    predict).  With no predictor but one usable neighbour, the distance to that neighbour.  NaN
    where nothing predicts.
    """
    column = values.reshape(len(values), -1).astype(float)
    near = {}
    for offset in (-2, -1, 1, 2):
        neighbour = np.stack([shifted(column[:, c], offset) for c in range(column.shape[1])], axis=1)
        if usable is not None:
            neighbour[~usable[:, offset + 2]] = np.nan
        near[offset] = neighbour
    predictions = [(near[-1] + near[1]) / 2, 2 * near[-1] - near[-2], 2 * near[1] - near[2]]
    distance = lambda other: np.linalg.norm(column - other, axis=1)  # noqa: E731 - NaN propagates
    with np.errstate(invalid="ignore"):
        best = np.fmin.reduce([distance(p) for p in predictions])
        fallback = np.fmin(distance(near[-1]), distance(near[1]))
    return np.where(np.isnan(best), fallback, best)


def _shape_signals(mask: np.ndarray, area_px: np.ndarray, pieces: np.ndarray, centroid: np.ndarray
                   ) -> dict[str, np.ndarray]:
    """gap, centroid_jump_mm, area_change, overlap_loss, pieces_change and end_area_ratio per slice."""
    n = len(area_px)
    present = area_px > 0
    area = area_px.astype(float)
    same_pieces = np.stack([shifted(pieces.astype(float), o) == pieces for o in (-2, -1, 0, 1, 2)], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        log_area = np.where(present, np.log(np.maximum(area, 1.0)), np.nan)
        jump = np.where(present, robust_deviation(centroid, same_pieces), np.nan)
        change = np.where(present, robust_deviation(log_area), np.nan)
        inter = (mask[:-1] & mask[1:]).sum(axis=(1, 2)).astype(float)
        smaller = np.minimum(area[:-1], area[1:])
        overlap = np.where(smaller > 0, inter / np.maximum(smaller, 1.0), np.nan)  # slices k, k+1
        best = np.fmax(np.concatenate([[np.nan], overlap]), np.concatenate([overlap, [np.nan]]))
    counts = pieces.astype(float)
    below, above = shifted(counts, -1), shifted(counts, 1)
    changed = (present & (counts != below) & (counts != above) & (shifted(area, -1) > 0) & (shifted(area, 1) > 0))
    ratio = _nan(n)
    if n >= 2:
        ratio[0], ratio[-1] = area[0] / max(area[1], 1.0), area[-1] / max(area[-2], 1.0)
    return {"gap": (~present).astype(float), "centroid_jump_mm": jump, "area_change": change,
            "overlap_loss": np.where(present, 1.0 - best, np.nan), "pieces_change": changed.astype(float),
            "end_area_ratio": ratio}


def _at_volume_end(box: tuple, nz: int, n: int) -> np.ndarray:
    flags = np.zeros(n)
    if box[0].start == 0:
        flags[0] = 1.0
    if box[0].stop == nz:
        flags[-1] = 1.0
    return flags


def _touching(mask: np.ndarray, border: np.ndarray | None, box: tuple) -> np.ndarray:
    if border is None:
        return np.zeros(mask.shape[0])
    return (mask & border[box]).any(axis=(1, 2)).astype(float)


def grown(mask: np.ndarray) -> np.ndarray:
    """In-plane 4-neighbour dilation of a (z, y, x) bool array (array shifts: several times faster than
    ``ndimage.binary_dilation`` with a structure that has no z neighbours)."""
    out = mask.copy()
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    out[:, :, 1:] |= mask[:, :, :-1]
    out[:, :, :-1] |= mask[:, :, 1:]
    return out


def shrunk(mask: np.ndarray) -> np.ndarray:
    """In-plane 4-neighbour erosion; pixels on the array's edge count as having background beside them."""
    return ~grown(~mask) & np.pad(np.ones(np.subtract(mask.shape, (0, 2, 2)), bool), ((0, 0), (1, 1), (1, 1)))


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~shrunk(mask)


def _border_contact(mask: np.ndarray, labels_box: np.ndarray, container: Sequence[int]) -> np.ndarray:
    """Share of the outline of ``mask`` on each slice that touches pixels outside the container."""
    outside = ~np.isin(labels_box, container)
    outline = _outline(mask)
    touching = outline & grown(outside)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = touching.sum(axis=(1, 2)) / outline.sum(axis=(1, 2))
    return np.where(mask.any(axis=(1, 2)), share, np.nan)


def _masked_sum(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per slice, the sum of uint8 ``values`` where ``mask`` (int64, exact)."""
    return np.where(mask, values, 0).sum(axis=(1, 2), dtype=np.int64).astype(float)


def _evidence_signals(mask: np.ndarray, area_px: np.ndarray, evidence: EvidenceMaps | None, box: tuple
                      ) -> dict[str, np.ndarray]:
    """uncertainty_inside, uncertainty_contour and flip_disagreement per slice (NaN without evidence)."""
    n = mask.shape[0]
    empty = {name: _nan(n) for name in EVIDENCE_SIGNALS}
    if evidence is None:
        return empty
    band = grown(mask) & ~shrunk(mask)
    band_px = band.sum(axis=(1, 2))
    uncertainty = evidence.uncertainty[box]
    # Integer sums of the uint8 maps (no float copy of the box): value · UNIT per pixel.
    inside = _masked_sum(uncertainty, mask) / UNIT
    along = _masked_sum(uncertainty, band) / UNIT
    with np.errstate(invalid="ignore", divide="ignore"):
        empty["uncertainty_inside"] = np.where(area_px > 0, inside / area_px, np.nan)
        empty["uncertainty_contour"] = np.where(band_px > 0, along / band_px, np.nan)
        if evidence.disagreement is not None and evidence.mirrored is not None:
            region = (mask | band) & evidence.mirrored[box]
            covered = region.sum(axis=(1, 2)) >= MIRRORED_COVERAGE * (mask | band).sum(axis=(1, 2))
            disagreeing = _masked_sum(evidence.disagreement[box], region) / UNIT
            empty["flip_disagreement"] = np.where(covered & (area_px > 0), disagreeing / area_px, np.nan)
    return empty
