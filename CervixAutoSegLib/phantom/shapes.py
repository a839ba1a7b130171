"""Analytic solids in continuous millimetres: the building blocks of the phantom patient.

Every shape answers two questions:

* ``distance(x, y, z)``: an approximate signed distance in mm (negative inside) at
  points given as three same-shaped float32 arrays of coordinates in the *anatomy
  frame* (patient LPS mm before the per-case pose, see :mod:`.anatomy`).  The value is
  exact on the surface (zero) and close to the Euclidean distance within a few mm of
  it, which is all the rasteriser needs: the centre test (``< 0``) for labels and a
  one-voxel ramp for partial volume.
* ``bounds()``: an axis-aligned box ``(low, high)`` (each shape (3,), anatomy mm) that
  contains every point with ``distance < 0``, so only that box of a grid is evaluated.

Shapes are immutable, cheap to build and hold only numbers, so a whole patient is a
few hundred of them.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

Array = np.ndarray

_EPSILON = np.float32(1e-6)


def rotation_from_axes(first: Sequence[float], second_hint: Sequence[float]) -> Array:
    """Orthonormal 3x3 whose column 0 is ``first`` and column 1 is ``second_hint``
    made orthogonal to it (Gram-Schmidt); column 2 completes a right-handed frame."""
    a = np.asarray(first, dtype=np.float64)
    a = a / np.linalg.norm(a)
    b = np.asarray(second_hint, dtype=np.float64)
    b = b - a * np.dot(a, b)
    b = b / np.linalg.norm(b)
    return np.stack([a, b, np.cross(a, b)], axis=1)


def rotation_xyz(degrees: Sequence[float]) -> Array:
    """Rotation about the x (L), then y (P), then z (S) axes by ``degrees``; 3x3."""
    ax, ay, az = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


class Shape:
    """Interface: signed distance (mm, negative inside) and a bounding box (mm)."""

    def distance(self, x: Array, y: Array, z: Array) -> Array:  # pragma: no cover - interface
        raise NotImplementedError

    def bounds(self) -> tuple[Array, Array]:  # pragma: no cover - interface
        raise NotImplementedError

    def contains(self, points: Array) -> Array:
        """Boolean inside test for points of shape (..., 3) (anatomy mm)."""
        points = np.asarray(points, dtype=np.float32)
        return self.distance(points[..., 0], points[..., 1], points[..., 2]) < 0


@dataclasses.dataclass(frozen=True)
class Ellipsoid(Shape):
    """Ellipsoid with semi-axes ``radii`` (mm) along the columns of ``rotation``.

    ``lobes`` (optional, shape (n, 4): unit direction + amplitude) bulge or dent the
    surface smoothly: the radius along unit direction ``u`` is scaled by
    ``1 + sum(amplitude * (u . direction))``, clipped to stay positive.  Distances are
    measured radially (exact along rays from the centre; close to Euclidean for the
    mild eccentricities used here).
    """

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    rotation: Array = dataclasses.field(default_factory=lambda: np.eye(3))
    lobes: Array | None = None

    def bounds(self) -> tuple[Array, Array]:
        growth = 1.0 + (float(np.sum(np.abs(self.lobes[:, 3]))) if self.lobes is not None else 0.0)
        # Half-extent of a rotated ellipsoid along world axis a: sqrt(sum_c (R[a,c] r_c)^2).
        half = np.sqrt(((np.asarray(self.rotation) * np.asarray(self.radii)[None, :]) ** 2).sum(axis=1)) * growth
        center = np.asarray(self.center, dtype=np.float64)
        return center - half, center + half

    def distance(self, x: Array, y: Array, z: Array) -> Array:
        rotation = np.asarray(self.rotation, dtype=np.float32)
        dx, dy, dz = x - np.float32(self.center[0]), y - np.float32(self.center[1]), z - np.float32(self.center[2])
        # Local coordinates q = R^T (p - c).
        q = [rotation[0, c] * dx + rotation[1, c] * dy + rotation[2, c] * dz for c in range(3)]
        length = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
        scaled = np.sqrt(sum((q[c] / np.float32(self.radii[c])) ** 2 for c in range(3)))
        # Radius of the ellipsoid along the ray through the point (min radius at the centre).
        ray_radius = np.where(scaled > _EPSILON, length / np.maximum(scaled, _EPSILON), np.float32(min(self.radii)))
        if self.lobes is not None:
            safe = np.maximum(length, _EPSILON)
            modulation = np.ones_like(length)
            for lobe in np.asarray(self.lobes, dtype=np.float32):
                # Lobe direction in the local frame.
                u = rotation.T @ lobe[:3]
                modulation += lobe[3] * (q[0] * u[0] + q[1] * u[1] + q[2] * u[2]) / safe
            ray_radius = ray_radius * np.maximum(modulation, np.float32(0.3))
        return (length - ray_radius).astype(np.float32, copy=False)


@dataclasses.dataclass(frozen=True)
class Capsule(Shape):
    """Cone segment with rounded ends: axis from ``start`` to ``end``, radius varying
    linearly from ``start_radius`` to ``end_radius`` (mm)."""

    start: tuple[float, float, float]
    end: tuple[float, float, float]
    start_radius: float
    end_radius: float

    def bounds(self) -> tuple[Array, Array]:
        a, b = np.asarray(self.start, float), np.asarray(self.end, float)
        r = max(self.start_radius, self.end_radius)
        return np.minimum(a, b) - r, np.maximum(a, b) + r

    def distance(self, x: Array, y: Array, z: Array) -> Array:
        a = np.asarray(self.start, dtype=np.float32)
        axis = np.asarray(self.end, dtype=np.float32) - a
        length_squared = max(float(np.dot(axis, axis)), 1e-9)
        dx, dy, dz = x - a[0], y - a[1], z - a[2]
        t = np.clip((dx * axis[0] + dy * axis[1] + dz * axis[2]) / np.float32(length_squared), 0, 1)
        ex, ey, ez = dx - t * axis[0], dy - t * axis[1], dz - t * axis[2]
        radius = np.float32(self.start_radius) + t * np.float32(self.end_radius - self.start_radius)
        return np.sqrt(ex * ex + ey * ey + ez * ez) - radius


@dataclasses.dataclass(frozen=True)
class Column(Shape):
    """A superelliptic cylinder along z whose cross-section varies with z.

    At height z the section is ``|(x - cx)/a|^p + |(y - cy)/b|^p <= 1`` with ``cx``,
    ``cy``, ``a``, ``b`` interpolated linearly between ``knots_z``; the column is cut at
    the first and last knot.  Used for the body outline and the CT table.
    """

    knots_z: tuple[float, ...]
    center_x: tuple[float, ...]
    center_y: tuple[float, ...]
    half_width: tuple[float, ...]
    half_depth: tuple[float, ...]
    exponent: float = 2.0

    def bounds(self) -> tuple[Array, Array]:
        cx, cy = np.asarray(self.center_x), np.asarray(self.center_y)
        a, b = np.asarray(self.half_width), np.asarray(self.half_depth)
        low = np.array([np.min(cx - a), np.min(cy - b), self.knots_z[0]])
        high = np.array([np.max(cx + a), np.max(cy + b), self.knots_z[-1]])
        return low, high

    def distance(self, x: Array, y: Array, z: Array) -> Array:
        knots = np.asarray(self.knots_z, dtype=np.float32)
        cx, cy, a, b = (np.interp(z, knots, np.asarray(v, dtype=np.float32)).astype(np.float32)
                        for v in (self.center_x, self.center_y, self.half_width, self.half_depth))
        u, v = x - cx, y - cy
        p = np.float32(self.exponent)
        scaled = (np.abs(u / a) ** p + np.abs(v / b) ** p) ** (1 / p)
        length = np.sqrt(u * u + v * v)
        ray_radius = np.where(scaled > _EPSILON, length / np.maximum(scaled, _EPSILON), np.minimum(a, b))
        lateral = length - ray_radius
        vertical = np.maximum(knots[0] - z, z - knots[-1])
        return np.maximum(lateral, vertical).astype(np.float32, copy=False)


@dataclasses.dataclass(frozen=True)
class Clipped(Shape):
    """``shape`` intersected with the half-space ``(p - point) . normal <= 0``."""

    shape: Shape
    point: tuple[float, float, float]
    normal: tuple[float, float, float]

    def bounds(self) -> tuple[Array, Array]:
        return self.shape.bounds()

    def distance(self, x: Array, y: Array, z: Array) -> Array:
        n = np.asarray(self.normal, dtype=np.float32)
        n = n / np.linalg.norm(n)
        p = np.asarray(self.point, dtype=np.float32)
        plane = (x - p[0]) * n[0] + (y - p[1]) * n[1] + (z - p[2]) * n[2]
        return np.maximum(self.shape.distance(x, y, z), plane)


@dataclasses.dataclass(frozen=True)
class Intersection(Shape):
    """Points inside both shapes (bounds of the first)."""

    first: Shape
    second: Shape

    def bounds(self) -> tuple[Array, Array]:
        low_a, high_a = self.first.bounds()
        low_b, high_b = self.second.bounds()
        return np.maximum(low_a, low_b), np.minimum(high_a, high_b)

    def distance(self, x: Array, y: Array, z: Array) -> Array:
        return np.maximum(self.first.distance(x, y, z), self.second.distance(x, y, z))


@dataclasses.dataclass(frozen=True)
class Offset(Shape):
    """``shape`` grown by ``margin`` mm (shrunk when negative)."""

    shape: Shape
    margin: float

    def bounds(self) -> tuple[Array, Array]:
        low, high = self.shape.bounds()
        grow = max(self.margin, 0.0)
        return low - grow, high + grow

    def distance(self, x: Array, y: Array, z: Array) -> Array:
        return self.shape.distance(x, y, z) - np.float32(self.margin)


def catmull_rom(points: Array, samples_per_segment: int = 6) -> Array:
    """Smooth curve through control ``points`` (n, 3); returns (m, 3) with the ends kept."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 3:
        return points
    padded = np.vstack([2 * points[0] - points[1], points, 2 * points[-1] - points[-2]])
    out = []
    for s in range(len(points) - 1):
        p0, p1, p2, p3 = padded[s:s + 4]
        for t in np.linspace(0, 1, samples_per_segment, endpoint=False):
            t2, t3 = t * t, t * t * t
            out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                              + (-p0 + 3 * p1 - 3 * p2 + p3) * t3))
    out.append(points[-1])
    return np.asarray(out)


def tube(points: Sequence[Sequence[float]], radii: Sequence[float] | float,
         samples_per_segment: int = 4) -> list[Capsule]:
    """A smooth tube through control ``points`` (n, 3) mm with radius per control point.

    Returns the capsules whose union is the tube (the rasteriser takes the union).
    """
    points = np.asarray(points, dtype=np.float64)
    radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(points),))
    if len(points) < 3:
        curve, curve_radii = points, radii
    else:
        curve = catmull_rom(points, samples_per_segment)
        # Radius along the curve: linear in the control-point parameter.
        parameter = np.linspace(0, len(points) - 1, len(curve))
        curve_radii = np.interp(parameter, np.arange(len(points)), radii)
    return [Capsule(tuple(curve[n]), tuple(curve[n + 1]), float(curve_radii[n]), float(curve_radii[n + 1]))
            for n in range(len(curve) - 1)]
