"""MR preprocessing for PocketNet as MIST does it, and its exact inverse onto the input grid.

Axis order: arrays are (z, y, x) (``Volume.array``); spacings, origins and directions are
(x, y, z) in LPS mm, as everywhere in the package.  "Working grid" is the grid the network
sees.

Forward path (:func:`preprocess_mr`), MIST's order (seed 004 "Pre-processing"; MIST
``preprocess_example``):

1. **Reorient** by axis permutation and flips only (exact, no interpolation) to LPS layout:
   array (z, y, x) runs towards (S, P, L).  MIST calls ``ants.reorient_image2(image,
   "RAI")``; ANTs/ITK orientation codes name where each axis comes *from* (ITK
   ``SpatialOrientation``: "RAI" = x from right to left, y from anterior to posterior, z
   from inferior to superior), so ITK "RAI" is the identity direction in LPS — the same
   layout as our :class:`~CervixAutoSegLib.orientation.Reorientation` (MIST's ANTs numpy
   arrays are (x, y, z), ours the transpose (z, y, x); no flip differs).  The paper's
   "right-anterior-inferior" is that ITK code, not a RAS-style "towards" code.
   An oblique acquisition keeps its obliquity: the nearest LPS axis is chosen per image
   axis and voxels are never rotated, so the working axes are the acquisition axes
   (permuted/flipped) and :attr:`MRPreprocessContext.working_direction` is still oblique.
   MIST does the same and then overwrites the direction with the identity; we keep it, so
   the working grid is a true physical grid (:meth:`MRPreprocessContext.working_volume`).
2. **Foreground crop** (MIST ``get_fg_mask_bbox``): clip the image to its 33rd..99.5th
   percentiles, Otsu threshold (256-bin histogram), crop to the bounding box of every voxel
   above it (no margin).  On T2w the Otsu class is the bright tissue (fat, urine), whose
   subcutaneous layer outlines the body, so the box is the body's.  The paper-era MIST kept
   only the largest connected component; we do not: on a small-FOV pelvic MR the largest
   bright component can be one fat pad (a sagittal phantom lost half the organ that way).
   The box is taken on the reoriented input grid before any interpolation, as MIST crops
   before resampling (a box commutes with an exact reorientation).
3. **Resample** the crop to ``spacing_mm`` (0.469 x 0.469 x 5 mm along the reoriented x, y,
   z).  Grids are aligned on the centre of the first voxel (MIST/SimpleITK ``Resample`` with
   the input origin); size ``round(n * s / t)`` per axis; samples beyond the last input
   voxel centre take the edge value.  Images: cubic B-spline (order 3).  MIST's anisotropy
   rule: when the crop's largest spacing is more than 3x its smallest, the coarsest axis is
   resampled with nearest neighbour (``coarse_axis_order``; nnU-Net's "separate z") and the
   others with the B-spline.  Implemented separably (one axis at a time, exact for tensor
   B-splines), float32, downsampled axes first: a 512 x 512 x 40 input needs a few hundred
   MB at most.
4. **Normalise** (MIST ``window_and_normalize`` for non-CT): clip to the 0.5 / 99.5
   percentiles, then z-score, both computed inside the normalisation region, which is
   ``"nonzero"`` (default: voxels != 0 of the resampled image; outside it the result is 0 —
   MIST's rule for sparse data, identical to its whole-image rule on an MR without zero
   filling, and robust to zero-filled corners) or ``"image"`` (every voxel of the crop).
   Mean and standard deviation are those of the *clipped* values (paper-era MIST), so the
   region has mean 0 and standard deviation 1 exactly.

Labels (:func:`preprocess_labels`, training targets) go the same way: one-hot per label,
linear interpolation per class (nearest along the coarse axis, as the image), arg-max.

Inverse (:func:`restore_labels`, :func:`restore_probabilities`): per-class scores are
interpolated linearly on all axes from the working grid to the cropped reoriented input
grid (MIST uses nearest neighbour along the working z; linear places boundaries between
5 mm working slices where the scores cross, which is smoother on thin-slice or sagittal
inputs), arg-max, pasted into the full grid (background outside the crop) and
un-reoriented: the result is on exactly the input grid.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..cropping import bounding_box, extract_box, paste_box
from ..errors import InputError
from ..orientation import Reorientation, reorient, unreorient
from ..volume import Volume

TARGET_SPACING_MM = (0.469, 0.469, 5.0)
"""Working spacing (x, y, z) of the paper (Table 1)."""
CLIP_PERCENTILES = (0.5, 99.5)
FOREGROUND_CLIP_PERCENTILES = (33.0, 99.5)
"""MIST clips to these before the Otsu threshold that finds the foreground."""
ANISOTROPY_THRESHOLD = 3.0
"""MIST ``check_anisotropic``: largest / smallest spacing above this → coarse-axis rule."""
NORMALISATION_REGIONS = ("nonzero", "image")
ORDERS = (0, 1, 3)
"""Interpolation orders the separable resampler implements."""
OTSU_BINS = 256


@dataclasses.dataclass(frozen=True)
class MRPreprocessing:
    """Preprocessing parameters; a model card's ``preprocessing`` entry (see :meth:`to_dict`).

    Attributes:
        spacing_mm: working spacing (x, y, z) mm along the reoriented axes.
        clip_percentiles: intensity clip (low, high) percentiles of the region.
        normalisation_region: "nonzero" or "image" (module docstring, step 4).
        crop_to_foreground: crop to the Otsu foreground box (step 2).
        foreground_clip_percentiles: clip before the Otsu threshold.
        image_order: interpolation order for the image (3: cubic B-spline).
        anisotropy_threshold: spacing ratio above which the coarsest axis is special.
        coarse_axis_order: interpolation order along that axis (0: nearest, MIST).
    """

    spacing_mm: tuple[float, float, float] = TARGET_SPACING_MM
    clip_percentiles: tuple[float, float] = CLIP_PERCENTILES
    normalisation_region: str = "nonzero"
    crop_to_foreground: bool = True
    foreground_clip_percentiles: tuple[float, float] = FOREGROUND_CLIP_PERCENTILES
    image_order: int = 3
    anisotropy_threshold: float = ANISOTROPY_THRESHOLD
    coarse_axis_order: int = 0

    def __post_init__(self) -> None:
        if self.normalisation_region not in NORMALISATION_REGIONS:
            raise ValueError(f"normalisation_region must be one of {NORMALISATION_REGIONS}, "
                             f"not {self.normalisation_region!r}")
        if self.image_order not in ORDERS or self.coarse_axis_order not in ORDERS:
            raise ValueError(f"interpolation orders must be in {ORDERS}")
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing_mm must be 3 positive numbers (x, y, z), got {self.spacing_mm}")

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}
        values["orientation"] = "ITK RAI = LPS layout: array (z,y,x) towards (S,P,L); obliquity kept"
        values["normalisation"] = "clip(percentiles) -> z-score inside the region"
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "MRPreprocessing":
        values = dict(values or {})
        kwargs = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}
        for key in ("spacing_mm", "clip_percentiles", "foreground_clip_percentiles"):
            if key in kwargs:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        for key in ("image_order", "coarse_axis_order"):
            if key in kwargs:
                kwargs[key] = int(kwargs[key])
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class MRPreprocessContext:
    """Everything needed to map working-grid arrays back onto the input grid.

    Shapes and boxes are (z, y, x) array order; spacings, origin and direction (x, y, z).

    Attributes:
        input_shape: shape of the input volume's array.
        axes, flips: the :class:`Reorientation` (transpose, then flips per output axis).
        oriented_shape: shape after reorientation.
        oriented_spacing: mm of the reoriented grid.
        crop_start, crop_size: foreground box in the reoriented grid.
        working_shape: shape of the network input.
        working_spacing: mm of the working grid (the target spacing).
        working_origin: LPS mm of the centre of working voxel (0, 0, 0).
        working_direction: 3x3 rows; column c is the LPS unit vector of working axis (x, y, z)[c].
        coarse_axis: reoriented array axis (0 = z, 1 = y, 2 = x) resampled with
            ``coarse_axis_order``, or None.
        coarse_axis_order: interpolation order used along it.
        clip_low, clip_high, mean, std: intensity normalisation applied.
    """

    input_shape: tuple[int, int, int]
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    oriented_shape: tuple[int, int, int]
    oriented_spacing: tuple[float, float, float]
    crop_start: tuple[int, int, int]
    crop_size: tuple[int, int, int]
    working_shape: tuple[int, int, int]
    working_spacing: tuple[float, float, float]
    working_origin: tuple[float, float, float]
    working_direction: tuple[tuple[float, float, float], ...]
    coarse_axis: int | None
    coarse_axis_order: int
    clip_low: float
    clip_high: float
    mean: float
    std: float

    def to_dict(self) -> dict:
        """JSON-able (tuples become lists); :meth:`from_dict` reads it back."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "MRPreprocessContext":
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = values[f.name]
            if f.name == "working_direction":
                value = tuple(tuple(float(v) for v in row) for row in value)
            elif f.name == "flips":
                value = tuple(bool(v) for v in value)
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[f.name] = value
        return cls(**kwargs)

    def working_volume(self, array: np.ndarray, modality: str = "MR") -> Volume:
        """``array`` (working_shape, (z, y, x)) as a Volume on the working grid's LPS geometry."""
        return Volume(array, self.working_spacing, self.working_origin, np.asarray(self.working_direction),
                      modality=modality)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# -------------------------------------------------------------- resampling
def _mirror(indices: np.ndarray, n: int) -> np.ndarray:
    """Reflect indices about the first and last sample (scipy ``mode="mirror"``)."""
    period = 2 * (n - 1)
    indices = np.abs(indices) % period
    return np.where(indices > n - 1, period - indices, indices)


def _cubic_weights(t: np.ndarray) -> list[np.ndarray]:
    """Cubic B-spline weights of the taps at offsets -1, 0, 1, 2 for fractions ``t``."""
    t2, t3 = t * t, t * t * t
    return [(1 - t) ** 3 / 6, (3 * t3 - 6 * t2 + 4) / 6, (-3 * t3 + 3 * t2 + 3 * t + 1) / 6, t3 / 6]


def resample_axis(array: np.ndarray, axis: int, positions: np.ndarray, order: int) -> np.ndarray:
    """Sample ``array`` along ``axis`` at continuous index ``positions`` (float32 result).

    Positions are clamped to ``[0, n - 1]`` (edge value beyond the outer voxel centres).
    Order 0: nearest; 1: linear; 3: cubic B-spline with mirror boundary (prefiltered
    along this axis only, so successive calls on each axis equal the 3D tensor spline).
    """
    from scipy import ndimage

    n = array.shape[axis]
    positions = np.clip(np.asarray(positions, dtype=np.float64), 0, n - 1)
    shape = [1] * array.ndim
    shape[axis] = positions.size
    if n == 1 or order == 0:
        index = np.floor(positions + 0.5).astype(np.intp) if n > 1 else np.zeros(positions.size, np.intp)
        return np.take(array, index, axis=axis).astype(np.float32, copy=False)
    base = np.floor(positions).astype(np.intp)
    t = positions - base
    if order == 1:
        lower = np.take(array, base, axis=axis).astype(np.float32, copy=False)
        step = np.take(array, np.minimum(base + 1, n - 1), axis=axis).astype(np.float32, copy=False)
        step -= lower
        step *= t.reshape(shape).astype(np.float32)
        lower += step
        return lower
    if order != 3:
        raise ValueError(f"interpolation order must be one of {ORDERS}, not {order}")
    coefficients = ndimage.spline_filter1d(array, order=3, axis=axis, mode="mirror", output=np.float32)
    out = np.zeros(array.shape[:axis] + (positions.size,) + array.shape[axis + 1:], np.float32)
    for offset, weight in zip(range(-1, 3), _cubic_weights(t)):
        taps = np.take(coefficients, _mirror(base + offset, n), axis=axis)
        taps *= weight.reshape(shape).astype(np.float32)
        out += taps
    return out


def resample(array: np.ndarray, positions: Sequence[np.ndarray], orders: Sequence[int]) -> np.ndarray:
    """Separable resampling of a (z, y, x) array: ``positions[a]`` are the source indices
    sampled along array axis ``a`` with ``orders[a]``; shrinking axes are done first."""
    out = np.asarray(array)
    ratios = [len(p) / max(n, 1) for p, n in zip(positions, array.shape)]
    for axis in sorted(range(array.ndim), key=lambda a: ratios[a]):
        if not np.array_equal(positions[axis], np.arange(out.shape[axis])):
            out = resample_axis(out, axis, positions[axis], orders[axis])
    return out.astype(np.float32, copy=False)


def working_size(size_zyx: Sequence[int], spacing_zyx: Sequence[float],
                 target_zyx: Sequence[float]) -> tuple[int, ...]:
    """MIST's resampled size: ``round(n * spacing / target)`` per axis, at least 1."""
    return tuple(max(1, int(np.floor(n * s / t + 0.5))) for n, s, t in zip(size_zyx, spacing_zyx, target_zyx))


def coarse_axis_of(spacing_zyx: Sequence[float], threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """Array axis (z, y, x numbering) of the coarsest spacing when the grid is anisotropic."""
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    return int(np.argmax(spacing)) if spacing.max() / spacing.min() > threshold else None


def _source_positions(n_out: int, step_out: float, step_in: float) -> np.ndarray:
    """Source indices of output voxels; first voxel centres coincide."""
    return np.arange(n_out, dtype=np.float64) * (step_out / step_in)


def _orders(order: int, coarse_axis: int | None, coarse_order: int) -> list[int]:
    orders = [order] * 3
    if coarse_axis is not None:
        orders[coarse_axis] = min(coarse_order, order)
    return orders


# --------------------------------------------------------------- foreground
def otsu_threshold(values: np.ndarray, bins: int = OTSU_BINS) -> float:
    """Otsu's threshold of ``values`` on a ``bins``-bin histogram (a bin centre)."""
    values = np.asarray(values).reshape(-1)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return low
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts).astype(np.float64)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_low = sum_low / weight_low
        mean_high = (sum_low[-1] - sum_low) / weight_high
        between = weight_low * weight_high * (mean_low - mean_high) ** 2
    between = np.nan_to_num(between[:-1], nan=-1.0)
    return float(centres[int(np.argmax(between))])


def foreground_mask(array: np.ndarray,
                    clip_percentiles: Sequence[float] = FOREGROUND_CLIP_PERCENTILES) -> np.ndarray:
    """MIST's foreground (bool): clip to percentiles, then above the Otsu threshold."""
    low, high = np.percentile(array, clip_percentiles)
    clipped = np.clip(np.asarray(array, dtype=np.float32), low, high)
    return clipped > otsu_threshold(clipped)


def normalise(image: np.ndarray, params: MRPreprocessing) -> tuple[np.ndarray, dict]:
    """Percentile clip + z-score inside the region (step 4); float32 and the statistics."""
    region = image != 0 if params.normalisation_region == "nonzero" else None
    values = image[region] if region is not None else image.reshape(-1).copy()
    if values.size == 0:
        return np.zeros_like(image, np.float32), {"clip_low": 0.0, "clip_high": 0.0, "mean": 0.0, "std": 0.0}
    low, high = (float(v) for v in np.percentile(values, params.clip_percentiles, overwrite_input=True))
    np.clip(values, low, high, out=values)
    mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
    del values
    stats = {"clip_low": low, "clip_high": high, "mean": mean, "std": std}
    if std == 0:
        return np.zeros_like(image, np.float32), stats
    out = np.clip(image, low, high).astype(np.float32)
    out -= np.float32(mean)
    out /= np.float32(std)
    if region is not None:
        out[~region] = 0
    return out, stats


# ----------------------------------------------------------------- geometry
def _oriented_geometry(volume: Volume, turn: Reorientation) -> tuple[np.ndarray, np.ndarray]:
    """(direction, origin) of the reoriented grid, (x, y, z) index axes, LPS."""
    direction = np.zeros((3, 3))
    first = np.zeros(3)
    for c in range(3):  # reoriented index axis c is reoriented array axis 2 - c
        p = 2 - c
        source = 2 - turn.axes[p]  # input index axis
        sign = -1.0 if turn.flips[p] else 1.0
        direction[:, c] = sign * volume.direction[:, source]
        first[source] = volume.size_ijk[source] - 1 if turn.flips[p] else 0
    return direction, volume.index_to_physical(first)


def _params(params: MRPreprocessing | Mapping[str, Any] | None) -> MRPreprocessing:
    return params if isinstance(params, MRPreprocessing) else MRPreprocessing.from_dict(params)


def _crop_box(oriented: np.ndarray, params: MRPreprocessing) -> tuple[tuple[int, ...], tuple[int, ...]]:
    box = bounding_box(foreground_mask(oriented, params.foreground_clip_percentiles)) \
        if params.crop_to_foreground else None
    return box if box is not None else ((0, 0, 0), tuple(oriented.shape))


# --------------------------------------------------------------- public API
def preprocess_mr(volume: Volume, params: MRPreprocessing | Mapping[str, Any] | None = None
                  ) -> tuple[np.ndarray, MRPreprocessContext]:
    """T2w MR volume → network input and the context to undo it.

    Args:
        volume: any orientation (axial, sagittal, coronal, oblique), any spacing.
        params: preprocessing parameters (a model card's ``preprocessing`` dict is fine).

    Returns:
        ``image`` float32 ``(z, y, x)`` on the working grid — axes towards (S, P, L) up to
        obliquity, spacing ``params.spacing_mm`` — normalised; add a channel axis (and, for
        stage 2, the organ mask as a second channel) before the network.  And the
        :class:`MRPreprocessContext`.
    """
    params = _params(params)
    if volume.array.size == 0:
        raise InputError("the MR volume is empty")
    turn = Reorientation.to_lps(volume.direction, volume.spacing)
    oriented = turn.apply(np.asarray(volume.array))
    start, size = _crop_box(oriented, params)
    crop = extract_box(oriented, start, size)
    spacing_zyx = turn.spacing[::-1]
    target_zyx = tuple(float(v) for v in params.spacing_mm[::-1])
    shape = working_size(size, spacing_zyx, target_zyx)
    coarse = coarse_axis_of(spacing_zyx, params.anisotropy_threshold)
    positions = [_source_positions(shape[a], target_zyx[a], spacing_zyx[a]) for a in range(3)]
    working = resample(crop.astype(np.float32, copy=False), positions,
                       _orders(params.image_order, coarse, params.coarse_axis_order))
    image, stats = normalise(working, params)
    direction, first = _oriented_geometry(volume, turn)
    origin = first + direction @ (np.asarray(turn.spacing) * np.asarray(start[::-1], dtype=np.float64))
    context = MRPreprocessContext(
        input_shape=tuple(int(v) for v in volume.shape), axes=turn.axes, flips=turn.flips,
        oriented_shape=tuple(int(v) for v in oriented.shape), oriented_spacing=turn.spacing,
        crop_start=tuple(int(v) for v in start), crop_size=tuple(int(v) for v in size),
        working_shape=tuple(int(v) for v in image.shape),
        working_spacing=tuple(float(v) for v in params.spacing_mm),
        working_origin=tuple(float(v) for v in origin),
        working_direction=tuple(tuple(float(v) for v in row) for row in direction),
        coarse_axis=coarse, coarse_axis_order=params.coarse_axis_order, **stats,
    )  # type: ignore[arg-type]
    return image, context


def _forward_positions(context: MRPreprocessContext) -> list[np.ndarray]:
    spacing_zyx, target_zyx = context.oriented_spacing[::-1], context.working_spacing[::-1]
    return [_source_positions(context.working_shape[a], target_zyx[a], spacing_zyx[a]) for a in range(3)]


def _backward_positions(context: MRPreprocessContext) -> list[np.ndarray]:
    spacing_zyx, target_zyx = context.oriented_spacing[::-1], context.working_spacing[::-1]
    return [_source_positions(context.crop_size[a], spacing_zyx[a], target_zyx[a]) for a in range(3)]


def _argmax_of(values: Iterable[int], score: Callable[[int], np.ndarray]) -> np.ndarray:
    """Running arg-max over per-label scores; on ties the earlier label (background first) wins."""
    best: np.ndarray | None = None
    out: np.ndarray | None = None
    for value in values:
        current = score(value)
        if best is None:
            best, out = current, np.full(current.shape, value, np.uint8)
            continue
        wins = current > best
        out[wins] = value  # type: ignore[index]
        np.maximum(best, current, out=best)
    return out  # type: ignore[return-value]


def _label_values(labels: np.ndarray) -> list[int]:
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > 255:
        raise InputError(f"label values must be 0..255, got {low}..{high}")
    return [0] + [v for v in range(1, high + 1) if np.any(labels == v)]


def preprocess_labels(labels: np.ndarray, context: MRPreprocessContext) -> np.ndarray:
    """A label map on the input grid → uint8 (z, y, x) on the working grid (training target).

    One-hot per label, linear per class (nearest along the coarse axis), arg-max.
    """
    labels = np.asarray(labels)
    if tuple(labels.shape) != context.input_shape:
        raise InputError(f"label map shape {labels.shape} does not match the image {context.input_shape}")
    crop = extract_box(reorient(labels, context.axes, context.flips), context.crop_start, context.crop_size)
    positions = _forward_positions(context)
    orders = _orders(1, context.coarse_axis, context.coarse_axis_order)
    return _argmax_of(_label_values(crop),
                      lambda v: resample((crop == v).astype(np.float32), positions, orders))


def _check_working(array: np.ndarray, context: MRPreprocessContext, leading: int) -> None:
    if tuple(array.shape[leading:]) != context.working_shape or array.ndim != 3 + leading:
        raise ValueError(f"array shape {array.shape} does not match the working grid {context.working_shape}")


def restore_labels(labels: np.ndarray, context: MRPreprocessContext) -> np.ndarray:
    """Labels (z, y, x) on the working grid → uint8 (z, y, x) on exactly the input grid."""
    labels = np.asarray(labels)
    _check_working(labels, context, 0)
    positions = _backward_positions(context)
    box = _argmax_of(_label_values(labels),
                     lambda v: resample((labels == v).astype(np.float32), positions, [1, 1, 1]))
    full = paste_box(box, context.crop_start, context.oriented_shape, 0)
    return np.ascontiguousarray(unreorient(full, context.axes, context.flips))


def restore_probabilities(probabilities: np.ndarray, context: MRPreprocessContext,
                          background_channel: int | None = 0) -> np.ndarray:
    """Per-class scores (C, z, y, x) on the working grid → float32 (C, z, y, x) on the input grid.

    Linear interpolation per channel.  Outside the foreground crop a channel is 1 if it is
    ``background_channel`` and 0 otherwise (all 0 when ``background_channel`` is None).
    """
    probabilities = np.asarray(probabilities)
    _check_working(probabilities, context, 1)
    positions = _backward_positions(context)
    out = np.empty((probabilities.shape[0],) + context.input_shape, np.float32)
    for channel in range(probabilities.shape[0]):
        box = resample(probabilities[channel].astype(np.float32, copy=False), positions, [1, 1, 1])
        fill = 1.0 if channel == background_channel else 0.0
        out[channel] = unreorient(paste_box(box, context.crop_start, context.oriented_shape, fill),
                                  context.axes, context.flips)
    return out
