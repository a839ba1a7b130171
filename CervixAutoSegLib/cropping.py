"""Boxes cut out of arrays and pasted back: the crop/paste pair every family's preprocessing uses.

A box is given by its start index per axis (may be negative, or reach past the end: the
part outside the array is ``fill``) and its size per axis.  :func:`paste_box` is the exact
inverse of :func:`extract_box` on the part of the box inside the array.  Leading axes not
named by ``start`` (say the slice axis of a stack of 2D crops) are taken whole.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _overlap(start: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> tuple[tuple[slice, ...],
                                                                                      tuple[slice, ...]]:
    """(slices into the array, slices into the box) of the region both cover."""
    inside, in_box = [], []
    for first, length, extent in zip(start, size, shape):
        low, high = max(first, 0), min(first + length, extent)
        if low >= high:
            return (), ()
        inside.append(slice(low, high))
        in_box.append(slice(low - first, high - first))
    return tuple(inside), tuple(in_box)


def extract_box(array: np.ndarray, start: Sequence[int], size: Sequence[int], fill: float = 0) -> np.ndarray:
    """``array[..., s0:s0+n0, s1:s1+n1, ...]`` over the last ``len(start)`` axes, padded with ``fill``."""
    lead = array.shape[:array.ndim - len(start)]
    out = np.full(lead + tuple(size), fill, dtype=array.dtype)
    inside, in_box = _overlap(start, size, array.shape[len(lead):])
    if inside:
        out[(Ellipsis,) + in_box] = array[(Ellipsis,) + inside]
    return out


def paste_box(box: np.ndarray, start: Sequence[int], shape: Sequence[int], fill: float = 0) -> np.ndarray:
    """Inverse of :func:`extract_box`: the box placed into an array of trailing shape ``shape``."""
    lead = box.shape[:box.ndim - len(start)]
    return place_box(np.full(lead + tuple(shape), fill, dtype=box.dtype), box, start)


def place_box(out: np.ndarray, box: np.ndarray, start: Sequence[int]) -> np.ndarray:
    """Copy the part of ``box`` that falls inside ``out`` (its box at ``start`` over the trailing
    axes, as in :func:`paste_box`) into ``out``, in place; the rest of ``out`` is left alone.  Returns ``out``."""
    lead = box.ndim - len(start)
    inside, in_box = _overlap(start, box.shape[lead:], out.shape[out.ndim - len(start):])
    if inside:
        out[(Ellipsis,) + inside] = box[(Ellipsis,) + in_box]
    return out


def bounding_box(mask: np.ndarray, margin: Sequence[int] | int = 0) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(start, size) of the smallest box holding every True voxel, grown by ``margin`` voxels
    per side and clipped to the array; None for an empty mask."""
    if not mask.any():
        return None
    margins = [margin] * mask.ndim if isinstance(margin, int) else list(margin)
    start, size = [], []
    for axis in range(mask.ndim):
        profile = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        low = max(int(profile[0]) - margins[axis], 0)
        high = min(int(profile[-1]) + 1 + margins[axis], mask.shape[axis])
        start.append(low)
        size.append(high - low)
    return tuple(start), tuple(size)


def label_boxes(array: np.ndarray) -> list:
    """``scipy.ndimage.find_objects`` of a (z, y, x) label map: entry ``value - 1`` is the bounding
    box (a tuple of slices) of label ``value``, None when absent; the same list, computed on the
    box of the map's non-zero voxels (:func:`nonzero_box`).

    Contours fill a small part of a planning CT (9 % of the 512 x 512 x 100 benchmark case), and
    ``find_objects`` visits every voxel at some 50 ms per 26 M, against 4 ms for the plain scan that
    finds the box.  A run still computes this once and hands it to every statistic."""
    from scipy import ndimage

    labels = integer_labels(array)
    region = nonzero_box(labels)
    if region is None:
        return []
    return [None if box is None else tuple(slice(s.start + r.start, s.stop + r.start) for s, r in zip(box, region))
            for box in ndimage.find_objects(labels[region])]


def nonzero_box(array: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box (slices along every axis) holding every non-zero value of ``array`` (N-D, N ≥ 2),
    None when there is none: one vectorised pass over ``array``, then passes over the box alone."""
    footprint = array.any(axis=0)  # the last N-1 axes, one pass over the whole array
    if not footprint.any():
        return None
    inner = [np.flatnonzero(footprint.any(axis=tuple(a for a in range(footprint.ndim) if a != axis)))
             for axis in range(footprint.ndim)]
    inner_box = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in inner)
    first = np.flatnonzero(array[(slice(None), *inner_box)].any(axis=tuple(range(1, array.ndim))))
    return (slice(int(first[0]), int(first[-1]) + 1), *inner_box)


def region_box(boxes: Sequence[tuple | None], values: Sequence[int], shape: tuple[int, ...],
               margin: int = 1) -> tuple[slice, slice, slice] | None:
    """Union of the :func:`label_boxes` of label ``values`` (z, y, x), widened in-plane by ``margin``
    and clipped to ``shape``; None when none of them is present."""
    found = [boxes[v - 1] for v in values if 0 < v <= len(boxes) and boxes[v - 1] is not None]
    if not found:
        return None
    starts = [min(b[a].start for b in found) for a in range(3)]
    stops = [max(b[a].stop for b in found) for a in range(3)]
    return (slice(starts[0], stops[0]),
            slice(max(starts[1] - margin, 0), min(stops[1] + margin, shape[1])),
            slice(max(starts[2] - margin, 0), min(stops[2] + margin, shape[2])))


def integer_labels(array: np.ndarray) -> np.ndarray:
    """A label map as integers (as it is when it is; bool viewed as uint8; float values truncated,
    for maps a tool saved as floats)."""
    array = np.asarray(array)
    if array.dtype.kind in "iu":
        return array
    return array.view(np.uint8) if array.dtype == np.bool_ else array.astype(np.intp)


def voxel_counts(mask: np.ndarray) -> list[np.ndarray]:
    """Per axis of a boolean ``mask``, how many True voxels each index along that axis holds."""
    return [np.count_nonzero(mask, axis=tuple(other for other in range(mask.ndim) if other != axis))
            for axis in range(mask.ndim)]


def mean_index(counts: Sequence[np.ndarray], start: Sequence[int] = (0, 0, 0)) -> np.ndarray | None:
    """Mean array index of a mask's voxels from its :func:`voxel_counts`, in the mask's axis order, for a
    mask cut from a larger array at ``start``; None when the mask is empty.

    Exact integer sums divided once: no list of voxel indices (a bladder has 10^5-10^6 voxels).
    """
    total = int(counts[0].sum())
    if total == 0:
        return None
    sums = [int(count @ np.arange(first, first + len(count))) for count, first in zip(counts, start)]
    return np.array(sums, dtype=np.float64) / total
