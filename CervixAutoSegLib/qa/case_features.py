"""What a whole case looks like: per-structure volume, extent, pieces and position, and the image itself.

The same function describes a training case (image + truth labels, to learn the ranges) and a
result (image + predicted labels, to judge it), so both are measured identically.  Positions are
patient LPS millimetres, whatever the acquisition grid; "cranio-caudal" is LPS z (S).

Features (all floats; see :data:`STRUCTURE_FEATURES`, :data:`PAIR_FEATURES`, :data:`INPUT_FEATURES`):

* per structure: ``volume_ml``; ``extent_mm`` (cranio-caudal); ``pieces`` (3D connected pieces of at
  least :data:`MIN_PIECE_ML`); ``body_lr`` / ``body_ap`` (centre relative to the body outline on the
  structure's slices: -1 = right/anterior edge, 0 = middle, +1 = left/posterior edge);
  ``inside_body`` (share of its voxels inside the body);
* per pair of structures (in card order): ``dx_mm``, ``dy_mm``, ``dz_mm`` between their centres;
* the input: ``scan_extent_mm`` (cranio-caudal length of the scan), ``structures_extent_mm`` (of all
  structures together — training cases say how much scan the anatomy needs), ``body_width_mm`` and
  ``body_depth_mm`` (largest body size left-right and front-back), and intensity statistics inside
  the body: CT ``hu_p05``, ``hu_p50``, ``hu_p95``; MR (arbitrary units) the scale-free ``contrast_low``
  = p05/p50 and ``contrast_high`` = p95/p50.

The body is thresholded (CT above :data:`CT_BODY_HU`; MR above :data:`MR_BODY_FRACTION` of its
99th intensity percentile — air is noise near 0, every tissue well above it), largest 3D component,
holes filled slice by slice (bowel gas, bone marrow on MR), on a grid subsampled to about
:data:`BODY_GRID_MM` in-plane: a few tens of ms on a 512x512x100 CT.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..postprocess import fill_holes_per_slice, label_pieces, largest_piece

STRUCTURE_FEATURES = ("volume_ml", "extent_mm", "pieces", "body_lr", "body_ap", "inside_body")
PAIR_FEATURES = ("dx_mm", "dy_mm", "dz_mm")
INPUT_FEATURES = ("scan_extent_mm", "structures_extent_mm", "body_width_mm", "body_depth_mm",
                  "hu_p05", "hu_p50", "hu_p95", "contrast_low", "contrast_high")
MIN_PIECE_ML = 0.5
"""Pieces smaller than this are speckle, not a separate part of the structure."""
CT_BODY_HU = -500.0
MR_BODY_FRACTION = 0.1
BODY_GRID_MM = 4.0
INTENSITY_PERCENTILES = (5.0, 50.0, 95.0)
PAIR_SEPARATOR = "|"


@dataclasses.dataclass
class Body:
    """The body outline: ``mask`` (z, y', x') on input array slices, every ``stride`` (row, column)
    pixels, and per slice the LPS bounding rectangle of the body (``box_lps``: (z, 2, 2) = [[x_min,
    y_min], [x_max, y_max]], NaN on slices without body)."""

    mask: np.ndarray
    stride: tuple[int, int]
    box_lps: np.ndarray

    def box_over(self, slices: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(LPS (x, y) min, max) of the body over ``slices`` (None: all); None where there is no body."""
        boxes = self.box_lps if slices is None else self.box_lps[slices]
        if np.all(np.isnan(boxes)):
            return None
        return np.nanmin(boxes[:, 0], axis=0), np.nanmax(boxes[:, 1], axis=0)


def body_of(image: Any) -> Body:
    """Threshold + largest 3D component of the subsampled image (see module docstring)."""
    stride = tuple(max(int(round(BODY_GRID_MM / float(s))), 1) for s in (image.spacing[1], image.spacing[0]))
    small = np.asarray(image.array)[:, ::stride[0], ::stride[1]]
    if (image.modality or "").upper() == "CT":
        level = CT_BODY_HU
    else:
        level = MR_BODY_FRACTION * float(np.percentile(small, 99))
    mask = largest_piece(small > level)
    return Body(fill_holes_per_slice(mask), stride, _slice_boxes(image, mask, stride))  # type: ignore[arg-type]


def _slice_boxes(image: Any, mask: np.ndarray, stride: tuple[int, int]) -> np.ndarray:
    """Per slice the LPS (x, y) rectangle around the corners of the body's index rectangle."""
    boxes = np.full((mask.shape[0], 2, 2), np.nan)
    rows, columns = mask.any(axis=2), mask.any(axis=1)
    for k in np.flatnonzero(rows.any(axis=1)):
        j = np.flatnonzero(rows[k])[[0, -1]] * stride[0]
        i = np.flatnonzero(columns[k])[[0, -1]] * stride[1]
        corners = np.array([[a, b, k] for a in i for b in j], dtype=float)
        xy = image.index_to_physical(corners)[:, :2]
        boxes[k] = [xy.min(axis=0), xy.max(axis=0)]
    return boxes


def _voxel_s(image: Any) -> float:
    """Cranio-caudal size (mm) of one voxel of ``image``."""
    return float(np.sum(np.abs((image.direction * image.spacing)[2])))


def structure_features(image: Any, mask: np.ndarray, box: tuple[slice, ...], body: Body) -> dict[str, Any]:
    """Features of one structure whose region ``mask`` (bool, the part ``box`` of the image grid) is not empty.

    Also ``centre_lps_mm`` and ``s_range_mm`` (lowest and highest voxel centre along S) for the
    pair offsets and the union extent.  Computed from projections of the mask, never from a list
    of its voxels (a bladder has 10^5-10^6).
    """
    from ..cropping import mean_index, voxel_counts
    from ..postprocess import voxel_volume_ml

    voxel_ml = voxel_volume_ml(image.spacing, image.direction)
    k, j, i = (np.arange(s.start, s.stop) for s in box)
    counts = voxel_counts(mask)
    per_slice, count = counts[0], int(counts[0].sum())
    centre = image.index_to_physical(mean_index(counts, [axis.start for axis in box])[::-1])
    pieces, _ = label_pieces(mask)
    sizes = np.bincount(pieces.ravel())[1:] * voxel_ml
    in_body = body.mask[box[0]][:, np.minimum(j // body.stride[0], body.mask.shape[1] - 1)][
        :, :, np.minimum(i // body.stride[1], body.mask.shape[2] - 1)]
    s_low, s_high = _s_range(image, mask, box)
    outline = body.box_over(k[per_slice > 0]) or body.box_over()
    low, high = outline if outline is not None else (centre[:2], centre[:2])
    relative = (centre[:2] - (low + high) / 2) / np.maximum((high - low) / 2, 1e-6)
    return {"volume_ml": float(count * voxel_ml), "extent_mm": float(s_high - s_low + _voxel_s(image)),
            "pieces": float(np.count_nonzero(sizes >= MIN_PIECE_ML)), "body_lr": float(relative[0]),
            "body_ap": float(relative[1]), "inside_body": np.count_nonzero(in_body & mask) / count,
            "centre_lps_mm": [float(v) for v in centre], "s_range_mm": [s_low, s_high]}


def _s_range(image: Any, mask: np.ndarray, box: tuple[slice, ...]) -> tuple[float, float]:
    """Lowest and highest voxel centre of ``mask`` (on ``box``) along S, in mm.

    S is linear in (i, j, k), so along each image row of the mask its extremes lie on the row's first
    and last voxel: two ``argmax`` over the rows instead of one coordinate per voxel.
    """
    per_i, per_j, per_k = (image.direction * image.spacing)[2]
    k = np.arange(box[0].start, box[0].stop)[:, None]
    j = np.arange(box[1].start, box[1].stop)[None, :]
    rows = mask.any(axis=2)
    first = mask.argmax(axis=2) + box[2].start
    last = box[2].stop - 1 - mask[:, :, ::-1].argmax(axis=2)
    ends = [per_i * column + per_j * j + per_k * k + image.origin[2] for column in (first, last)]
    low, high = np.minimum(*ends)[rows], np.maximum(*ends)[rows]
    return float(low.min()), float(high.max())


def input_features(image: Any, body: Body, s_ranges: Sequence[Sequence[float]] = ()) -> dict[str, float]:
    """Scan extent, body size and intensity statistics; ``structures_extent_mm`` from the structures'
    ``s_range_mm`` when there are any."""
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in image.size_ijk])), dtype=float)
    features = {"scan_extent_mm": float(np.ptp(image.index_to_physical(corners)[:, 2]) + _voxel_s(image))}
    outline = body.box_over()
    if outline is not None:
        size = outline[1] - outline[0]
        features.update(body_width_mm=float(size[0]), body_depth_mm=float(size[1]))
    if len(s_ranges):
        ranges = np.asarray(s_ranges, dtype=float)
        features["structures_extent_mm"] = float(ranges[:, 1].max() - ranges[:, 0].min() + _voxel_s(image))
    small = np.asarray(image.array)[:, ::body.stride[0], ::body.stride[1]]
    values = small[body.mask].astype(np.float64)
    if values.size:
        p05, p50, p95 = np.percentile(values, INTENSITY_PERCENTILES)
        if (image.modality or "").upper() == "CT":
            features.update(hu_p05=float(p05), hu_p50=float(p50), hu_p95=float(p95))
        elif p50 > 0:
            features.update(contrast_low=float(p05 / p50), contrast_high=float(p95 / p50))
    return features


def case_features(image: Any, labels: np.ndarray, structures: Sequence[Any],
                  boxes: Sequence[tuple | None] | None = None) -> dict:
    """``{"structures": {name: features}, "pairs": {"A|B": features}, "input": features}`` of a case.

    ``labels`` (z, y, x) on the grid of ``image`` (a :class:`~CervixAutoSegLib.volume.Volume`); structure
    regions follow the post-processing rules (an MR organ covers its tumour).  Absent structures
    are left out of ``structures``.
    """
    from ..cropping import label_boxes, region_box
    from ..postprocess import any_of, rules_for

    labels = np.asarray(labels)
    body = body_of(image)
    if boxes is None:
        boxes = label_boxes(labels)
    rules = {rule.value: rule for rule in rules_for(structures)}
    per_structure = {}
    for structure in structures:
        region = (structure.value, *rules[structure.value].includes)
        box = region_box(boxes, region, labels.shape, margin=0)
        if box is not None:
            per_structure[structure.name] = structure_features(image, any_of(labels[box], region), box, body)
    pairs = {}
    for a, b in itertools.combinations([s.name for s in structures if s.name in per_structure], 2):
        delta = np.subtract(per_structure[a]["centre_lps_mm"], per_structure[b]["centre_lps_mm"])
        pairs[f"{a}{PAIR_SEPARATOR}{b}"] = dict(zip(PAIR_FEATURES, (float(v) for v in delta)))
    s_ranges = [entry.pop("s_range_mm") for entry in per_structure.values()]
    return {"structures": per_structure, "pairs": pairs, "input": input_features(image, body, s_ranges)}
