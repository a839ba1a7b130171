"""Exact reorientation of (z, y, x) voxel arrays: axis permutations and flips, no interpolation.

Both model families show their networks a canonical layout whatever the patient position or
acquisition plane: :func:`orientation_to_lps` finds the permutation and flips that bring an
array closest to LPS ``(S, P, L)`` along its ``(z, y, x)`` axes (array index ``k`` of axis z
then grows towards the patient's head, ``j`` of y towards posterior, ``i`` of x towards the
patient's left), :func:`reorient` applies them and :func:`unreorient` undoes them exactly.
A gantry-tilt shear or an oblique plane is left as it is: every voxel keeps its value.
"""

from __future__ import annotations

import dataclasses

import numpy as np

Axes = tuple[int, int, int]
Flips = tuple[bool, bool, bool]


def orientation_to_lps(direction: np.ndarray) -> tuple[Axes, Flips]:
    """Axis permutation and flips that bring a (z, y, x) array closest to LPS (S, P, L).

    Args:
        direction: 3x3, column ``c`` is the LPS unit vector of index axis (i, j, k)[c].

    Returns:
        ``axes`` for ``np.transpose`` of the (z, y, x) array and, per output axis
        (z, y, x), whether to reverse it afterwards.
    """
    direction = np.asarray(direction, dtype=np.float64)
    # Assign each index axis to the LPS axis it is most aligned with, strongest first, so
    # that an oblique (e.g. 45°) axis cannot steal an axis already taken.
    weights = np.abs(direction / np.linalg.norm(direction, axis=0))
    lps_of_index: dict[int, int] = {}
    for flat in np.argsort(-weights, axis=None):
        lps_axis, index_axis = divmod(int(flat), 3)
        if index_axis in lps_of_index or lps_axis in lps_of_index.values():
            continue
        lps_of_index[index_axis] = lps_axis
    index_of_lps = {lps: index for index, lps in lps_of_index.items()}
    # Output array axis p holds LPS axis 2 - p (z=S, y=P, x=L); input array axis of
    # index axis a is 2 - a.
    axes = tuple(2 - index_of_lps[2 - p] for p in range(3))
    flips = tuple(bool(direction[2 - p, index_of_lps[2 - p]] < 0) for p in range(3))
    return axes, flips  # type: ignore[return-value]


def reorient(array: np.ndarray, axes: tuple[int, ...], flips: tuple[bool, ...]) -> np.ndarray:
    """Apply :func:`orientation_to_lps`'s permutation then flips to a (z, y, x) array."""
    out = np.transpose(array, axes)
    flip_axes = tuple(p for p in range(3) if flips[p])
    return np.flip(out, axis=flip_axes) if flip_axes else out


def unreorient(array: np.ndarray, axes: tuple[int, ...], flips: tuple[bool, ...]) -> np.ndarray:
    """Exact inverse of :func:`reorient`."""
    flip_axes = tuple(p for p in range(3) if flips[p])
    out = np.flip(array, axis=flip_axes) if flip_axes else array
    return np.transpose(out, np.argsort(axes))


@dataclasses.dataclass(frozen=True)
class Reorientation:
    """How one volume was brought to LPS layout, with the spacing that goes with it.

    Attributes:
        axes: transpose applied to the input (z, y, x) array.
        flips: per reoriented array axis (z, y, x), whether it was reversed.
        spacing: voxel size in mm of the reoriented array, in (x, y, z) order.
    """

    axes: Axes
    flips: Flips
    spacing: tuple[float, float, float]

    @classmethod
    def to_lps(cls, direction: np.ndarray, spacing_xyz: np.ndarray) -> "Reorientation":
        axes, flips = orientation_to_lps(direction)
        # Array axis a of the input is index axis 2 - a, whose spacing is spacing[2 - a];
        # oriented axis p (z, y, x) shows LPS axis 2 - p.
        spacing = tuple(float(spacing_xyz[2 - axes[2 - c]]) for c in range(3))
        return cls(axes, flips, spacing)  # type: ignore[arg-type]

    def apply(self, array: np.ndarray) -> np.ndarray:
        return reorient(array, self.axes, self.flips)

    def undo(self, array: np.ndarray) -> np.ndarray:
        return unreorient(array, self.axes, self.flips)
