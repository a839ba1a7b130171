"""CT preprocessing for ResAU-Net and its exact inverse.

The paper's recipe (seed 000, "Data preprocessing"): HU window W300/L50 normalised to
[0, 1], then crop the 512x512 slice to 256x256 around the patient.  Everything the
forward path does is recorded in a :class:`PreprocessContext`, so that
:func:`restore_labels` puts the network's answer back on *exactly* the input grid.

Forward path (:func:`preprocess_ct`), in order:

1. **Reorient** the voxel array by axis permutation and flips only (exact, no
   interpolation) so that array ``(z, y, x)`` runs towards LPS ``(S, P, L)``: the
   network always sees axial slices in the radiological head-first-supine layout,
   whatever the patient position (HFS, FFS, HFP, FFP) or acquisition plane.  A gantry-tilt
   shear is left as it is (slices stay the acquired slices).
2. **Body mask**: voxels above :data:`BODY_THRESHOLD_HU`, largest 3D connected component
   (drops the couch and stray air-bubble noise).  Slices whose body area is below
   :data:`MIN_BODY_AREA_MM2` are not sent to the network (they get background back).
3. **In-plane resampling** — only when a pixel spacing lies outside the model's
   ``spacing_range_mm``: linear resampling of both in-plane axes to ``spacing_mm`` (the
   training spacing).  Slices are never resampled along z (2D network).
4. **HU window** ``[L - W/2, L + W/2]`` → ``[0, 1]`` with clipping.
5. **Crop** ``crop_size`` x ``crop_size`` pixels, the same window on every slice, centred
   on the centre of the body's bounding box (projected over all body slices).  When the
   body is wider or deeper than the crop — a large patient, or a small pixel spacing
   — that axis is centred on the body's centre of mass instead: the pelvic structures
   we contour are central, and the centre of mass is robust to an arm or a pannus that
   stretches the bounding box.  Parts of the crop outside the image are air (0).

The inverse (:func:`restore_labels`) pastes the crops back into a background volume,
undoes the resampling (per-label linear interpolation + arg-max, which keeps thin
structures smoother than nearest neighbour) and the reorientation.  Without resampling
the round trip is exact voxel for voxel.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from ..cropping import bounding_box, extract_box, paste_box, place_box
from ..errors import InputError
from ..orientation import Reorientation, reorient, unreorient
from ..volume import Volume

WINDOW_LEVEL_HU = 50.0
WINDOW_WIDTH_HU = 300.0
CROP_SIZE = 256
TRAINING_SPACING_MM = (0.9765625, 0.9765625)
"""Default training pixel spacing (x, y): a 500 mm field of view on a 512 matrix."""
SPACING_RANGE_MM = (0.7, 1.3)
"""Pixel spacings the network accepts without in-plane resampling."""
BODY_THRESHOLD_HU = -500.0
"""Soft tissue and fat are far above it, air and foam couch pads far below."""
MIN_BODY_AREA_MM2 = 1000.0
"""A slice with less body than this (about 3 x 3 cm) is only a skin cap or noise."""
AIR_VALUE = 0.0
"""Windowed value of air (and of padding outside the image)."""


@dataclasses.dataclass(frozen=True)
class CTPreprocessing:
    """Preprocessing parameters; a model card's ``preprocessing`` entry (see to_dict)."""

    window_level: float = WINDOW_LEVEL_HU
    window_width: float = WINDOW_WIDTH_HU
    crop_size: int = CROP_SIZE
    spacing_mm: tuple[float, float] = TRAINING_SPACING_MM
    spacing_range_mm: tuple[float, float] = SPACING_RANGE_MM
    body_threshold_hu: float = BODY_THRESHOLD_HU

    def to_dict(self) -> dict:
        return {
            "window_level": self.window_level,
            "window_width": self.window_width,
            "normalisation": "clip(HU window) -> [0, 1]",
            "crop_size": self.crop_size,
            "spacing_mm": list(self.spacing_mm),
            "spacing_range_mm": list(self.spacing_range_mm),
            "body_threshold_hu": self.body_threshold_hu,
            "orientation": "axial slices, array (z,y,x) towards LPS (S,P,L)",
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "CTPreprocessing":
        values = dict(values or {})
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in fields}
        for key in ("spacing_mm", "spacing_range_mm"):
            if key in kwargs:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        if "crop_size" in kwargs:
            kwargs["crop_size"] = int(kwargs["crop_size"])
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class PreprocessContext:
    """Everything needed to map network slices back onto the input grid.

    Attributes:
        input_shape: ``(nz, ny, nx)`` of the input volume.
        axes: transpose applied to the input array (array-axis order) to reorient it.
        flips: per reoriented array axis (z, y, x), whether it was reversed.
        oriented_shape: ``(nz, ny, nx)`` after reorientation.
        oriented_spacing: (x, y, z) mm after reorientation.
        working_shape: ``(nz, ny, nx)`` after in-plane resampling (= oriented_shape if none).
        working_spacing: (x, y, z) mm of the working grid.
        resampled: whether in-plane resampling happened.
        crop_start: ``(y0, x0)`` of the crop in the working grid; may be negative.
        crop_size: side of the square crop in pixels.
        slice_indices: indices (in the working/oriented z axis) of the slices sent to the
            network, in the order of the batch.
    """

    input_shape: tuple[int, int, int]
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    oriented_shape: tuple[int, int, int]
    oriented_spacing: tuple[float, float, float]
    working_shape: tuple[int, int, int]
    working_spacing: tuple[float, float, float]
    resampled: bool
    crop_start: tuple[int, int]
    crop_size: int
    slice_indices: tuple[int, ...]

    def to_dict(self) -> dict:
        """JSON-friendly summary (for reports)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value


# ------------------------------------------------------------------- body mask
def body_mask(hu: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """Largest 3D connected component above ``threshold_hu``; bool, same shape as ``hu``."""
    from ..postprocess import largest_piece

    mask = hu > threshold_hu
    box = bounding_box(mask)
    if box is None:
        return mask
    # Labelling costs per voxel: only the box around everything above the threshold (on a
    # planning CT the air around the patient is half of the slice or more).
    region = tuple(slice(start, start + size) for start, size in zip(*box))
    inside = mask[region]
    body = largest_piece(inside)
    if body is not inside:  # nothing lies outside the box: the mask is cut down where it is
        inside[...] = body
    return mask


def window_hu(hu: np.ndarray, level: float = WINDOW_LEVEL_HU, width: float = WINDOW_WIDTH_HU) -> np.ndarray:
    """HU → [0, 1] float32: ``clip((HU - (level - width/2)) / width, 0, 1)``."""
    low = level - width / 2.0
    windowed = np.subtract(hu, np.float32(low), dtype=np.float32)
    # in place: two fewer 4-byte copies of the volume (100 MB each at 512x512x100) to allocate and fill
    np.divide(windowed, np.float32(width), out=windowed)
    return np.clip(windowed, 0.0, 1.0, out=windowed)


# ------------------------------------------------------------------ resampling
def _in_plane_zoom(array: np.ndarray, new_yx: tuple[int, int], order: int, cval: float = 0.0) -> np.ndarray:
    """Resample the y and x axes of a (z, y, x) array to ``new_yx`` pixels.

    Pixel *extents* are aligned (the first and last pixel edges coincide), i.e. pixel
    centre ``p_new`` samples ``(p_new + 0.5) * n_old / n_new - 0.5``.
    """
    from scipy import ndimage

    nz, ny, nx = array.shape
    scale = np.array([1.0, ny / new_yx[0], nx / new_yx[1]])
    offset = 0.5 * scale - 0.5
    return ndimage.affine_transform(
        array, scale, offset=offset, output_shape=(nz, new_yx[0], new_yx[1]),
        order=order, mode="nearest", prefilter=False,
    )


def _resample_labels(labels: np.ndarray, new_yx: tuple[int, int], label_values: np.ndarray) -> np.ndarray:
    """Label map resampling by linear interpolation of each label's indicator + arg-max."""
    best = np.zeros((labels.shape[0],) + tuple(new_yx), dtype=np.float32)
    out = np.zeros(best.shape, dtype=labels.dtype)
    # Background competes like any label: start from its interpolated indicator.
    best[...] = _in_plane_zoom((labels == 0).astype(np.float32), new_yx, order=1)
    for value in label_values:
        if value == 0:
            continue
        score = _in_plane_zoom((labels == value).astype(np.float32), new_yx, order=1)
        wins = score > best
        out[wins] = value
        best[wins] = score[wins]
    return out


def needs_resampling(spacing_xy: tuple[float, float], params: CTPreprocessing) -> bool:
    low, high = params.spacing_range_mm
    return any(not (low <= s <= high) for s in spacing_xy)


def _resampled_size(shape_yx: tuple[int, int], spacing_xy: tuple[float, float],
                    target_xy: tuple[float, float]) -> tuple[int, int]:
    ny, nx = shape_yx
    return (max(1, int(round(ny * spacing_xy[1] / target_xy[1]))),
            max(1, int(round(nx * spacing_xy[0] / target_xy[0]))))


# ------------------------------------------------------------------------ crop
def crop_start_for(mask: np.ndarray, crop_size: int) -> tuple[int, int]:
    """Top-left ``(y0, x0)`` of the crop centred on the body (see module docstring).

    Args:
        mask: body mask (z, y, x) of the working grid.
    """
    projected = mask.any(axis=0)
    start = []
    for axis in (0, 1):  # y, x of the projected 2D mask
        profile = projected.any(axis=1 - axis)
        indices = np.flatnonzero(profile)
        low, high = int(indices[0]), int(indices[-1])
        if high - low + 1 <= crop_size:
            centre = (low + high) / 2.0
        else:
            weights = projected.sum(axis=1 - axis).astype(np.float64)
            centre = float(np.dot(np.arange(weights.size), weights) / weights.sum())
        start.append(int(np.floor(centre + 0.5)) - crop_size // 2)
    return start[0], start[1]


def extract_crops(array: np.ndarray, start: tuple[int, int], size: int, fill: float) -> np.ndarray:
    """``array[:, y0:y0+size, x0:x0+size]`` of a (z, y, x) array, padded with ``fill``."""
    return extract_box(array, start, (size, size), fill)


def paste_crops(crops: np.ndarray, start: tuple[int, int], shape_yx: tuple[int, int], fill: int = 0) -> np.ndarray:
    """Inverse of :func:`extract_crops`: (n, size, size) → (n, ny, nx), outside = ``fill``."""
    return paste_box(crops, start, shape_yx, fill)


# ------------------------------------------------------------------ public API
def preprocess_ct(volume: Volume, params: CTPreprocessing | Mapping[str, Any] | None = None
                  ) -> tuple[np.ndarray, PreprocessContext]:
    """CT volume in HU → network batch and the context to undo it.

    Args:
        volume: CT in Hounsfield units, any orientation and spacing.
        params: preprocessing parameters (a model card's ``preprocessing`` dict is fine).

    Returns:
        ``batch`` float32 ``(n_slices, 1, crop, crop)`` in [0, 1] — axial slices, rows
        towards posterior, columns towards patient left — and the
        :class:`PreprocessContext`.

    Raises:
        InputError: when no body is found (not a CT in HU, or an empty scan).
    """
    params = params if isinstance(params, CTPreprocessing) else CTPreprocessing.from_dict(params)
    oriented, context_base = _orient(volume)
    mask = body_mask(oriented, params.body_threshold_hu)
    spacing_xy = context_base["oriented_spacing"][:2]
    min_pixels = MIN_BODY_AREA_MM2 / (spacing_xy[0] * spacing_xy[1])
    slice_indices = np.flatnonzero(mask.sum(axis=(1, 2)) >= min_pixels)
    if slice_indices.size == 0:
        raise InputError(
            f"no patient body found in the CT (no region above {params.body_threshold_hu:g} HU of at least "
            f"{MIN_BODY_AREA_MM2:g} mm² on any slice); is the image a CT in Hounsfield units?"
        )
    working_hu, working_mask = _slices_of(oriented, slice_indices), _slices_of(mask, slice_indices)
    resampled = needs_resampling(spacing_xy, params)
    working_spacing = context_base["oriented_spacing"]
    if resampled:
        new_yx = _resampled_size(oriented.shape[1:], spacing_xy, params.spacing_mm)
        working_hu = _in_plane_zoom(working_hu.astype(np.float32), new_yx, order=1)
        working_mask = _in_plane_zoom(working_mask.astype(np.float32), new_yx, order=1) >= 0.5
        ny, nx = oriented.shape[1:]
        working_spacing = (spacing_xy[0] * nx / new_yx[1], spacing_xy[1] * ny / new_yx[0],
                           working_spacing[2])
    working_shape = (oriented.shape[0],) + tuple(working_hu.shape[1:])
    start = crop_start_for(working_mask, params.crop_size)
    # Crop, then window: a 256 crop of a 512 slice is a quarter of the arithmetic and of the memory.
    air_hu = np.floor(params.window_level - params.window_width / 2.0)  # windowed to AIR_VALUE exactly
    if np.issubdtype(working_hu.dtype, np.integer) and np.iinfo(working_hu.dtype).min > air_hu:
        working_hu = working_hu.astype(np.float32)  # unsigned voxels cannot hold the pad
    crops = extract_crops(working_hu, start, params.crop_size, float(air_hu))
    batch = window_hu(crops, params.window_level, params.window_width)[:, np.newaxis]
    context = PreprocessContext(
        input_shape=tuple(volume.shape),
        axes=context_base["axes"],
        flips=context_base["flips"],
        oriented_shape=tuple(oriented.shape),
        oriented_spacing=context_base["oriented_spacing"],
        working_shape=working_shape,  # type: ignore[arg-type]
        working_spacing=tuple(float(s) for s in working_spacing),  # type: ignore[arg-type]
        resampled=resampled,
        crop_start=start,
        crop_size=params.crop_size,
        slice_indices=tuple(int(i) for i in slice_indices),
    )
    return np.ascontiguousarray(batch, dtype=np.float32), context


def _slices_of(array: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``array[indices]`` along the first axis; a view (no copy) when the indices are one consecutive run."""
    run = _as_run(indices)
    return array[indices] if run is None else array[run]


def _as_run(indices: np.ndarray) -> slice | None:
    """The slice equal to sorted ``indices`` when they are one consecutive run (the usual body), else None."""
    if indices.size and indices[-1] - indices[0] + 1 == indices.size:
        return slice(int(indices[0]), int(indices[-1]) + 1)
    return None


def _orient(volume: Volume) -> tuple[np.ndarray, dict]:
    turn = Reorientation.to_lps(volume.direction, volume.spacing)
    oriented = turn.apply(np.asarray(volume.array))
    return oriented, {"axes": turn.axes, "flips": turn.flips, "oriented_spacing": turn.spacing}


def preprocess_labels(labels: np.ndarray, context: PreprocessContext) -> np.ndarray:
    """A label map on the input grid → the network's crops, as the image went.

    Args:
        labels: (z, y, x) integer labels on the *input* volume's grid.

    Returns:
        uint8 ``(n_slices, crop, crop)`` aligned with the batch of :func:`preprocess_ct`.
    """
    if tuple(labels.shape) != context.input_shape:
        raise InputError(f"label map shape {labels.shape} does not match the image {context.input_shape}")
    oriented = reorient(np.asarray(labels), context.axes, context.flips)[list(context.slice_indices)]
    if context.resampled:
        values = np.unique(oriented)
        oriented = _resample_labels(oriented, context.working_shape[1:], values)
    return extract_crops(oriented.astype(np.uint8), context.crop_start, context.crop_size, 0)


def restore_labels(pred: np.ndarray, context: PreprocessContext) -> np.ndarray:
    """Network labels ``(n_slices, crop, crop)`` uint8 → (z, y, x) uint8 on the input grid.

    Slices not sent to the network and pixels outside the crop are background (0).
    """
    pred = np.asarray(pred)
    expected = (len(context.slice_indices), context.crop_size, context.crop_size)
    if pred.shape != expected:
        raise ValueError(f"prediction shape {pred.shape} does not match the preprocessed batch {expected}")
    return restore_crops(pred.astype(np.uint8), context, resample_label_slices)


def resample_label_slices(pasted: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    """Label slices ``(n, y, x)`` of the working grid → ``(n, *shape_yx)`` (each label's indicator
    interpolated, then the arg-max)."""
    return _resample_labels(pasted, shape_yx, np.unique(pasted))


def restore_crops_boxed(crops: np.ndarray, context: PreprocessContext,
                        resample: Callable[[np.ndarray, tuple[int, int]], np.ndarray]) -> tuple[tuple[int, ...], np.ndarray]:
    """:func:`restore_crops` on the smallest box of the input grid that holds the crops' footprint:
    (its start (z, y, x), the map on it), every voxel of the grid outside the box being 0.

    Without in-plane resampling the footprint of the crops is one box of the working grid, which
    reorientation maps onto one box of the input grid; with it the whole grid is returned.
    """
    indices = np.asarray(context.slice_indices)
    if context.resampled or indices.size == 0:
        return (0, 0, 0), restore_crops(crops, context, resample)
    size = context.crop_size
    shape = np.asarray(context.oriented_shape)
    start = np.array([indices.min(), max(context.crop_start[0], 0), max(context.crop_start[1], 0)])
    stop = np.array([indices.max() + 1, min(context.crop_start[0] + size, shape[1]),
                     min(context.crop_start[1] + size, shape[2])])
    placed = place_box(np.zeros((indices.size, *(stop - start)[1:]), crops.dtype), crops,
                       (context.crop_start[0] - start[1], context.crop_start[1] - start[2]))
    if _as_run(indices) is None:  # slices with gaps: the footprint's own slices get the crops
        footprint = np.zeros(tuple(stop - start), crops.dtype)
        footprint[indices - start[0]] = placed
        placed = footprint
    flipped = np.where(context.flips, shape - stop, start)  # a reversed axis counts from its far end
    input_start = [0, 0, 0]
    for oriented_axis, input_axis in enumerate(context.axes):
        input_start[input_axis] = int(flipped[oriented_axis])
    return tuple(input_start), np.ascontiguousarray(unreorient(placed, context.axes, context.flips))


def restore_crops(crops: np.ndarray, context: PreprocessContext,
                  resample: Callable[[np.ndarray, tuple[int, int]], np.ndarray]) -> np.ndarray:
    """Per-pixel crops ``(n_slices, crop, crop)`` → (z, y, x) on the input grid, same dtype, 0 off the
    crops and on slices the network did not see.

    ``resample(pasted, (ny, nx))`` brings pasted working-grid slices ``(n, y, x)`` back to the input's
    pixels when the preprocessing resampled them.
    """
    oriented = np.zeros(context.oriented_shape, dtype=crops.dtype)
    indices = np.asarray(context.slice_indices)
    run = _as_run(indices)
    if context.resampled:
        pasted = paste_crops(crops, context.crop_start, context.working_shape[1:])
        oriented[indices] = resample(pasted, tuple(context.oriented_shape[1:]))
    elif run is not None:  # crops go straight into place, no full-size temporary
        place_box(oriented[run], crops, context.crop_start)
    else:
        oriented[indices] = paste_crops(crops, context.crop_start, context.working_shape[1:])
    return np.ascontiguousarray(unreorient(oriented, context.axes, context.flips))
