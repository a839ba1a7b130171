"""Contour-agreement metrics in physical millimetres: DSC, HD95, MSD, surface DSC, APL.

Conventions (the same as :mod:`CervixAutoSegLib.volume`):

* Masks are boolean arrays indexed ``mask[k, j, i]`` — axis order **(z, y, x)**.
* The raw-array API takes the voxel size as the keyword-only ``spacing_zyx`` (mm, in
  array-axis order).  :func:`compare_volumes` takes it from the :class:`Volume`, whose
  ``spacing`` is in (x, y, z) order; nobody has to reverse it by hand.
* Distances are Euclidean, in mm, on an orthogonal grid.  A sheared grid (gantry tilt)
  is refused: the index-space distance transform would be silently wrong there.

Two HD95 definitions are reported because the two method papers use different ones:

``hd95_pooled_mm``
    ResAU-Net paper, eq. 7: the 95th percentile (linear interpolation) of the pooled set
    of both directed distances between *boundary voxels* (a mask minus its 6-connected
    erosion).  Identical to ``medpy.metric.binary.hd95``.
``hd95_directed_max_mm``
    DeepMind ``surface-distance`` / MIST "Haus95" (PocketNet paper): the maximum of the
    two directed 95th percentiles, each weighted by the area of the marching-cubes
    surface elements ("surfels") between voxel centres.

Empty masks never produce a number that looks perfect: see :class:`Status`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from contextlib import contextmanager
from typing import ClassVar, Iterator, Mapping, MutableMapping, Sequence

import numpy as np

from .errors import InputError
from .volume import Volume

DEFAULT_SURFACE_TOLERANCE_MM = 2.0
"""Default surface-DSC and added-path-length tolerance (mm); the issue asks for 2 mm.
Nikolov et al. 2021 use organ-specific tolerances of about 1-3 mm."""

HD_PERCENTILE = 95.0

MAX_INPLANE_EXTENT_MM = 1000.0
"""No CT or MR field of view is a metre wide: a larger (y, x) extent means the spacing
was given in the wrong axis order."""

MAX_SLICE_EXTENT_MM = 2500.0
"""Longer than any patient: a larger z extent means a permuted or wrong spacing."""

GRID_TOLERANCE_MM = 1e-3
"""Two label maps are on the same grid when spacing, origin and direction agree to this."""

APL_SAMPLES_PER_PIXEL = 10
"""Contour sampling density for the added path length (samples per in-plane pixel)."""

APL_CANDIDATE_SEGMENTS = 8
"""Nearest segment midpoints examined for each exact point-to-contour distance."""

_ORTHOGONALITY_TOLERANCE = 1e-4
_BOUNDARY_STRUCTURE = np.array(  # 6-connectivity: what medpy erodes with
    [[[0, 0, 0], [0, 1, 0], [0, 0, 0]],
     [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
     [[0, 0, 0], [0, 1, 0], [0, 0, 0]]],
    dtype=bool,
)


class Status:
    """Which masks are present; decides what the numbers mean.

    ``both_present``: every metric is a number.
    ``both_empty``: DSC, distances and surface DSC are NaN (undefined, not perfect);
        added path length is 0 (nothing to draw).  Excluded from means.
    ``pred_empty``: the model missed the structure.  DSC 0, surface DSC 0, distances
        +inf, added path length = the whole truth contour.
    ``truth_empty``: the model drew a structure the reference does not have.  DSC 0,
        surface DSC 0, distances +inf, added path length 0 (deleting costs no drawing).
    """

    BOTH_PRESENT = "both_present"
    BOTH_EMPTY = "both_empty"
    PRED_EMPTY = "pred_empty"
    TRUTH_EMPTY = "truth_empty"


DEFINITIONS: dict[str, str] = {
    "dsc": "Dice similarity coefficient 2|T∩P|/(|T|+|P|) over voxels; NaN when both masks are empty.",
    "hd95_pooled_mm": (
        "ResAU-Net paper eq. 7 (= medpy hd95): 95th percentile, linear interpolation, of the pooled "
        "distances from every boundary voxel of each mask to the nearest boundary voxel of the other; "
        "boundary voxel = voxel of the mask not in its 6-connected erosion (outside the image is "
        "background); Euclidean distance between voxel centres in mm."
    ),
    "hd95_directed_max_mm": (
        "DeepMind surface-distance / MIST 'Haus95' (PocketNet paper): max of the two directed 95th "
        "percentiles of surface-element distances, each weighted by marching-cubes surfel area."
    ),
    "hd_max_mm": "Hausdorff distance: maximum of the pooled boundary-voxel distances (as hd95_pooled_mm).",
    "msd_mm": (
        "Mean surface distance, symmetric: mean of the POOLED boundary-voxel distances of both "
        "directions (each boundary voxel counts once); equals medpy 0.5 assd. Not the mean of the two "
        "directed means, which weights the smaller surface more."
    ),
    "surface_dsc": (
        "Surface DSC at the tolerance (Nikolov et al. 2021, surface-distance definition): surfel area of "
        "both surfaces within tolerance of the other surface / total surfel area of both."
    ),
    "apl_mm": (
        "Added path length (Vaassen et al. 2020): per slice of the image (array axis k), length in mm of "
        "the truth (edited) contour farther than the tolerance from the predicted (automatic) contour on "
        "the same slice; contours by marching squares at the half-way level between voxel centres; summed "
        "over slices."
    ),
    "volume_truth_ml": "Truth volume: voxel count x voxel volume, millilitres.",
    "volume_pred_ml": "Prediction volume: voxel count x voxel volume, millilitres.",
    "status": (
        "both_present | both_empty (DSC and distances NaN, excluded from means) | pred_empty or "
        "truth_empty (DSC 0, surface DSC 0, distances inf; never a silent perfect score)."
    ),
}
"""What every reported number means; written next to the numbers in every output."""


@dataclasses.dataclass(frozen=True)
class MaskComparison:
    """Agreement of one structure between a truth and a predicted mask.

    Distances in mm, volumes in ml; ``apl_per_slice_mm`` has one entry per array
    slice ``k`` (axis 0 of the (z, y, x) masks).
    """

    status: str
    dsc: float
    hd95_pooled_mm: float
    hd95_directed_max_mm: float
    hd_max_mm: float
    msd_mm: float
    surface_dsc: float
    apl_mm: float
    apl_per_slice_mm: np.ndarray
    volume_truth_ml: float
    volume_pred_ml: float
    tolerance_mm: float

    SCALAR_FIELDS: ClassVar[tuple[str, ...]] = (
        "dsc", "hd95_pooled_mm", "hd95_directed_max_mm", "hd_max_mm", "msd_mm",
        "surface_dsc", "apl_mm", "volume_truth_ml", "volume_pred_ml",
    )

    def scalars(self) -> dict[str, float | str]:
        """Status, tolerance and every scalar metric, as a flat dict."""
        values: dict[str, float | str] = {"status": self.status, "tolerance_mm": self.tolerance_mm}
        values.update({name: float(getattr(self, name)) for name in self.SCALAR_FIELDS})
        return values


# ----------------------------------------------------------------- timing hook
@contextmanager
def _timed(timings: MutableMapping[str, float] | None, name: str) -> Iterator[None]:
    """Add the wall time of the block to ``timings[name]`` (seconds) when given."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


# --------------------------------------------------------------- validation
def check_spacing_zyx(shape_zyx: Sequence[int], spacing_zyx: Sequence[float]) -> np.ndarray:
    """Validate a voxel size given in (z, y, x) order for an array of ``shape_zyx``.

    Raises:
        InputError: wrong length, non-positive values, or a physical extent no patient
            image has (the usual sign of a spacing given in (x, y, z) order).
    """
    spacing = np.asarray(spacing_zyx, dtype=np.float64).reshape(-1)
    if spacing.shape != (len(shape_zyx),):
        raise InputError(
            f"spacing_zyx has {spacing.size} values for a {len(shape_zyx)}D mask of shape {tuple(shape_zyx)}"
        )
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(f"spacing_zyx must be positive finite mm, got {tuple(spacing)}")
    extent = spacing * np.asarray(shape_zyx, dtype=np.float64)
    if len(shape_zyx) == 3 and (
        extent[0] > MAX_SLICE_EXTENT_MM or np.any(extent[1:] > MAX_INPLANE_EXTENT_MM)
    ):
        raise InputError(
            f"spacing_zyx {tuple(spacing)} gives a {extent[2]:.0f} x {extent[1]:.0f} x {extent[0]:.0f} mm "
            f"(x, y, z) image of shape (z, y, x) {tuple(shape_zyx)}: no patient is that size; the spacing "
            "is probably in the wrong axis order (Volume.spacing is (x, y, z), spacing_zyx is (z, y, x))"
        )
    return spacing


def _as_mask(mask: np.ndarray, name: str) -> np.ndarray:
    if isinstance(mask, Volume):
        raise InputError(f"{name} is a Volume: use compare_volumes(), which takes the spacing from it")
    array = np.asarray(mask)
    if array.dtype != bool:
        array = array != 0
    return array


def _check_orthogonal(volume: Volume, name: str) -> None:
    direction = volume.direction
    if not np.allclose(direction.T @ direction, np.eye(3), atol=_ORTHOGONALITY_TOLERANCE):
        raise InputError(
            f"the {name} grid is sheared (gantry tilt): distances need an orthogonal grid; "
            "resample it onto an orthogonal grid first"
        )


def check_same_grid(truth: Volume, pred: Volume, tolerance_mm: float = GRID_TOLERANCE_MM) -> None:
    """Raise :class:`InputError` naming the difference when two volumes are not on one grid."""
    problems = []
    if truth.shape != pred.shape:
        problems.append(f"shape (z,y,x) {truth.shape} vs {pred.shape}")
    if not np.allclose(truth.spacing, pred.spacing, atol=tolerance_mm):
        problems.append(f"spacing (x,y,z) {tuple(truth.spacing)} vs {tuple(pred.spacing)} mm")
    if not np.allclose(truth.origin, pred.origin, atol=tolerance_mm):
        problems.append(f"origin LPS {tuple(truth.origin)} vs {tuple(pred.origin)} mm")
    if not np.allclose(truth.direction, pred.direction, atol=tolerance_mm):
        problems.append("direction cosines differ")
    if problems:
        raise InputError(
            "truth and prediction are not on the same voxel grid (" + "; ".join(problems) + ")"
        )


# ------------------------------------------------------------------ geometry
def _union_crop(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union, padded by one background voxel.

    Outside the union box both masks are background, and beyond the image medpy's
    erosion also assumes background, so every boundary and distance is unchanged.
    """
    union = truth | pred
    box = []
    for axis in range(union.ndim):
        other_axes = tuple(a for a in range(union.ndim) if a != axis)
        present = np.flatnonzero(np.any(union, axis=other_axes))
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    box_t = tuple(box)
    return np.pad(truth[box_t], 1), np.pad(pred[box_t], 1)


def _boundary_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a 6-neighbour outside it (mask minus its erosion)."""
    from scipy import ndimage

    structure = _BOUNDARY_STRUCTURE if mask.ndim == 3 else ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _distance_to(border: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance in mm from every voxel to the nearest ``True`` voxel of ``border``."""
    from scipy import ndimage

    return ndimage.distance_transform_edt(~border, sampling=spacing)


def _neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """8-bit code of every 2x2x2 cube of voxel centres: bit ``4a+2b+c`` = mask[z+a, y+b, x+c].

    Output shape is ``mask.shape - 1``; cube ``p`` spans voxels ``p`` to ``p + 1``.
    """
    codes = np.zeros(tuple(n - 1 for n in mask.shape), dtype=np.uint8)
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                corner = mask[a:mask.shape[0] - 1 + a, b:mask.shape[1] - 1 + b, c:mask.shape[2] - 1 + c]
                codes |= corner.astype(np.uint8) << np.uint8(4 * a + 2 * b + c)
    return codes


@functools.lru_cache(maxsize=32)
def surfel_area_table(spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Area in mm² of the marching-cubes surface inside a 2x2x2 cube, for each of the 256 codes.

    Classic (Lorensen) marching cubes at iso-level 0.5, vertices at edge midpoints, run
    on whichever of the configuration and its complement has fewer voxels inside, so
    that ambiguous faces always separate the minority voxels — the surface
    DeepMind's surface-distance tabulates.  Shape (256,), float64; ``spacing_zyx`` in mm.
    """
    from skimage import measure

    areas = np.zeros(256, dtype=np.float64)
    for code in range(1, 255):
        minority = code if bin(code).count("1") <= 4 else 255 - code
        bits = [(minority >> (4 * a + 2 * b + c)) & 1 for a in (0, 1) for b in (0, 1) for c in (0, 1)]
        cube = np.asarray(bits, dtype=np.float32).reshape(2, 2, 2)
        vertices, faces, _, _ = measure.marching_cubes(cube, level=0.5, spacing=spacing_zyx, method="lorensen")
        areas[code] = measure.mesh_surface_area(vertices, faces)
    return areas


@dataclasses.dataclass(frozen=True)
class _Surfels:
    """Distances of one surface's surfels to the other surface, with their areas."""

    distances: np.ndarray
    areas: np.ndarray

    def percentile(self, percent: float) -> float:
        """Area-weighted percentile as surface-distance computes it (no interpolation)."""
        if self.distances.size == 0:
            return math.inf
        order = np.argsort(self.distances, kind="stable")
        cumulative = np.cumsum(self.areas[order]) / np.sum(self.areas)
        index = int(np.searchsorted(cumulative, percent / 100.0))
        return float(self.distances[order][min(index, order.size - 1)])

    def area_within(self, tolerance_mm: float) -> float:
        return float(np.sum(self.areas[self.distances <= tolerance_mm]))


def _surfel_distances(truth: np.ndarray, pred: np.ndarray, spacing: np.ndarray) -> tuple[_Surfels, _Surfels]:
    """Surfel distances truth→pred and pred→truth on the cube grid (cropped, padded masks)."""
    table = surfel_area_table(tuple(float(s) for s in spacing))
    codes_truth, codes_pred = _neighbour_codes(truth), _neighbour_codes(pred)
    surface_truth = (codes_truth != 0) & (codes_truth != 255)
    surface_pred = (codes_pred != 0) & (codes_pred != 255)
    to_truth = _distance_to(surface_truth, spacing)
    to_pred = _distance_to(surface_pred, spacing)
    return (
        _Surfels(to_pred[surface_truth], table[codes_truth[surface_truth]]),
        _Surfels(to_truth[surface_pred], table[codes_pred[surface_pred]]),
    )


# ----------------------------------------------------------- added path length
def _slice_contours(mask_yx: np.ndarray, spacing_yx: np.ndarray) -> list[np.ndarray]:
    """Closed marching-squares contours of a 2D mask, each (n, 2) in (y, x) mm."""
    from skimage import measure

    padded = np.pad(mask_yx.astype(np.float32), 1)
    return [(contour - 1.0) * spacing_yx for contour in measure.find_contours(padded, 0.5)]


def _segments(contours: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Start and end points (m, 2) of every segment of the polylines."""
    starts = np.concatenate([c[:-1] for c in contours])
    ends = np.concatenate([c[1:] for c in contours])
    return starts, ends


def _distance_to_segments(points: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Exact distance (mm) from each point (n, 2) to the nearest of the segments.

    Candidate segments are the ``APL_CANDIDATE_SEGMENTS`` with the nearest midpoints.
    Marching-squares segments are at most one pixel diagonal long, so the nearest
    segment's midpoint is at most half a diagonal farther than the nearest point and
    lies among the first few candidates (checked against hand computations in the tests).
    """
    from scipy.spatial import cKDTree

    k = min(APL_CANDIDATE_SEGMENTS, starts.shape[0])
    _, candidates = cKDTree((starts + ends) / 2.0).query(points, k=k)
    candidates = candidates.reshape(points.shape[0], k)
    a, b = starts[candidates], ends[candidates]                 # (n, k, 2)
    ab = b - a
    length2 = np.maximum(np.einsum("nkd,nkd->nk", ab, ab), 1e-300)
    t = np.clip(np.einsum("nkd,nkd->nk", points[:, None, :] - a, ab) / length2, 0.0, 1.0)
    nearest = a + t[..., None] * ab
    return np.min(np.linalg.norm(points[:, None, :] - nearest, axis=-1), axis=1)


def _length_beyond(contours: list[np.ndarray], reference: list[np.ndarray], tolerance_mm: float,
                   step_mm: float) -> float:
    """Length (mm) of ``contours`` farther than ``tolerance_mm`` from the ``reference`` contours.

    Each contour is sampled every ``step_mm`` at most; between two samples on opposite
    sides of the tolerance the crossing point is interpolated linearly.
    """
    total_length = 0.0
    if not reference:
        return float(sum(np.sum(np.linalg.norm(np.diff(c, axis=0), axis=1)) for c in contours))
    starts, ends = _segments(reference)
    for contour in contours:
        edges = np.diff(contour, axis=0)
        lengths = np.linalg.norm(edges, axis=1)
        pieces = np.maximum(np.ceil(lengths / step_mm).astype(np.int64), 1)
        segment_of = np.repeat(np.arange(edges.shape[0]), pieces)
        offset = np.arange(segment_of.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        fraction = offset / pieces[segment_of]
        samples = np.vstack([contour[segment_of] + fraction[:, None] * edges[segment_of], contour[-1:]])
        beyond = _distance_to_segments(samples, starts, ends) - tolerance_mm
        piece_length = (lengths / pieces)[segment_of]
        d0, d1 = beyond[:-1], beyond[1:]
        outside_share = np.where(
            (d0 > 0) & (d1 > 0), 1.0,
            np.where((d0 <= 0) & (d1 <= 0), 0.0, np.maximum(d0, d1) / np.maximum(np.abs(d1 - d0), 1e-300)),
        )
        total_length += float(np.sum(piece_length * outside_share))
    return total_length


def added_path_length(truth: np.ndarray, pred: np.ndarray, *, spacing_zyx: Sequence[float],
                      tolerance_mm: float = DEFAULT_SURFACE_TOLERANCE_MM) -> np.ndarray:
    """Added path length per slice (Vaassen et al. 2020), mm, shape ``(nz,)``.

    Args:
        truth: edited / reference mask, (z, y, x).
        pred: automatic mask, (z, y, x), same shape.
        spacing_zyx: voxel size in mm in (z, y, x) order (only y and x are used).
        tolerance_mm: truth contour within this in-plane distance of the automatic
            contour on the same slice costs no drawing.
    """
    truth, pred = _as_mask(truth, "truth"), _as_mask(pred, "pred")
    _check_pair(truth, pred)
    spacing = check_spacing_zyx(truth.shape, spacing_zyx)
    return _added_path_length(truth, pred, spacing, tolerance_mm)


def _added_path_length(truth: np.ndarray, pred: np.ndarray, spacing: np.ndarray, tolerance_mm: float) -> np.ndarray:
    per_slice = np.zeros(truth.shape[0], dtype=np.float64)
    spacing_yx = spacing[1:]
    step = float(np.min(spacing_yx)) / APL_SAMPLES_PER_PIXEL
    for k in np.flatnonzero(np.any(truth, axis=(1, 2))):
        rows = np.flatnonzero(np.any(truth[k] | pred[k], axis=1))
        cols = np.flatnonzero(np.any(truth[k] | pred[k], axis=0))
        window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        contours = _slice_contours(truth[k][window], spacing_yx)
        reference = _slice_contours(pred[k][window], spacing_yx)
        per_slice[k] = _length_beyond(contours, reference, tolerance_mm, step)
    return per_slice


# ------------------------------------------------------------------- entry points
def _check_pair(truth: np.ndarray, pred: np.ndarray) -> None:
    if truth.shape != pred.shape:
        raise InputError(f"truth and prediction masks differ in shape (z,y,x): {truth.shape} vs {pred.shape}")
    if truth.ndim != 3:
        raise InputError(f"masks must be 3D (z, y, x), got shape {truth.shape}")


def dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """Dice similarity coefficient of two masks; NaN when both are empty."""
    truth, pred = _as_mask(truth, "truth"), _as_mask(pred, "pred")
    total = int(np.count_nonzero(truth)) + int(np.count_nonzero(pred))
    if total == 0:
        return math.nan
    return 2.0 * int(np.count_nonzero(truth & pred)) / total


def _empty_result(status: str, truth: np.ndarray, pred: np.ndarray, spacing: np.ndarray,
                  tolerance_mm: float, voxel_ml: float) -> MaskComparison:
    missing = math.nan if status == Status.BOTH_EMPTY else math.inf
    score = math.nan if status == Status.BOTH_EMPTY else 0.0
    apl = np.zeros(truth.shape[0])
    if status == Status.PRED_EMPTY:
        apl = _added_path_length(truth, pred, spacing, tolerance_mm)
    return MaskComparison(
        status=status, dsc=score, hd95_pooled_mm=missing, hd95_directed_max_mm=missing,
        hd_max_mm=missing, msd_mm=missing, surface_dsc=score,
        apl_mm=float(apl.sum()), apl_per_slice_mm=apl,
        volume_truth_ml=np.count_nonzero(truth) * voxel_ml,
        volume_pred_ml=np.count_nonzero(pred) * voxel_ml, tolerance_mm=float(tolerance_mm),
    )


def compare_masks(truth: np.ndarray, pred: np.ndarray, *, spacing_zyx: Sequence[float],
                  tolerance_mm: float = DEFAULT_SURFACE_TOLERANCE_MM,
                  timings: MutableMapping[str, float] | None = None) -> MaskComparison:
    """Every metric of :data:`DEFINITIONS` for one structure.

    Args:
        truth: reference mask, (z, y, x); any non-zero voxel is inside.
        pred: predicted mask, same shape.
        spacing_zyx: voxel size in mm **in (z, y, x) order** (keyword only, so that a
            Volume's (x, y, z) spacing cannot slip in positionally).
        tolerance_mm: surface-DSC and added-path-length tolerance.
        timings: when given, per-metric wall times (s) are added to it.
    """
    truth, pred = _as_mask(truth, "truth"), _as_mask(pred, "pred")
    _check_pair(truth, pred)
    spacing = check_spacing_zyx(truth.shape, spacing_zyx)
    if not (np.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise InputError(f"tolerance must be a non-negative number of mm, got {tolerance_mm}")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    has_truth, has_pred = bool(truth.any()), bool(pred.any())
    if not (has_truth and has_pred):
        status = {(False, False): Status.BOTH_EMPTY, (True, False): Status.PRED_EMPTY,
                  (False, True): Status.TRUTH_EMPTY}[(has_truth, has_pred)]
        return _empty_result(status, truth, pred, spacing, tolerance_mm, voxel_ml)

    with _timed(timings, "crop"):
        truth_box, pred_box = _union_crop(truth, pred)
    with _timed(timings, "dsc"):
        dsc = dice(truth_box, pred_box)
    with _timed(timings, "voxel_boundary_distances"):
        border_truth, border_pred = _boundary_voxels(truth_box), _boundary_voxels(pred_box)
        truth_to_pred = _distance_to(border_pred, spacing)[border_truth]
        pred_to_truth = _distance_to(border_truth, spacing)[border_pred]
        pooled = np.concatenate([truth_to_pred, pred_to_truth])
    with _timed(timings, "hd95_msd_hd"):
        hd95_pooled = float(np.percentile(pooled, HD_PERCENTILE))
        hd_max = float(pooled.max())
        msd = float(pooled.mean())
    with _timed(timings, "surfel_distances"):
        surfels_truth, surfels_pred = _surfel_distances(truth_box, pred_box, spacing)
    with _timed(timings, "hd95_directed_surface_dsc"):
        hd95_directed = max(surfels_truth.percentile(HD_PERCENTILE), surfels_pred.percentile(HD_PERCENTILE))
        surface_area = float(surfels_truth.areas.sum() + surfels_pred.areas.sum())
        surface_dsc = (surfels_truth.area_within(tolerance_mm) + surfels_pred.area_within(tolerance_mm)) / surface_area
    with _timed(timings, "added_path_length"):
        apl = np.zeros(truth.shape[0])
        slices = np.flatnonzero(np.any(truth | pred, axis=(1, 2)))
        first, last = int(slices[0]), int(slices[-1]) + 1
        apl[first:last] = _added_path_length(truth_box[1:-1], pred_box[1:-1], spacing, tolerance_mm)
    return MaskComparison(
        status=Status.BOTH_PRESENT, dsc=dsc, hd95_pooled_mm=hd95_pooled,
        hd95_directed_max_mm=hd95_directed, hd_max_mm=hd_max, msd_mm=msd,
        surface_dsc=float(surface_dsc), apl_mm=float(apl.sum()), apl_per_slice_mm=apl,
        volume_truth_ml=np.count_nonzero(truth_box) * voxel_ml,
        volume_pred_ml=np.count_nonzero(pred_box) * voxel_ml, tolerance_mm=float(tolerance_mm),
    )


def compare_volumes(truth: Volume, pred: Volume, *, truth_values: Sequence[int] | int,
                    pred_values: Sequence[int] | int | None = None,
                    tolerance_mm: float = DEFAULT_SURFACE_TOLERANCE_MM,
                    timings: MutableMapping[str, float] | None = None) -> MaskComparison:
    """Compare one structure of two label-map Volumes on the same orthogonal grid.

    The spacing comes from the Volumes (x, y, z) and is reversed to (z, y, x) here.

    Args:
        truth, pred: label maps; array (z, y, x).
        truth_values: label value(s) that make up the structure in ``truth``.
        pred_values: the same in ``pred`` (default: ``truth_values``).
    """
    for volume, name in ((truth, "truth"), (pred, "prediction")):
        if not isinstance(volume, Volume):
            raise InputError(f"{name} must be a Volume; for raw arrays use compare_masks(spacing_zyx=...)")
        _check_orthogonal(volume, name)
    check_same_grid(truth, pred)
    truth_set = np.atleast_1d(np.asarray(truth_values, dtype=np.int64))
    pred_set = truth_set if pred_values is None else np.atleast_1d(np.asarray(pred_values, dtype=np.int64))
    return compare_masks(
        np.isin(truth.array, truth_set), np.isin(pred.array, pred_set),
        spacing_zyx=tuple(truth.spacing[::-1]), tolerance_mm=tolerance_mm, timings=timings,
    )


def definitions(tolerance_mm: float) -> Mapping[str, str]:
    """:data:`DEFINITIONS` with the tolerance actually used filled in."""
    result = dict(DEFINITIONS)
    result["tolerance_mm"] = f"Surface-DSC and added-path-length tolerance: {tolerance_mm:g} mm."
    return result
