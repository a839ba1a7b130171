"""The network's own evidence on the input grid, as the per-slice QA reads it (numpy only, no torch).

A family's runner turns the softmax it computes anyway into two compact voxel maps on exactly
the input grid (array ``(z, y, x)``, the image as read) and hands them over in
:class:`~CervixAutoSegLib.families.NetworkOutput` ``evidence``:

* ``uncertainty``: 1 − (largest − second-largest softmax probability), the top-2 margin turned
  into "how unsure": 0 where one class wins outright, 1 where two classes tie.  Cheaper than the
  entropy (one ``topk`` over the class axis) and bounded for any number of classes;
* ``disagreement``: where the plain and the left-right mirrored pass picked different classes
  (CT: per pixel, 0 or 1; MR: blended over the overlapping windows, so in [0, 1]); defined only
  where a mirrored pass ran (``mirrored``), since selective flip TTA mirrors only some slices or
  windows.

Both are stored as uint8 (:data:`UNIT` = 1.0): 1 byte per voxel, like the label map itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

UNIT = 255
"""uint8 value standing for 1.0 in the maps."""


@dataclasses.dataclass
class EvidenceMaps:
    """Network evidence on the input grid (every array ``(z, y, x)`` in input array order).

    Each map is an array or a :class:`BoxedMap` (the QA reads them by boxes only).

    Attributes:
        uncertainty: uint8, ``UNIT`` × (1 − top-2 softmax margin); 0 where the network never looked.
        disagreement: uint8, ``UNIT`` × plain-vs-mirrored arg-max disagreement, or None when no
            mirrored pass ran at all.
        mirrored: bool, True where a mirrored pass ran (``disagreement`` is defined there), or None.
        values: label values of the structures these maps speak for; ``()`` = all of them (a
            two-stage family gives each stage's maps for its own structures).
    """

    uncertainty: np.ndarray | BoxedMap
    disagreement: np.ndarray | BoxedMap | None = None
    mirrored: np.ndarray | BoxedMap | None = None
    values: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        shape = self.uncertainty.shape
        for name in ("disagreement", "mirrored"):
            array = getattr(self, name)
            if array is not None and array.shape != shape:
                raise ValueError(f"{name} map {array.shape} is not on the grid of the uncertainty map {shape}")

    def speaks_for(self, value: int) -> bool:
        return not self.values or value in self.values


@dataclasses.dataclass(frozen=True)
class BoxedMap:
    """A voxel map that is 0 outside one box of its grid, stored as that box only.

    The CT network sees a 256 x 256 crop of each body slice: its maps mapped back onto a
    512 x 512 grid would be three quarters zeros, and on a large CT each such full-size map is
    tens of megabytes of fresh memory.  Readers take boxes (``map[z0:z1, y0:y1, x0:x1]``, as the
    QA reads every map) and get an ordinary array; ``np.asarray(map)`` gives the whole grid.

    Attributes:
        values: the map on its box, array (z, y, x) in input array order.
        start: grid index (z, y, x) of ``values[0, 0, 0]``.
        shape: the whole grid's shape (z, y, x).
    """

    values: np.ndarray
    start: tuple[int, int, int]
    shape: tuple[int, int, int]

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    @property
    def ndim(self) -> int:
        return 3

    def view(self, dtype: type) -> "BoxedMap":
        """The same map with its values viewed as ``dtype`` (same item size, no copy)."""
        return BoxedMap(self.values.view(dtype), self.start, self.shape)

    def __getitem__(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        if not (isinstance(box, tuple) and len(box) == 3
                and all(isinstance(s, slice) and s.step in (None, 1) for s in box)):
            raise TypeError(f"a BoxedMap is read by boxes (three slices with step 1), not {box!r}")
        ranges = [axis.indices(size)[:2] for axis, size in zip(box, self.shape)]
        out = np.zeros(tuple(max(stop - start, 0) for start, stop in ranges), self.values.dtype)
        source, target = [], []
        for (start, stop), offset, size in zip(ranges, self.start, self.values.shape):
            low, high = max(start, offset), min(stop, offset + size)
            if low >= high:
                return out
            source.append(slice(low - offset, high - offset))
            target.append(slice(low - start, high - start))
        out[tuple(target)] = self.values[tuple(source)]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[(slice(None),) * 3]
        return whole if dtype is None else whole.astype(dtype)


def to_unit8(fraction: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any float array) → uint8 in [0, :data:`UNIT`], rounded."""
    return np.clip(np.rint(np.asarray(fraction, dtype=np.float32) * UNIT), 0, UNIT).astype(np.uint8)


def maps_for(evidence: "list[EvidenceMaps] | tuple[EvidenceMaps, ...] | None", value: int) -> EvidenceMaps | None:
    """The maps that speak for label ``value`` (the last one given wins), or None."""
    chosen = None
    for maps in evidence or ():
        if maps.speaks_for(value):
            chosen = maps
    return chosen


def nearest_in_plane(maps: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    """Resample the last two axes of ``maps`` (..., H, W) to ``shape_yx`` by nearest neighbour.

    Pixel extents are aligned (first and last pixel edges coincide), as the CT in-plane
    resampling aligns them: output pixel ``p`` samples input ``floor((p + 0.5) · n_in / n_out)``.
    """
    rows = np.minimum(((np.arange(shape_yx[0]) + 0.5) * maps.shape[-2] / shape_yx[0]).astype(np.intp),
                      maps.shape[-2] - 1)
    columns = np.minimum(((np.arange(shape_yx[1]) + 0.5) * maps.shape[-1] / shape_yx[1]).astype(np.intp),
                         maps.shape[-1] - 1)
    return maps[..., rows[:, None], columns[None, :]]
